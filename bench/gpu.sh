#!/usr/bin/env bash
# One call on the GPU machine: correctness + every GPU speed target, tables written to $OUT/RESULTS.md
# (rewritten after each section; sections run in priority order within a 540 s budget, see bench/gpu.py --help).
# The machine's python has torch/torchvision/timm/transformers; this repository needs no install for it
# (PYTHONPATH), except safetensors/scipy which that image ships.
#   device run: bash bench/gpu.sh      (then copy $OUT/RESULTS.md into bench/RESULTS.md with the date and device)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-/tmp/vltseg_inductor_cache}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())"
python3 bench/gpu.py --out "${OUT:-bench/out}" "$@"
