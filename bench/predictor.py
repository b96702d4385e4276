#!/usr/bin/env python
"""Predictor speed: ms/frame for model x input size x batch x precision on one device, printed as a table.

Measures the whole ``Predictor.predict`` call (upload, device preprocessing, network, postprocessing to label
maps and boxes at source size). Runs on CPU (use the tiny model) and on a GPU when one is present.

    python bench/predictor.py --model eva02_tiny --sizes 256x512,512x1024 --batches 1,4 --precisions fp32,bf16
    python bench/predictor.py --checkpoint my.safetensors --device cuda --precisions bf16 --mode whole
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch

from vltseg_ros.checkpoint import CheckpointMeta, load_checkpoint
from vltseg_ros.config import InferenceConfig, inference_preset, model_preset
from vltseg_ros.model import build_model, count_parameters
from vltseg_ros.predictor import Predictor


def _sizes(text: str) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in s.lower().split("x")) for s in text.split(",")]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _label(asked: str, resolved: str) -> str:
    return f"auto ({resolved})" if asked == "auto" else resolved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", help="a .safetensors checkpoint")
    source.add_argument("--model", default="eva02_tiny", help="random-init preset (default: eva02_tiny)")
    parser.add_argument("--heads", default="seg,det")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", type=_sizes, default=_sizes("256x512,512x1024"), help="source image sizes HxW")
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--precisions", default="auto", help="comma-separated: auto, fp32, bf16, fp16")
    parser.add_argument("--mode", choices=["whole", "slide", "checkpoint"], default="whole",
                        help="whole: network input = source size; slide: the checkpoint's windows; "
                             "checkpoint: the checkpoint's own inference settings")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--compile", action="store_true", help="torch.compile the network")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    if args.checkpoint:
        model, meta = load_checkpoint(args.checkpoint)
        name = args.checkpoint
    else:
        cfg = model_preset(args.model, tuple(args.heads.split(",")))
        torch.manual_seed(0)
        model, meta = build_model(cfg).eval(), CheckpointMeta(model=cfg, inference=inference_preset(args.model))
        name = args.model

    rows = []
    rng = np.random.default_rng(0)
    for precision in args.precisions.split(","):
        for height, width in args.sizes:
            if args.mode == "whole":
                inference = InferenceConfig(mode="whole", size=[height, width], fit_size=[height, width])
            elif args.mode == "slide":
                inference = InferenceConfig(mode="slide", fit_size=[height, width],
                                            window=meta.inference.window, stride=meta.inference.stride)
            else:
                inference = meta.inference
            predictor = Predictor(model, meta, device=device, precision=precision, inference=inference,
                                  compile=args.compile, max_batch=max(int(b) for b in args.batches.split(",")))
            for batch in (int(b) for b in args.batches.split(",")):
                frames = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(batch)]
                for _ in range(args.warmup):
                    predictor.predict(frames)
                _sync(device)
                times = []
                for _ in range(args.iters):
                    start = time.perf_counter()
                    predictor.predict(frames)
                    _sync(device)
                    times.append((time.perf_counter() - start) * 1000 / batch)
                rows.append((_label(precision, predictor.precision), f"{height}x{width}", batch, statistics.median(times),
                             max(times)))
                if device.type == "cuda":
                    torch.cuda.empty_cache()

    print(f"# predictor: {name} ({count_parameters(model) / 1e6:.1f} M params), device {device}, "
          f"mode {args.mode}, threads {torch.get_num_threads()}, torch {torch.__version__}")
    print("| precision | source size | batch | median ms/frame | max ms/frame | frames/s |")
    print("|---|---|---|---|---|---|")
    for precision, size, batch, median, worst in rows:
        print(f"| {precision} | {size} | {batch} | {median:.1f} | {worst:.1f} | {1000 / median:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
