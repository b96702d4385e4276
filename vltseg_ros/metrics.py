"""Semantic-segmentation metrics: a dataset-level confusion matrix over trainIds (mmseg ``IoUMetric`` semantics).

Evaluators share one small interface (``reset`` / ``process`` / ``evaluate``) so training-time validation, offline
bag replay and online evaluation use the same code.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .labels import IGNORE_INDEX


class SegmentationEvaluator:
    """Accumulates a KxK confusion matrix (rows = ground truth, columns = prediction), ignoring ``ignore_index``.

    Predicted ids outside [0, K) (e.g. 255 = unlabeled) count as wrong for the ground-truth class: a false
    negative, never a false positive of another class.
    """

    def __init__(self, class_names: Sequence[str], ignore_index: int = IGNORE_INDEX):
        self.class_names = list(class_names)
        self.ignore_index = ignore_index
        self.reset()

    @property
    def num_classes(self) -> int:
        """Number of evaluated classes."""
        return len(self.class_names)

    def reset(self) -> None:
        """Forget everything processed so far."""
        self.confusion = np.zeros((self.num_classes, self.num_classes + 1), dtype=np.int64)

    def process(self, prediction: np.ndarray, target: np.ndarray) -> None:
        """Add one image: HxW integer prediction and ground truth of the same shape."""
        if prediction.shape != target.shape:
            raise ValueError(f"prediction {prediction.shape} and target {target.shape} differ in shape")
        k = self.num_classes
        target = target.reshape(-1).astype(np.int64)
        prediction = prediction.reshape(-1).astype(np.int64)
        valid = (target != self.ignore_index) & (target >= 0) & (target < k)
        pred = prediction[valid]
        pred = np.where((pred >= 0) & (pred < k), pred, k)  # column k collects out-of-range predictions
        self.confusion += np.bincount(target[valid] * (k + 1) + pred, minlength=k * (k + 1)).reshape(k, k + 1)

    def merge(self, other: "SegmentationEvaluator") -> None:
        """Add another evaluator's counts (e.g. from another process)."""
        self.confusion += other.confusion

    def evaluate(self) -> dict:
        """mIoU (nan-mean over classes present in GT or prediction), per-class IoU and accuracy, pixel accuracy."""
        conf = self.confusion
        k = self.num_classes
        tp = np.diag(conf[:, :k]).astype(np.float64)
        gt = conf.sum(axis=1).astype(np.float64)
        pred = conf[:, :k].sum(axis=0).astype(np.float64)
        union = gt + pred - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
            acc = np.where(gt > 0, tp / gt, np.nan)
        total = gt.sum()
        return {
            "mIoU": _nanmean(iou),
            "mAcc": _nanmean(acc),
            "aAcc": float(tp.sum() / total) if total else float("nan"),
            "per_class": {
                name: {"IoU": _float(iou[i]), "Acc": _float(acc[i]), "pixels": int(gt[i])}
                for i, name in enumerate(self.class_names)
            },
            "num_pixels": int(total),
        }


def _nanmean(values: np.ndarray) -> float:
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def _float(value: float) -> Optional[float]:
    return None if np.isnan(value) else float(value)


