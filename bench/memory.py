#!/usr/bin/env python
"""Memory soak: host RSS (and GPU memory on CUDA) over many predictor frames after warm-up.

Targets: host RSS grows <= 50 MB over 10 000 frames (CPU, tiny model); GPU memory flat after warm-up
over 1 000 frames. Prints RSS / GPU memory at checkpoints and the growth after warm-up.

    python bench/memory.py --frames 10000 --size 128x256          # CPU, tiny
    python bench/memory.py --device cuda --model eva02_b16 --frames 1000 --size 512x1024 --precision bf16
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

from vltseg_ros.checkpoint import CheckpointMeta
from vltseg_ros.config import InferenceConfig, model_preset
from vltseg_ros.model import build_model
from vltseg_ros.precision import PRECISIONS
from vltseg_ros.predictor import Predictor


def rss_mb() -> float:
    """Resident set size of this process in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="eva02_tiny")
    parser.add_argument("--heads", default="seg,det")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS)
    parser.add_argument("--size", default="128x256", help="frame and network input HxW")
    parser.add_argument("--frames", type=int, default=10000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = model_preset(args.model, tuple(args.heads.split(",")))
    meta = CheckpointMeta(model=cfg, inference=InferenceConfig(mode="whole", size=[height, width],
                                                               fit_size=[height, width]))
    predictor = Predictor(build_model(cfg), meta, device=device, precision=args.precision, score_threshold=0.3)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(8)]

    def gpu_mb() -> float:
        return torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")

    for i in range(args.warmup):
        predictor.predict(frames[i % len(frames): i % len(frames) + args.batch])
    base_rss, base_gpu = rss_mb(), gpu_mb()
    rows = [(0, base_rss, base_gpu)]
    started = time.perf_counter()
    checkpoints = set(np.linspace(0, args.frames, 11, dtype=int)[1:].tolist())
    for i in range(1, args.frames + 1):
        predictor.predict(frames[i % len(frames): i % len(frames) + args.batch])
        if i in checkpoints:
            rows.append((i, rss_mb(), gpu_mb()))
    elapsed = time.perf_counter() - started
    print(f"# memory soak: {args.model}, {args.size}, {predictor.precision}, device {device}, batch {args.batch}, "
          f"{args.frames} frames after {args.warmup} warm-up ({args.frames / elapsed:.1f} frames/s)")
    print("| frames after warm-up | host RSS MiB | GPU allocated MiB |")
    print("|---|---|---|")
    for i, rss, gpu in rows:
        print(f"| {i} | {rss:.1f} | {gpu:.1f} |")
    print(f"\nhost RSS growth: {rows[-1][1] - base_rss:+.1f} MiB (target <= 50)")
    if device.type == "cuda":
        print(f"GPU memory growth: {rows[-1][2] - base_gpu:+.1f} MiB (target: flat)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
