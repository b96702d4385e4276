"""``Prediction``, the predictor's per-image result. Plain numpy and torch-free, so code that scores published
outputs (the online evaluator node) builds one without importing torch."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np


@dataclass
class Prediction:
    """Per-image result, all at the source image's resolution and in its pixel coordinates."""

    label_map: Optional[np.ndarray]  # [H, W] uint8 class ids (trainIds), 255 = unlabeled; None without a seg head
    confidence: Optional[np.ndarray]  # [H, W] float32 in [0, 1] (normalised class score of the winner), if asked
    boxes: np.ndarray  # [N, 4] float32 xyxy in source pixels
    box_class_ids: np.ndarray  # [N] int64 ids in ``Predictor.class_names``
    box_scores: np.ndarray  # [N] float32
    # The domain-shift monitor (vltseg_ros.monitor): frame scores by name (higher = more trustworthy), present once
    # the checkpoint is calibrated, and the per-frame descriptors they are computed from (what calibration fits).
    frame_scores: dict[str, float] = field(default_factory=dict)
    frame_descriptors: dict[str, np.ndarray] = field(default_factory=dict)
