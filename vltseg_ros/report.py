"""Scoring and reports shared by dataset evaluation, offline bag replay and the online evaluator node.

``Scorer`` accumulates one domain (segmentation confusion matrix, COCO box AP, latency); ``write_report`` turns
several domains' results into results.json, results.md, a per-class IoU bar chart and confusion matrices.
"""
from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import numpy as np

from .metrics import DetectionEvaluator, SegmentationEvaluator, frame_miou, monitor_summary, risk_coverage


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
        # Frame scores of the domain-shift monitor, by score name, and each frame's mIoU (nan without ground truth).
        self.frame_scores: dict[str, list[float]] = {}
        self.frame_mious: list[float] = []

    def add(self, label_map: Optional[np.ndarray], gt_label: Optional[np.ndarray], boxes: np.ndarray,
            scores: np.ndarray, class_ids: np.ndarray, gt_boxes: Optional[np.ndarray],
            gt_class_ids: Optional[np.ndarray], height: int, width: int, latency_s: Optional[float] = None,
            key: Optional[int] = None, frame_scores: Optional[dict[str, float]] = None) -> None:
        """Add one frame; ground truth that is None is not scored (a bag without labels gives latency only).
        ``key`` (e.g. the sample index) orders frames for box AP, so merged shards score like one pass.
        ``frame_scores``: the monitor's scores of this frame by name, kept with the frame's mIoU."""
        self.images += 1
        if frame_scores:
            for name, value in frame_scores.items():
                # a score that appears late is nan for the frames before it, so the lists stay aligned
                self.frame_scores.setdefault(name, [float("nan")] * len(self.frame_mious)).append(float(value))
            for name, values in self.frame_scores.items():
                if name not in frame_scores:
                    values.append(float("nan"))
            self.frame_mious.append(frame_miou(label_map, gt_label, len(self.class_names))
                                    if label_map is not None and gt_label is not None else float("nan"))
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
        for name in set(self.frame_scores) | set(other.frame_scores):
            mine = self.frame_scores.get(name, [float("nan")] * len(self.frame_mious))
            self.frame_scores[name] = mine + other.frame_scores.get(name, [float("nan")] * len(other.frame_mious))
        self.frame_mious.extend(other.frame_mious)

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
        if self.frame_scores:
            out["frames"] = {"miou": _json_floats(self.frame_mious),
                             **{f"score/{name}": _json_floats(v) for name, v in self.frame_scores.items()}}
        return out


def _json_floats(values: Sequence[float]) -> list[Optional[float]]:
    return [float(v) if np.isfinite(v) else None for v in values]


def frame_table(results: dict[str, dict]) -> dict[str, dict[str, dict[str, list]]]:
    """Per monitor score name, per domain: the ``score`` and ``miou`` lists (nan for missing) of ``results``."""
    table: dict[str, dict[str, dict[str, list]]] = {}
    for domain, r in results.items():
        frames = r.get("frames") or {}
        mious = [np.nan if v is None else v for v in frames.get("miou", [])]
        for key, values in frames.items():
            if key.startswith("score/"):
                table.setdefault(key[len("score/"):], {})[domain] = {
                    "score": [np.nan if v is None else v for v in values], "miou": mious}
    return table


def monitor_results(results: dict[str, dict], source: Optional[str] = None,
                    thresholds: Optional[dict[str, float]] = None, source_miou: Optional[float] = None
                    ) -> dict[str, dict]:
    """``metrics.monitor_summary`` of every monitor score in ``results``. ``source``: the in-domain set (default:
    the first domain whose name contains "source"; without one, and without ``source_miou`` (the calibration
    split's mean frame mIoU), the first domain); ``thresholds``: calibrated warning thresholds by score name."""
    if source is None:
        source = next((d for d in results if "source" in d),
                      None if source_miou is not None else next(iter(results), None))
    return {name: monitor_summary(per_domain, source, (thresholds or {}).get(name), source_miou=source_miou)
            for name, per_domain in frame_table(results).items()}


def monitor_report_settings(monitor_section: Optional[dict]) -> dict:
    """``write_report`` keyword arguments from a checkpoint's ``monitor`` metadata: warning thresholds and the
    calibration split's mean frame mIoU (the failure reference where no source domain is evaluated)."""
    section = monitor_section or {}
    return {"monitor_thresholds": {name: entry["thresholds"]["warn"] for name, entry in section.get("scores", {}).items()},
            "monitor_source_miou": (section.get("calibration") or {}).get("mean_frame_miou")}


