"""Render the synthetic domain-shift benchmark (or one split) in the Cityscapes layout.

    vltseg synth --out data/synth                                   # source train + val, five target conditions
    vltseg synth --out data/fog --style realistic --condition fog --split val --count 20
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from vltseg_ros.cli import parse_size

from .shading import STYLES
from .weather import CONDITIONS
from .writer import write_benchmark, write_split


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `vltseg synth`: the whole benchmark, or one split with --style/--condition/--split/--count."""
    parser.add_argument("--out", required=True, help="output root directory")
    parser.add_argument("--train", type=int, default=300, help="source train frames (default 300)")
    parser.add_argument("--val", type=int, default=60, help="val frames per domain (default 60)")
    parser.add_argument("--size", type=parse_size, default=[256, 512], help="frame size HxW (default 256x512)")
    parser.add_argument("--seed", type=int, default=0, help="first scene seed (default 0)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    single = parser.add_argument_group("single split (instead of the whole benchmark)")
    single.add_argument("--style", choices=STYLES, help="appearance style (default synthetic)")
    single.add_argument("--condition", choices=CONDITIONS, help="weather / light condition (default clear)")
    single.add_argument("--split", help="split name, e.g. train or val (default train)")
    single.add_argument("--count", type=int, help="frames to write (default --train for train, else --val)")


def run(args: argparse.Namespace) -> int:
    """Write what ``args`` asks for and print one summary line per domain; returns the exit code."""
    height, width = args.size
    progress = sys.stderr.isatty()
    start = time.perf_counter()
    if any(getattr(args, k) is not None for k in ("style", "condition", "split", "count")):
        style, condition, split = args.style or "synthetic", args.condition or "clear", args.split or "train"
        count = args.count if args.count is not None else (args.train if split == "train" else args.val)
        n = write_split(args.out, split, count, args.seed, height, width, style, condition, workers=args.workers,
                        progress=progress)
        print(f"{split}: {n} frames {style}/{condition} {height}x{width}, seeds {args.seed}.."
              f"{args.seed + n - 1} -> {args.out} ({time.perf_counter() - start:.1f} s)")
        return 0
    roots = write_benchmark(args.out, args.train, args.val, height, width, args.seed, args.workers, progress)
    with open(os.path.join(args.out, "benchmark.json")) as f:
        domains = json.load(f)["domains"]
    for name, root in roots.items():
        d = domains[name]
        splits = " + ".join(f"{s['count']} {split}" for split, s in d["splits"].items())
        print(f"{name}: {splits} {d['style']}/{d['condition']} {height}x{width} -> {root}")
    print(f"wrote {os.path.join(args.out, 'benchmark.json')} ({time.perf_counter() - start:.1f} s)")
    return 0
