"""Evaluate a checkpoint: 19-class mIoU with the paper's protocol, and COCO-style box AP; JSON, Markdown and PNGs.

    vltseg eval --checkpoint run/final.safetensors --data cityscapes:/data/cityscapes:val --out reports/cs
    vltseg eval --checkpoint ... --data cityscapes:data/synth/target_fog:val --mode slide --window 512 --stride 426

The inference settings (whole image, or sliding window 512/426 within 512x1024 for synthetic-source models and
1024/768 within 1024x2048 for real-source ones) come from the checkpoint unless overridden; predictions are made at
the network's input size and resized to the ground truth's resolution before scoring.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Optional

import numpy as np
import torch

from vltseg_ros.checkpoint import CheckpointMeta, load_checkpoint
from vltseg_ros.config import InferenceConfig, validate_inference_config
from vltseg_ros.metrics import DetectionEvaluator, SegmentationEvaluator
from vltseg_ros.predictor import Predictor

from .datasets import build_dataset


def evaluate_dataset(model: torch.nn.Module, meta: CheckpointMeta, dataset, device: torch.device | str = "cpu",
                     precision: str = "fp32", limit: int = 0, progress: bool = False,
                     inference: Optional[InferenceConfig] = None) -> dict:
    """Score a model on a dataset. Returns ``segmentation`` (mIoU, per-class IoU, confusion matrix) when the model
    has a segmentation head, ``detection`` (AP, AP50, AP75) when it has a detection head and the dataset has boxes,
    plus ``images``, ``skipped`` and timing."""
    predictor = Predictor(model, meta, device=device, precision=precision, inference=inference, score_threshold=0.0)
    seg = SegmentationEvaluator(meta.model.classes) if predictor.has_seg else None
    det_ids = {predictor.class_names.index(n): n for n in meta.model.det_head.classes} if predictor.has_det else {}
    det = DetectionEvaluator(det_ids) if predictor.has_det else None
    count = len(dataset) if not limit else min(limit, len(dataset))
    indices = range(count)
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc="eval", dynamic_ncols=True, mininterval=1.0)
    seconds = 0.0
    has_boxes = False
    for i in indices:
        sample = dataset[i]
        started = time.perf_counter()
        result = predictor.predict([sample["image"]], image_format="RGB")[0]
        seconds += time.perf_counter() - started
        if seg is not None:
            seg.process(result.label_map, sample["label"])
        if det is not None:
            has_boxes |= len(sample["boxes"]) > 0
            height, width = sample["label"].shape
            det.process(result.boxes, result.box_scores, result.box_class_ids, sample["boxes"], sample["box_labels"],
                        height, width)
    out: dict = {"images": count, "skipped": getattr(dataset, "skipped", 0),
                 "seconds_per_image": seconds / max(count, 1)}
    if seg is not None:
        out["segmentation"] = {**seg.evaluate(), "confusion": seg.confusion.tolist()}
    if det is not None and has_boxes:
        out["detection"] = det.evaluate()
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


def write_report(results: dict[str, dict], out_dir: str, meta: CheckpointMeta, checkpoint: str) -> dict[str, str]:
    """Write results.json, results.md, per_class_iou.png and confusion_<domain>.png; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, "results.json"), "markdown": os.path.join(out_dir, "results.md")}
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump({"checkpoint": checkpoint, "results": results}, f, indent=1)
    with open(paths["markdown"], "w", encoding="utf-8") as f:
        f.write(markdown_table(results, meta))
    paths.update(plot_results(results, meta, out_dir))
    return paths


