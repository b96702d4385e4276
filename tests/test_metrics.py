"""Confusion-matrix mIoU against an independent per-class computation."""
from __future__ import annotations

import math

import numpy as np
import pytest

from vltseg_ros.labels import CITYSCAPES_CLASSES
from vltseg_ros.metrics import SegmentationEvaluator


def _independent_iou(preds, gts, num_classes, ignore=255):
    """Dataset-level IoU per class from boolean masks (no confusion matrix)."""
    inter = np.zeros(num_classes)
    union = np.zeros(num_classes)
    for pred, gt in zip(preds, gts):
        valid = gt != ignore
        for c in range(num_classes):
            p, g = (pred == c) & valid, (gt == c) & valid
            inter[c] += (p & g).sum()
            union[c] += (p | g).sum()
    return np.where(union > 0, inter / np.maximum(union, 1), np.nan)


def test_matches_independent_computation():
    rng = np.random.default_rng(0)
    evaluator = SegmentationEvaluator(CITYSCAPES_CLASSES)
    preds, gts = [], []
    for _ in range(5):
        gt = rng.integers(0, 19, (40, 60)).astype(np.uint8)
        gt[rng.random(gt.shape) < 0.1] = 255
        gt[gt == 16] = 255  # one class never in the ground truth ...
        pred = np.where(rng.random(gt.shape) < 0.6, gt, rng.integers(0, 19, gt.shape)).astype(np.uint8)
        pred[pred == 16] = 3  # ... nor predicted: its IoU is undefined and excluded from the mean
        pred[rng.random(gt.shape) < 0.02] = 255  # "unlabeled" predictions count as misses
        preds.append(pred)
        gts.append(gt)
        evaluator.process(pred, gt)
    result = evaluator.evaluate()
    expected = _independent_iou(preds, gts, 19)
    got = np.array([np.nan if v["IoU"] is None else v["IoU"] for v in result["per_class"].values()])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    assert math.isclose(result["mIoU"], np.nanmean(expected), abs_tol=1e-12)
    assert result["per_class"]["train"]["IoU"] is None
    valid = np.concatenate([g.ravel() for g in gts]) != 255
    correct = np.concatenate([(p == g).ravel() for p, g in zip(preds, gts)])[valid]
    assert math.isclose(result["aAcc"], correct.mean(), abs_tol=1e-12)
    assert result["num_pixels"] == int(valid.sum())


def test_perfect_prediction_and_reset():
    evaluator = SegmentationEvaluator(["a", "b", "c"])
    gt = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    evaluator.process(np.array([[0, 1], [2, 0]], dtype=np.uint8), gt)
    assert evaluator.evaluate()["mIoU"] == 1.0
    evaluator.reset()
    assert math.isnan(evaluator.evaluate()["mIoU"])


def test_merge_equals_single_pass():
    rng = np.random.default_rng(1)
    pairs = [(rng.integers(0, 4, (8, 8)), rng.integers(0, 4, (8, 8))) for _ in range(4)]
    one, a, b = (SegmentationEvaluator(["w", "x", "y", "z"]) for _ in range(3))
    for i, (p, g) in enumerate(pairs):
        one.process(p, g)
        (a if i % 2 else b).process(p, g)
    a.merge(b)
    assert np.array_equal(a.confusion, one.confusion)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in shape"):
        SegmentationEvaluator(["a"]).process(np.zeros((2, 2)), np.zeros((2, 3)))