class DetectionEvaluator:
    """COCO-style box AP (AP@[.5:.95], AP50, AP75) through pycocotools, over the images processed so far.

    Class ids are any integers (e.g. Cityscapes trainIds); boxes are xyxy pixels. Images with no ground-truth box
    still count (their detections are false positives). Images are scored in the order of their ``key`` (arrival
    order by default), so evaluators that processed disjoint shards of a dataset, keyed by sample index and then
    merged, give exactly the result of one evaluator that saw every image.
    """

    def __init__(self, class_names: dict[int, str]):
        self.class_names = dict(class_names)
        self.reset()

    def reset(self) -> None:
        """Forget everything processed so far."""
        self._frames: list[tuple] = []  # (key, height, width, gt boxes, gt labels, boxes, scores, labels)

    def process(self, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, gt_boxes: np.ndarray,
                gt_labels: np.ndarray, height: int, width: int, key: Optional[int] = None) -> None:
        """Add one image: detections (xyxy, score, class id) and ground truth (xyxy, class id)."""
        known = list(self.class_names)
        gt_labels = np.asarray(gt_labels, np.int64).reshape(-1)
        labels = np.asarray(labels, np.int64).reshape(-1)
        gt_keep, keep = np.isin(gt_labels, known), np.isin(labels, known)
        self._frames.append((
            len(self._frames) if key is None else int(key), int(height), int(width),
            np.asarray(gt_boxes, np.float64).reshape(-1, 4)[gt_keep], gt_labels[gt_keep],
            np.asarray(boxes, np.float64).reshape(-1, 4)[keep], np.asarray(scores, np.float64).reshape(-1)[keep],
            labels[keep],
        ))

    def merge(self, other: "DetectionEvaluator") -> None:
        """Add another evaluator's images (e.g. another process's shard of the same dataset)."""
        self._frames.extend(other._frames)

    def _coco_lists(self) -> tuple[list[dict], list[dict], list[dict]]:
        """COCO images, ground-truth annotations and detections, images numbered in key order."""
        images, gt, dt = [], [], []
        for image_id, (_, height, width, gt_boxes, gt_labels, boxes, scores, labels) in enumerate(
                sorted(self._frames, key=lambda frame: frame[0]), start=1):
            images.append({"id": image_id, "height": height, "width": width})
            for (x1, y1, x2, y2), label in zip(gt_boxes.tolist(), gt_labels.tolist()):
                gt.append({"id": len(gt) + 1, "image_id": image_id, "category_id": label,
                           "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
            for (x1, y1, x2, y2), score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
                dt.append({"image_id": image_id, "category_id": label, "bbox": [x1, y1, x2 - x1, y2 - y1],
                           "score": score})
        return images, gt, dt

    def evaluate(self) -> dict:
        """AP, AP50, AP75 and per-class AP (NaN where a class has no ground truth)."""
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        nan = float("nan")
        images, annotations, detections = self._coco_lists()
        if not annotations:
            return {"AP": nan, "AP50": nan, "AP75": nan, "per_class": {}, "num_gt": 0, "num_det": len(detections)}
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations,
                      "categories": [{"id": i, "name": n} for i, n in sorted(self.class_names.items())]}
        _quiet(gt.createIndex)
        dt = _quiet(gt.loadRes, detections) if detections else COCO()
        if not detections:
            dt.dataset = {"images": images, "annotations": [], "categories": gt.dataset["categories"]}
            _quiet(dt.createIndex)
        coco_eval = COCOeval(gt, dt, iouType="bbox")
        coco_eval.params.maxDets = [1, 10, 100]
        _quiet(coco_eval.evaluate)
        _quiet(coco_eval.accumulate)
        _quiet(coco_eval.summarize)
        precision = coco_eval.eval["precision"]  # [iou, recall, class, area, maxdet]
        per_class = {}
        for k, class_id in enumerate(coco_eval.params.catIds):
            p = precision[:, :, k, 0, -1]
            per_class[self.class_names[class_id]] = float(p[p > -1].mean()) if (p > -1).any() else None
        stats = coco_eval.stats
        return {"AP": float(stats[0]), "AP50": float(stats[1]), "AP75": float(stats[2]), "per_class": per_class,
                "num_gt": len(annotations), "num_det": len(detections)}


def _quiet(fn, *args):
    """Run a pycocotools call without its progress prints."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


# ---------------------------------------------------------------------------------------------------------------
# Frame scores of the domain-shift monitor: does a frame's score track its accuracy?

def frame_miou(prediction: np.ndarray, target: np.ndarray, num_classes: int,
               ignore_index: int = IGNORE_INDEX) -> float:
    """One frame's mIoU over the classes present in its ground truth or its prediction (the dataset mIoU's rule,
    on one frame); nan when the frame has no valid ground-truth pixel."""
    evaluator = SegmentationEvaluator([str(i) for i in range(num_classes)], ignore_index)
    evaluator.process(prediction, target)
    return evaluator.evaluate()["mIoU"]


def spearman(scores: Sequence[float], values: Sequence[float]) -> Optional[float]:
    """Spearman rank correlation, None with fewer than 3 frames or a constant side."""
    from scipy.stats import spearmanr

    scores, values = np.asarray(scores, float), np.asarray(values, float)
    if len(scores) < 3 or np.ptp(scores) == 0 or np.ptp(values) == 0:
        return None
    return float(spearmanr(scores, values).statistic)


def failure_auroc(scores: Sequence[float], failed: Sequence[bool]) -> Optional[float]:
    """AUROC of the score separating good from failed frames: the probability that a good frame scores higher
    than a failed one (ties count half; Mann-Whitney U). None when either group is empty."""
    from scipy.stats import rankdata

    scores, failed = np.asarray(scores, float), np.asarray(failed, bool)
    good, bad = scores[~failed], scores[failed]
    if not len(good) or not len(bad):
        return None
    ranks = rankdata(np.concatenate([good, bad]))
    return float((ranks[: len(good)].sum() - len(good) * (len(good) + 1) / 2) / (len(good) * len(bad)))


def risk_coverage(scores: Sequence[float], losses: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(coverage, risk): keeping the most trusted frames first, the mean loss of the kept ones at each coverage."""
    scores, losses = np.asarray(scores, float), np.asarray(losses, float)
    order = np.argsort(-scores, kind="stable")
    kept = np.arange(1, len(losses) + 1)
    return kept / len(losses), np.cumsum(losses[order]) / kept


