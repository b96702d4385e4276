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