def markdown_table(results: dict[str, dict], meta: CheckpointMeta) -> str:
    """Summary and per-class tables in Markdown."""
    lines = ["| domain | images | mIoU | AP | AP50 | s/image |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        seg, det = r.get("segmentation"), r.get("detection")
        lines.append(f"| {name} | {r['images']} | {_pct(seg['mIoU']) if seg else '-'} | "
                     f"{_pct(det['AP']) if det else '-'} | {_pct(det['AP50']) if det else '-'} | "
                     f"{r['seconds_per_image']:.3f} |")
    seg_domains = [n for n, r in results.items() if r.get("segmentation")]
    if seg_domains:
        lines += ["", "| class | " + " | ".join(seg_domains) + " |", "|---" * (len(seg_domains) + 1) + "|"]
        for cls in meta.model.classes:
            cells = [_pct(results[d]["segmentation"]["per_class"][cls]["IoU"]) for d in seg_domains]
            lines.append(f"| {cls} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _pct(value: Optional[float]) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{100 * value:.1f}"


def plot_results(results: dict[str, dict], meta: CheckpointMeta, out_dir: str) -> dict[str, str]:
    """Per-class IoU bars (all domains) and a row-normalised confusion matrix per domain."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: dict[str, str] = {}
    domains = [n for n, r in results.items() if r.get("segmentation")]
    if not domains:
        return paths
    classes = meta.model.classes
    fig, ax = plt.subplots(figsize=(max(8, len(classes) * 0.6), 4.5))
    width = 0.8 / len(domains)
    x = np.arange(len(classes))
    for i, name in enumerate(domains):
        per_class = results[name]["segmentation"]["per_class"]
        values = [100 * (per_class[c]["IoU"] or 0.0) for c in classes]
        ax.bar(x + i * width - 0.4 + width / 2, values, width,
               label=f"{name} ({_pct(results[name]['segmentation']['mIoU'])})")
    ax.set_xticks(x, classes, rotation=60, ha="right")
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.set_title("Per-class IoU (mIoU in the legend)")
    fig.tight_layout()
    paths["per_class_iou"] = os.path.join(out_dir, "per_class_iou.png")
    fig.savefig(paths["per_class_iou"], dpi=110)
    plt.close(fig)
    for name in domains:
        conf = np.array(results[name]["segmentation"]["confusion"], dtype=np.float64)[:, : len(classes)]
        norm = conf / np.maximum(conf.sum(axis=1, keepdims=True), 1)
        fig, ax = plt.subplots(figsize=(7.5, 6.5))
        im = ax.imshow(norm, cmap="viridis", vmin=0, vmax=1)
        ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
        ax.set_yticks(range(len(classes)), classes, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("ground truth")
        ax.set_title(f"Confusion (row-normalised): {name}")
        fig.colorbar(im, ax=ax, fraction=0.046)
        fig.tight_layout()
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
        paths[f"confusion_{name}"] = os.path.join(out_dir, f"confusion_{safe}.png")
        fig.savefig(paths[f"confusion_{name}"], dpi=110)
        plt.close(fig)
    return paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``vltseg eval`` options."""
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", action="append", required=True, type=_parse_data, metavar="NAME:ROOT[:SPLIT[:LABEL]]",
                        help="dataset reader (cityscapes, gta5, synthia, mapillary, bdd100k, acdc), root, split "
                             "(default val) and report label; repeat for several domains")
    parser.add_argument("--out", required=True, help="report directory")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--limit", type=int, default=0, help="evaluate at most N images per dataset")
    parser.add_argument("--mode", choices=["whole", "slide"], help="override the checkpoint's inference mode")
    parser.add_argument("--size", help="whole mode input HxW")
    parser.add_argument("--fit-size", dest="fit_size", help="slide mode: fit HxW first")
    parser.add_argument("--window", type=int)
    parser.add_argument("--stride", type=int)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``vltseg eval``."""
    model, meta = load_checkpoint(args.checkpoint)
    inference = InferenceConfig(**{k: getattr(meta.inference, k) for k in ("mode", "size", "fit_size", "window",
                                                                            "stride")})
    for key in ("mode", "window", "stride"):
        if getattr(args, key) is not None:
            setattr(inference, key, getattr(args, key))
    for key in ("size", "fit_size"):
        if getattr(args, key):
            setattr(inference, key, [int(v) for v in getattr(args, key).lower().split("x")])
    validate_inference_config(inference)
    results = {}
    for name, root, split, label in args.data:
        dataset = build_dataset(name, root, split)
        results[label] = evaluate_dataset(model, meta, dataset, args.device, args.precision, args.limit,
                                          progress=True, inference=inference)
        seg, det = results[label].get("segmentation"), results[label].get("detection")
        print(f"{label}: {results[label]['images']} images"
              + (f", mIoU {_pct(seg['mIoU'])}" if seg else "") + (f", AP {_pct(det['AP'])}, AP50 "
                                                                   f"{_pct(det['AP50'])}" if det else ""))
    paths = write_report(results, args.out, meta, args.checkpoint)
    print(markdown_table(results, meta).split("\n\n")[0])
    print(f"report: {os.path.abspath(args.out)} ({', '.join(os.path.basename(p) for p in paths.values())})")
    return 0
