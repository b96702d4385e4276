#!/usr/bin/env python
"""Training throughput: images/s of full optimiser steps (forward, losses, backward, clip, AdamW) for a model,
crop, batch and precision, on random data; prints a table and the projected time of a schedule.

    python bench/train.py --model eva02_tiny --crop 256x256 --batches 2,4 --precisions fp32,bf16
    python bench/train.py --model eva02_l14 --crop 512x512 --batches 16 --precisions bf16 --schedule 5000   # GPU
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from vltseg_ros.config import model_preset
from vltseg_ros.model import build_model, count_parameters
from vltseg_ros.precision import autocast, describe_device, device_line, resolve_precision

def _batch(batch: int, height: int, width: int, classes: int, device: torch.device, det: bool):
    images = torch.randn(batch, 3, height, width, device=device)
    # Blocky labels with several classes per crop, like real scenes (the loss cost depends on the class count).
    coarse = torch.randint(0, classes, (batch, 1, max(1, height // 32), max(1, width // 32)), device=device)
    labels = torch.nn.functional.interpolate(coarse.float(), size=(height, width), mode="nearest")[:, 0].long()
    boxes = None
    if det:
        boxes = [{"boxes": torch.tensor([[8.0, 8.0, width / 2, height / 2], [width / 3, height / 3, width - 4.0,
                                                                                height - 4.0]], device=device),
                  "labels": torch.tensor([2, 0], device=device)} for _ in range(batch)]
    return images, labels, boxes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="eva02_tiny")
    parser.add_argument("--heads", default="seg")
    parser.add_argument("--crop", default="256x256", help="HxW")
    parser.add_argument("--batches", default="2,4")
    parser.add_argument("--precisions", default="auto", help="comma-separated: auto, fp32, bf16, fp16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--schedule", type=int, default=5000, help="iterations to project (paper GTA5: 5000)")
    parser.add_argument("--schedule-batch", dest="schedule_batch", type=int, default=16,
                        help="global batch of the projected schedule (paper GTA5: 16)")
    args = parser.parse_args()
    device = torch.device(args.device)
    height, width = (int(v) for v in args.crop.split("x"))
    torch.manual_seed(0)
    cfg = model_preset(args.model, tuple(args.heads.split(",")))
    model = build_model(cfg).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    rows = []
    for asked in args.precisions.split(","):
        precision = resolve_precision(asked, device)
        for batch in (int(b) for b in args.batches.split(",")):
            images, labels, boxes = _batch(batch, height, width, len(cfg.classes), device, cfg.det_head is not None)
            times = []
            for step in range(args.warmup + args.steps):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                optimizer.zero_grad(set_to_none=True)
                with autocast(precision, device):
                    losses = model(images, seg_targets=labels if cfg.seg_head else None, det_targets=boxes)
                sum(losses.values()).backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01)
                optimizer.step()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if step >= args.warmup:
                    times.append(time.perf_counter() - start)
            ips = batch / statistics.median(times)
            memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
            rows.append((f"auto ({precision})" if asked == "auto" else precision, batch, statistics.median(times) * 1000, ips, memory))
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
    print(f"# training step: {args.model} ({count_parameters(model) / 1e6:.1f} M params), heads {args.heads}, "
          f"crop {args.crop}, torch {torch.__version__}, {device_line(describe_device(device))}")
    print("| precision | batch | ms/step | images/s | peak GPU GiB | projected schedule |")
    print("|---|---|---|---|---|---|")
    for precision, batch, ms, ips, memory in rows:
        hours = args.schedule * args.schedule_batch / ips / 3600
        print(f"| {precision} | {batch} | {ms:.0f} | {ips:.2f} | {memory:.1f} | "
              f"{args.schedule} x {args.schedule_batch} images: {hours:.2f} h |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
