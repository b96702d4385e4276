"""Detection AP: the evaluator's COCO conversion equals pycocotools run directly on hand-built COCO json."""
from __future__ import annotations

import contextlib
import io
import math

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from vltseg_ros.metrics import DetectionEvaluator

CLASSES = {11: "person", 13: "car"}


def _random_case(rng, images=6):
    cases = []
    for _ in range(images):
        n = rng.integers(0, 5)
        xy = rng.uniform(0, 150, (n, 2))
        wh = rng.uniform(8, 60, (n, 2))
        gt = np.concatenate([xy, xy + wh], 1)
        gt_labels = rng.choice([11, 13], n)
        jitter = rng.normal(0, 4, gt.shape)
        det = np.concatenate([gt + jitter, rng.uniform(0, 150, (2, 2)).repeat(2, 1) + [0, 0, 20, 20]]) if n else \
            rng.uniform(0, 150, (1, 2)).repeat(2, 1) + [0, 0, 20, 20]
        det_labels = np.concatenate([gt_labels, rng.choice([11, 13], 2)]) if n else np.array([13])
        scores = rng.uniform(0.05, 1.0, len(det))
        cases.append((det, scores, det_labels, gt, gt_labels))
    return cases


def _pycocotools_direct(cases):
    images, anns, dets = [], [], []
    for i, (det, scores, det_labels, gt, gt_labels) in enumerate(cases, start=1):
        images.append({"id": i, "height": 200, "width": 200})
        for b, c in zip(gt, gt_labels):
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(c), "iscrowd": 0,
                         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "area": (b[2] - b[0]) * (b[3] - b[1])})
        for b, s, c in zip(det, scores, det_labels):
            dets.append({"image_id": i, "category_id": int(c), "score": float(s),
                         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]})
    with contextlib.redirect_stdout(io.StringIO()):
        gt_coco = COCO()
        gt_coco.dataset = {"images": images, "annotations": anns,
                           "categories": [{"id": 11, "name": "person"}, {"id": 13, "name": "car"}]}
        gt_coco.createIndex()
        e = COCOeval(gt_coco, gt_coco.loadRes(dets), "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    return e.stats


def test_ap_equals_pycocotools():
    cases = _random_case(np.random.default_rng(0))
    evaluator = DetectionEvaluator(CLASSES)
    for det, scores, det_labels, gt, gt_labels in cases:
        evaluator.process(det, scores, det_labels, gt, gt_labels, 200, 200)
    result = evaluator.evaluate()
    stats = _pycocotools_direct(cases)
    assert math.isclose(result["AP"], stats[0], abs_tol=1e-6)
    assert math.isclose(result["AP50"], stats[1], abs_tol=1e-6)
    assert math.isclose(result["AP75"], stats[2], abs_tol=1e-6)
    assert 0.0 < result["AP50"] <= 1.0
    assert set(result["per_class"]) == {"person", "car"}


def test_perfect_detections_score_one_and_no_gt_is_nan():
    evaluator = DetectionEvaluator(CLASSES)
    gt = np.array([[10, 10, 50, 40], [60, 60, 120, 90]], float)
    evaluator.process(gt, np.array([0.9, 0.8]), np.array([13, 11]), gt, np.array([13, 11]), 128, 128)
    assert math.isclose(evaluator.evaluate()["AP"], 1.0, abs_tol=1e-9)
    empty = DetectionEvaluator(CLASSES)
    empty.process(gt, np.array([0.9, 0.8]), np.array([13, 11]), np.zeros((0, 4)), np.zeros(0), 128, 128)
    assert math.isnan(empty.evaluate()["AP"])
