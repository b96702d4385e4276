#!/usr/bin/env bash
# Runs the test suite (arguments go to pytest, as with scripts/test.sh) with a CPU burner on every core beside it, as
# on a vehicle's computer or a busy CI machine, and prints how long it took and on which CPU. The burners run at the
# suite's priority, stop when the suite ends (also on Ctrl-C or an error), and can never outlive
# VLTSEG_BURN_LIMIT_S seconds (default 7200) even if this script is killed.
set -euo pipefail
cd "$(dirname "$0")/.."
limit=${VLTSEG_BURN_LIMIT_S:-7200}
cores=$(nproc)
cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n 1)
burners=()
stop_burners() {
  for pid in "${burners[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait "${burners[@]}" 2>/dev/null || true
}
trap stop_burners EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
for _ in $(seq "$cores"); do
  timeout -s KILL "$limit" sh -c 'while :; do :; done' &  # timeout passes our kill on to the loop
  burners+=($!)
done
echo "[under load] ${#burners[@]} CPU burner(s) beside the suite on ${cpu:-unknown CPU} (${cores} cores)"
start=$(date +%s)
status=0
bash scripts/test.sh "$@" || status=$?
elapsed=$(($(date +%s) - start))
echo "[under load] suite exit status ${status} after $((elapsed / 60)) min $((elapsed % 60)) s beside ${#burners[@]}" \
  "burner(s) on ${cpu:-unknown CPU}"
exit "$status"
