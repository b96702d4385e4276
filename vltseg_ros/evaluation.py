"""One evaluation loop for every source of frames: datasets (``vltseg eval``, training-time validation), bags
(``vltseg bag eval``, the demo). The online evaluator node scores the node's published outputs with the same
per-frame step, ``score``, so online and offline numbers agree.

A frame is anything with ``image`` (HxWx3 uint8 RGB) and optional ground truth ``label`` (HxW trainIds),
``boxes`` (Nx4 xyxy) and ``box_class_ids`` (N trainIds): a bag's ``FrameRecord``, or ``dataset_frame`` of a
dataset sample.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable, Iterable, NamedTuple, Optional, Protocol

import numpy as np

from .prediction import Prediction
from .report import Scorer

if TYPE_CHECKING:  # torch-free at run time: the online evaluator node scores without a predictor
    from .predictor import Predictor


class Frame(Protocol):
    """What ``evaluate`` reads from a frame."""

    image: np.ndarray
    label: Optional[np.ndarray]
    boxes: Optional[np.ndarray]
    box_class_ids: Optional[np.ndarray]


class DatasetFrame(NamedTuple):
    """A dataset sample as a frame, or ground truth received without its image (``image`` None)."""

    image: Optional[np.ndarray]
    label: Optional[np.ndarray]
    boxes: Optional[np.ndarray]
    box_class_ids: Optional[np.ndarray]


def dataset_frame(sample: dict) -> DatasetFrame:
    """A dataset reader's sample dict (``image``, ``label``, ``boxes``, ``box_labels``) as a frame."""
    return DatasetFrame(sample["image"], sample["label"], sample["boxes"], sample["box_labels"])


def scorer_for(predictor: Predictor) -> Scorer:
    """An empty Scorer for the predictor's classes (box AP over its detection classes, in its class-id space)."""
    return Scorer(predictor.meta.model.classes, predictor.detection_classes or None)


def score(scorer: Scorer, frame: Frame, prediction: Prediction, latency_s: Optional[float],
          key: Optional[int] = None, size: Optional[tuple[int, int]] = None) -> None:
    """Add one predicted frame to ``scorer``. ``size`` (H, W) is the image's when ``frame.image`` is absent."""
    height, width = size if size is not None else frame.image.shape[:2]
    scorer.add(prediction.label_map, frame.label, prediction.boxes, prediction.box_scores, prediction.box_class_ids,
               frame.boxes, frame.box_class_ids, height, width, latency_s=latency_s, key=key,
               frame_scores=prediction.frame_scores)


OnFrame = Callable[[int, Frame, Prediction, float], None]
"""Called after each frame with (key, frame, prediction, latency in seconds)."""


def evaluate(predictor: Predictor, frames: Iterable[tuple[int, Frame]], scorer: Optional[Scorer] = None,
             on_frame: Optional[OnFrame] = None) -> Scorer:
    """Predict and score (key, frame) pairs; returns the Scorer. ``key`` orders frames for box AP (e.g. the sample
    index), so Scorers of disjoint shards merge into exactly the single-pass result. Latency is the predictor's
    wall time per frame."""
    scorer = scorer if scorer is not None else scorer_for(predictor)
    for key, frame in frames:
        started = time.perf_counter()
        result = predictor.predict([frame.image], image_format="RGB")[0]
        latency = time.perf_counter() - started
        score(scorer, frame, result, latency, key=key)
        if on_frame is not None:
            on_frame(key, frame, result, latency)
    return scorer
