#!/usr/bin/env bash
# Runs the test suite in the project's virtualenv (created by scripts/setup.sh). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VLTSEG_VENV:-$(pwd)/.venv}
# Fast DDS's default transports: the tests' images are small, and with LARGE_DATA (Fast DDS 3.2.2) some pairs of
# processes on this host never discover each other (README, section 5). Export FASTDDS_BUILTIN_TRANSPORTS to test
# with other transports; every process of the run inherits it.
exec "$venv/bin/python" -m pytest "$@"
