"""Scoring and reports shared by dataset evaluation, offline bag replay and the online evaluator node.

``Scorer`` accumulates one domain (segmentation confusion matrix, COCO box AP, latency); ``write_report`` turns
several domains' results into results.json, results.md, a per-class IoU bar chart and confusion matrices.
"""
from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import numpy as np

from .metrics import DetectionEvaluator, SegmentationEvaluator


class Scorer:
    """Accumulates the scores of one domain, frame by frame."""

    def __init__(self, class_names: Sequence[str], det_classes: Optional[dict[int, str]] = None):
        self.class_names = list(class_names)
        self.seg = SegmentationEvaluator(self.class_names)
        self.det = DetectionEvaluator(det_classes) if det_classes else None
        self.images = 0
        self.seg_images = 0
        self.gt_boxes = 0
        self.latencies: list[float] = []

    def add(self, label_map: Optional[np.ndarray], gt_label: Optional[np.ndarray], boxes: np.ndarray,
            scores: np.ndarray, class_ids: np.ndarray, gt_boxes: Optional[np.ndarray],
            gt_class_ids: Optional[np.ndarray], height: int, width: int, latency_s: Optional[float] = None,
            key: Optional[int] = None) -> None:
        """Add one frame; ground truth that is None is not scored (a bag without labels gives latency only).
        ``key`` (e.g. the sample index) orders frames for box AP, so merged shards score like one pass."""
        self.images += 1
        if label_map is not None and gt_label is not None:
            self.seg.process(label_map, gt_label)
            self.seg_images += 1
        if self.det is not None and gt_boxes is not None:
            self.det.process(boxes, scores, class_ids, gt_boxes, gt_class_ids, height, width, key=key)
            self.gt_boxes += len(gt_boxes)
        if latency_s is not None:
            self.latencies.append(latency_s)

    def merge(self, other: "Scorer") -> None:
        """Add the frames another Scorer of the same classes accumulated (e.g. another process's shard)."""
        self.images += other.images
        self.seg.merge(other.seg)
        self.seg_images += other.seg_images
        if self.det is not None and other.det is not None:
            self.det.merge(other.det)
        self.gt_boxes += other.gt_boxes
        self.latencies.extend(other.latencies)

    def result(self) -> dict:
        """JSON-ready summary: images, segmentation (if scored), detection (if any GT box), latency (if timed)."""
        out: dict = {"images": self.images}
        if self.seg_images:
            out["segmentation"] = {**self.seg.evaluate(), "confusion": self.seg.confusion.tolist()}
        if self.det is not None and self.gt_boxes:
            out["detection"] = self.det.evaluate()
        if self.latencies:
            ms = np.array(self.latencies) * 1000
            out["latency_ms"] = {"p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
                                 "mean": float(ms.mean()), "max": float(ms.max())}
        return out


def write_report(results: dict[str, dict], out_dir: str, class_names: Sequence[str], header: dict,
                 plots: bool = True) -> dict[str, str]:
    """Write results.json, results.md, per_class_iou.png and confusion_<domain>.png; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, "results.json"), "markdown": os.path.join(out_dir, "results.md")}
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump({**header, "results": results}, f, indent=1)
    with open(paths["markdown"], "w", encoding="utf-8") as f:
        f.write(markdown_table(results, class_names))
    if plots:  # matplotlib holds the GIL for a second or more: periodic rewrites skip it
        paths.update(plot_results(results, class_names, out_dir))
    return paths


def markdown_table(results: dict[str, dict], class_names: Sequence[str]) -> str:
    """Summary and per-class tables in Markdown."""
    lines = ["| domain | images | mIoU | AP | AP50 | latency p50 ms | frames/s |", "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        seg, det, latency = r.get("segmentation"), r.get("detection"), r.get("latency_ms")
        fps = r.get("frames_per_s")
        lines.append(f"| {name} | {r['images']} | {percent(seg['mIoU']) if seg else '-'} | "
                     f"{percent(det['AP']) if det else '-'} | {percent(det['AP50']) if det else '-'} | "
                     f"{_number(latency['p50'] if latency else None)} | {_number(fps)} |")
    seg_domains = [n for n, r in results.items() if r.get("segmentation")]
    if seg_domains:
        lines += ["", "| class | " + " | ".join(seg_domains) + " |", "|---" * (len(seg_domains) + 1) + "|"]
        for cls in class_names:
            cells = [percent(results[d]["segmentation"]["per_class"][cls]["IoU"]) for d in seg_domains]
            lines.append(f"| {cls} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _number(value: Optional[float]) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{value:.2f}"


def percent(value: Optional[float]) -> str:
    """A fraction as a percentage with one decimal, or "-" when undefined."""
    return "-" if value is None or not np.isfinite(value) else f"{100 * value:.1f}"


def plot_results(results: dict[str, dict], class_names: Sequence[str], out_dir: str) -> dict[str, str]:
    """Per-class IoU bars (all domains) and a row-normalised confusion matrix per domain."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: dict[str, str] = {}
    domains = [n for n, r in results.items() if r.get("segmentation")]
    if not domains:
        return paths
    classes = list(class_names)
    fig, ax = plt.subplots(figsize=(max(8, len(classes) * 0.6), 4.5))
    width = 0.8 / len(domains)
    x = np.arange(len(classes))
    for i, name in enumerate(domains):
        per_class = results[name]["segmentation"]["per_class"]
        values = [100 * (per_class[c]["IoU"] or 0.0) for c in classes]
        ax.bar(x + i * width - 0.4 + width / 2, values, width,
               label=f"{name} ({percent(results[name]['segmentation']['mIoU'])})")
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