def aurc(scores: Sequence[float], losses: Sequence[float]) -> tuple[Optional[float], Optional[float]]:
    """Area under the risk-coverage curve and its excess over the best possible ordering (E-AURC)."""
    losses = np.asarray(losses, float)
    if not len(losses):
        return None, None
    _, risk = risk_coverage(scores, losses)
    _, oracle = risk_coverage(-losses, losses)
    return float(risk.mean()), float(risk.mean() - oracle.mean())


def monitor_summary(frames: dict[str, dict[str, list]], source: Optional[str], warn_threshold: Optional[float],
                    failure_margin: float = 0.10, source_miou: Optional[float] = None) -> dict:
    """How well frame scores track frame mIoU, per domain and over all frames.

    ``frames``: per domain, lists ``score`` and ``miou`` (nan where the frame had no ground truth). A frame
    "failed" when its mIoU is below the source domain's mean frame mIoU minus ``failure_margin`` (10 points; without
    the source domain among ``frames``, ``source_miou``: the calibration split's mean frame mIoU);
    loss = 1 - frame mIoU for AURC. ``warn_threshold``: the calibrated warning threshold (frames below it raise a
    warning; the false-alarm rate is their share in the source domain), None when uncalibrated.
    """
    def arrays(names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        s = np.concatenate([np.asarray(frames[n]["score"], float) for n in names]) if names else np.zeros(0)
        m = np.concatenate([np.asarray(frames[n]["miou"], float) for n in names]) if names else np.zeros(0)
        keep = np.isfinite(s) & np.isfinite(m)
        return s[keep], m[keep]

    domains = list(frames)
    src_scores, src_miou = arrays([source]) if source in frames else (np.zeros(0), np.zeros(0))
    reference = float(src_miou.mean()) if len(src_miou) else source_miou
    fail_below = None if reference is None else reference - failure_margin

    def stats(names: Sequence[str]) -> dict:
        s, m = arrays(names)
        out: dict = {"frames": int(len(s)), "mean_score": float(s.mean()) if len(s) else None,
                     "mean_frame_miou": float(m.mean()) if len(m) else None, "spearman": spearman(s, m)}
        if fail_below is not None:
            failed = m < fail_below
            out["failed"] = int(failed.sum())
            out["auroc"] = failure_auroc(s, failed)
        out["aurc"], out["e_aurc"] = aurc(s, 1 - m)
        if warn_threshold is not None and len(s):
            out["below_warn"] = float((s < warn_threshold).mean())
        return out

    targets = [d for d in domains if d != source] if source in frames else []
    summary = {"source": source, "failure_below_miou": fail_below, "warn_threshold": warn_threshold,
               "all": stats(domains), "targets": stats(targets), "domains": {d: stats([d]) for d in domains}}
    if source in frames and warn_threshold is not None and len(src_scores):
        summary["in_domain_false_alarm_rate"] = float((src_scores < warn_threshold).mean())
    return summary