def write_report(results: dict[str, dict], out_dir: str, class_names: Sequence[str], header: dict,
                 plots: bool = True, monitor_source: Optional[str] = None,
                 monitor_thresholds: Optional[dict[str, float]] = None,
                 monitor_source_miou: Optional[float] = None) -> dict[str, str]:
    """Write results.json, results.md, per_class_iou.png and confusion_<domain>.png; with monitor frame scores also
    the monitor's table (results.json ``monitor``), risk_coverage.png and score_vs_miou.png; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, "results.json"), "markdown": os.path.join(out_dir, "results.md")}
    monitor = monitor_results(results, monitor_source, monitor_thresholds, monitor_source_miou)
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump({**header, "results": results, **({"monitor": monitor} if monitor else {})}, f, indent=1)
    with open(paths["markdown"], "w", encoding="utf-8") as f:
        f.write(markdown_table(results, class_names) + (monitor_markdown(monitor) if monitor else ""))
    if plots:  # matplotlib holds the GIL for a second or more: periodic rewrites skip it
        paths.update(plot_results(results, class_names, out_dir))
        if monitor:
            paths.update(plot_monitor(results, out_dir))
    return paths


def monitor_markdown(monitor: dict[str, dict]) -> str:
    """The domain-shift monitor's tables: per score, per domain and over all frames."""
    lines = []
    for name, summary in monitor.items():
        fail = summary["failure_below_miou"]
        reference = "the source mean" if summary["source"] else "the calibration split's mean"
        lines += ["", f"Monitor score `{name}` (higher = more trustworthy; a frame fails below "
                      f"{percent(fail)} frame mIoU, {reference} minus 10; warning threshold "
                      f"{_number(summary['warn_threshold'])})", "",
                  "| frames | n | mean score | mean frame mIoU | Spearman ρ | failure AUROC | AURC | E-AURC | "
                  "below warning |", "|---|---|---|---|---|---|---|---|---|"]
        rows = [("all", summary["all"]), ("targets", summary["targets"]), *summary["domains"].items()]
        for label, s in rows:
            lines.append(f"| {label} | {s['frames']} | {_number(s['mean_score'], 3)} | {percent(s['mean_frame_miou'])}"
                         f" | {_number(s['spearman'])} | {_number(s.get('auroc'))} | {_number(s['aurc'], 3)} | "
                         f"{_number(s['e_aurc'], 3)} | {percent(s.get('below_warn'))} |")
        if "in_domain_false_alarm_rate" in summary:
            lines.append(f"\nIn-domain false alarms ({summary['source']}): "
                         f"{percent(summary['in_domain_false_alarm_rate'])} %")
    return "\n".join(lines) + "\n"


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


def _number(value: Optional[float], digits: int = 2) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


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


def plot_monitor(results: dict[str, dict], out_dir: str) -> dict[str, str]:
    """Per monitor score: the risk-coverage curve (all frames with ground truth) and frame score vs frame mIoU,
    coloured by domain."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: dict[str, str] = {}
    for name, per_domain in frame_table(results).items():
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
        scores = np.concatenate([np.asarray(v["score"], float) for v in per_domain.values()])
        mious = np.concatenate([np.asarray(v["miou"], float) for v in per_domain.values()])
        keep = np.isfinite(scores) & np.isfinite(mious)
        if not keep.any():
            continue
        coverage, risk = risk_coverage(scores[keep], 1 - mious[keep])
        _, oracle = risk_coverage(mious[keep], 1 - mious[keep])
        fig, ax = plt.subplots(figsize=(5.5, 4))
        ax.plot(coverage, risk, label=f"{name}")
        ax.plot(coverage, oracle, "--", color="grey", label="oracle")
        ax.axhline(float((1 - mious[keep]).mean()), color="black", lw=0.8, label="no selection")
        ax.set_xlabel("coverage (frames kept, most trusted first)")
        ax.set_ylabel("risk (mean 1 - frame mIoU of kept frames)")
        ax.set_title(f"Risk-coverage: {name}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths[f"risk_coverage_{name}"] = os.path.join(out_dir, f"risk_coverage_{safe}.png")
        fig.savefig(paths[f"risk_coverage_{name}"], dpi=110)
        plt.close(fig)
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for domain, v in per_domain.items():
            s, m = np.asarray(v["score"], float), np.asarray(v["miou"], float)
            ok = np.isfinite(s) & np.isfinite(m)
            ax.scatter(s[ok], 100 * m[ok], s=10, label=domain)
        ax.set_xlabel(f"frame score ({name})")
        ax.set_ylabel("frame mIoU (%)")
        ax.set_title("Frame score vs frame mIoU")
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths[f"score_vs_miou_{name}"] = os.path.join(out_dir, f"score_vs_miou_{safe}.png")
        fig.savefig(paths[f"score_vs_miou_{name}"], dpi=110)
        plt.close(fig)
    return paths
