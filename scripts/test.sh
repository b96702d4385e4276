#!/usr/bin/env bash
# Runs the test suite in the project's virtualenv (created by scripts/setup.sh). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VLTSEG_VENV:-$(pwd)/.venv}
export FASTDDS_BUILTIN_TRANSPORTS=${FASTDDS_BUILTIN_TRANSPORTS:-LARGE_DATA}
exec "$venv/bin/python" -m pytest "$@"
