"""Evaluate a checkpoint: 19-class mIoU with the paper's protocol, and COCO-style box AP; JSON, Markdown and PNGs.

    vltseg eval --checkpoint run/final.safetensors --data cityscapes:/data/cityscapes:val --out reports/cs
    vltseg eval --checkpoint ... --data cityscapes:data/synth/target_fog:val --mode slide --window 512 --stride 426

The inference settings (whole image, or sliding window 512/426 within 512x1024 for synthetic-source models and
1024/768 within 1024x2048 for real-source ones) come from the checkpoint unless overridden; predictions are made at
the network's input size and resized to the ground truth's resolution before scoring.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time
from typing import Optional

import torch

from vltseg_ros.checkpoint import CheckpointMeta, load_checkpoint
from vltseg_ros.cli import parse_size
from vltseg_ros.config import InferenceConfig, validate_inference_config
from vltseg_ros.precision import PRECISIONS
from vltseg_ros.predictor import Predictor
from vltseg_ros.report import Scorer, markdown_table, percent, write_report

from .datasets import build_dataset


def evaluate_dataset(model: torch.nn.Module, meta: CheckpointMeta, dataset, device: torch.device | str = "cpu",
                     precision: str = "auto", limit: int = 0, progress: bool = False,
                     inference: Optional[InferenceConfig] = None) -> dict:
    """Score a model on a dataset (``Scorer.result`` plus ``skipped``): segmentation when the model has a
    segmentation head, detection when it has a detection head and the dataset has boxes, and latency."""
    predictor = Predictor(model, meta, device=device, precision=precision, inference=inference, score_threshold=0.0)
    det_classes = {predictor.class_names.index(n): n for n in meta.model.det_head.classes} if predictor.has_det \
        else None
    scorer = Scorer(meta.model.classes, det_classes)
    count = len(dataset) if not limit else min(limit, len(dataset))
    indices = range(count)
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc="eval", dynamic_ncols=True, mininterval=1.0)
    for i in indices:
        sample = dataset[i]
        started = time.perf_counter()
        result = predictor.predict([sample["image"]], image_format="RGB")[0]
        elapsed = time.perf_counter() - started
        height, width = sample["label"].shape
        scorer.add(result.label_map, sample["label"], result.boxes, result.box_scores, result.box_class_ids,
                   sample["boxes"], sample["box_labels"], height, width, latency_s=elapsed)
    out = scorer.result()
    out["skipped"] = getattr(dataset, "skipped", 0)
    return out


def _parse_data(text: str) -> tuple[str, str, str, str]:
    """``name:root[:split[:label]]`` -> (name, root, split, label)."""
    parts = text.split(":")
    if len(parts) < 2:
        raise argparse.ArgumentTypeError(f"expected name:root[:split[:label]], got {text!r}")
    name, root = parts[0], parts[1]
    split = parts[2] if len(parts) > 2 and parts[2] else "val"
    label = parts[3] if len(parts) > 3 else f"{os.path.basename(os.path.normpath(root))}/{split}"
    return name, root, split, label


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``vltseg eval`` options."""
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", action="append", required=True, type=_parse_data, metavar="NAME:ROOT[:SPLIT[:LABEL]]",
                        help="dataset reader (cityscapes, gta5, synthia, mapillary, bdd100k, acdc), root, split "
                             "(default val) and report label; repeat for several domains")
    parser.add_argument("--out", required=True, help="report directory")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="auto: bf16 where the device runs it natively, else fp32")
    parser.add_argument("--limit", type=int, default=0, help="evaluate at most N images per dataset")
    parser.add_argument("--mode", choices=["whole", "slide"], help="override the checkpoint's inference mode")
    parser.add_argument("--size", type=parse_size, help="whole mode input HxW")
    parser.add_argument("--fit-size", dest="fit_size", type=parse_size, help="slide mode: fit HxW first")
    parser.add_argument("--window", type=int)
    parser.add_argument("--stride", type=int)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``vltseg eval``."""
    model, meta = load_checkpoint(args.checkpoint)
    inference = dataclasses.replace(meta.inference)
    for key in ("mode", "size", "fit_size", "window", "stride"):
        if getattr(args, key) is not None:
            setattr(inference, key, getattr(args, key))
    validate_inference_config(inference)
    results = {}
    for name, root, split, label in args.data:
        dataset = build_dataset(name, root, split)
        results[label] = evaluate_dataset(model, meta, dataset, args.device, args.precision, args.limit,
                                          progress=True, inference=inference)
        seg, det = results[label].get("segmentation"), results[label].get("detection")
        print(f"{label}: {results[label]['images']} images"
              + (f", mIoU {percent(seg['mIoU'])}" if seg else "") + (f", AP {percent(det['AP'])}, AP50 "
                                                                   f"{percent(det['AP50'])}" if det else ""))
    paths = write_report(results, args.out, meta.model.classes, {"checkpoint": args.checkpoint})
    print(markdown_table(results, meta.model.classes).split("\n\n")[0])
    print(f"report: {os.path.abspath(args.out)} ({', '.join(os.path.basename(p) for p in paths.values())})")
    return 0
