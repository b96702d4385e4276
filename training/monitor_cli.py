"""Calibrate a checkpoint's domain-shift monitor on a held-out split of its source domain.

``vltseg monitor calibrate --checkpoint model.safetensors --data cityscapes:/data/cityscapes:val`` runs the
checkpoint on the split (with its own inference protocol), fits the in-domain statistics of every frame score
(``vltseg_ros.monitor``: the default feature-shift score and the model-free image baseline), sets the alarm
thresholds so that about 5 % of new in-domain frames raise a warning and 1 % an error, and writes them, the
in-domain score distribution, the split and the frame count into the checkpoint's metadata (in place, or to
``--out``). The node and every evaluation read them from there; an uncalibrated checkpoint runs, and its monitor
reports that it is uncalibrated.

Use frames the model was not trained on (a held-out source split): frames it was fitted to look more in-domain
than new ones, and the thresholds would raise too many alarms.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import sys
from typing import Iterable, Optional

import numpy as np
import torch

from vltseg_ros import monitor
from vltseg_ros.checkpoint import CheckpointError, load_checkpoint, load_extra, save_checkpoint
from vltseg_ros.metrics import frame_miou
from vltseg_ros.precision import PRECISIONS
from vltseg_ros.predictor import Predictor

from .datasets import DatasetError, build_dataset
from .evaluate import _parse_data, dataset_inference

MIN_FRAMES = 20
"""Fewest calibration frames. The thresholds' guarantee needs more (``monitor.frames_for_bound``): 45 frames for a 5 %
warning rate, 230 for a 1 % error rate at 90 % confidence; with fewer they come from a normal tail fit."""


def calibrate_predictor(predictor: Predictor, frames: Iterable[tuple[np.ndarray, Optional[np.ndarray]]],
                        source: dict, warn_rate: float = 0.05, error_rate: float = 0.01,
                        confidence: float = monitor.ALARM_CONFIDENCE) -> dict:
    """The metadata ``monitor`` section from in-domain (RGB uint8 image, trainId label or None) frames run through
    ``predictor``. With labels it also records their mean frame mIoU: the failure reference of evaluations that
    hold no source domain (a frame fails 10 points below it)."""
    descriptors: dict[str, list[np.ndarray]] = {}
    mious: list[float] = []
    for image, label in frames:
        result = predictor.predict([image])[0]
        for name, descriptor in result.frame_descriptors.items():
            descriptors.setdefault(name, []).append(descriptor)
        if label is not None and result.label_map is not None:
            mious.append(frame_miou(result.label_map, label, len(predictor.meta.model.classes)))
    frames = len(next(iter(descriptors.values()), []))
    if frames < MIN_FRAMES:
        raise DatasetError(f"monitor calibration needs at least {MIN_FRAMES} frames, got {frames}")
    stacked = {name: torch.from_numpy(np.stack(values)) for name, values in descriptors.items()}
    mious = [m for m in mious if np.isfinite(m)]
    source = {**source, "mean_frame_miou": float(np.mean(mious)) if mious else None}
    return monitor.calibrate(stacked, source, warn_rate, error_rate, confidence=confidence)


def calibrate_checkpoint(path: str, name: str, root: str, split: str, out: Optional[str] = None,
                         device: str = "cpu", precision: str = "auto", limit: int = 0, warn_rate: float = 0.05,
                         error_rate: float = 0.01, confidence: float = monitor.ALARM_CONFIDENCE) -> dict:
    """Calibrate checkpoint ``path`` on dataset ``name`` at ``root``/``split``; write it to ``out`` (default: in
    place, atomically). Returns the ``monitor`` section written."""
    model, meta = load_checkpoint(path)
    dataset = build_dataset(name, root, split)
    predictor = Predictor(model, meta, device=device, precision=precision,
                          inference=dataset_inference(dataset, meta.inference))
    count = len(dataset) if not limit else min(limit, len(dataset))
    source = {"dataset": name, "root": os.path.abspath(root), "split": split,
              "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "inference": dataclasses.asdict(predictor.inference), "precision": predictor.precision}
    samples = (dataset[i] for i in range(count))
    section = calibrate_predictor(predictor, ((s["image"], s["label"]) for s in samples), source, warn_rate,
                                  error_rate, confidence)
    meta.monitor = section
    save_checkpoint(out or path, model.cpu(), meta, extra=load_extra(path))
    return section


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``vltseg monitor`` subcommands."""
    commands = parser.add_subparsers(dest="monitor_command", required=True)
    cal = commands.add_parser("calibrate", help="fit the monitor on a held-out source split; store it in the "
                                                "checkpoint", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    cal.add_argument("--checkpoint", required=True, help="the .safetensors checkpoint")
    cal.add_argument("--data", required=True, type=_parse_data, metavar="NAME:ROOT[:SPLIT]",
                     help="a held-out split of the source domain (reader name, root, split; default split val)")
    cal.add_argument("--out", help="write the calibrated checkpoint here (default: update --checkpoint in place)")
    cal.add_argument("--limit", type=int, default=0, help="use at most N frames (0 = all)")
    cal.add_argument("--device", default="cpu")
    cal.add_argument("--precision", default="auto", choices=PRECISIONS)
    cal.add_argument("--warn-rate", dest="warn_rate", type=float, default=0.05,
                     help="most in-domain frames that may raise a warning (default 0.05)")
    cal.add_argument("--error-rate", dest="error_rate", type=float, default=0.01,
                     help="most in-domain frames that may raise an error (default 0.01)")
    cal.add_argument("--confidence", type=float, default=monitor.ALARM_CONFIDENCE,
                     help="how sure the thresholds are to hold those rates on new in-domain frames "
                          f"(default {monitor.ALARM_CONFIDENCE})")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``vltseg monitor``."""
    if not 0 < args.error_rate <= args.warn_rate < 1 or not 0 < args.confidence < 1:
        print("vltseg monitor: error: need 0 < --error-rate <= --warn-rate < 1 and 0 < --confidence < 1",
              file=sys.stderr)
        return 2
    name, root, split, _ = args.data
    try:
        section = calibrate_checkpoint(args.checkpoint, name, root, split, args.out, args.device, args.precision,
                                       args.limit, args.warn_rate, args.error_rate, args.confidence)
    except (CheckpointError, DatasetError) as exc:
        print(f"vltseg monitor: error: {exc}", file=sys.stderr)
        return 2
    calibration = section["calibration"]
    print(f"calibrated on {calibration['frames']} frames of {name} {split} ({root}); written to "
          f"{args.out or args.checkpoint}")
    for score, entry in section["scores"].items():
        t = entry["thresholds"]
        print(f"  {score}: warn below {t['warn']:.4f} (at most {100 * t['warn_rate']:g} % of in-domain frames with "
              f"{100 * t['confidence']:g} % confidence, expected {100 * t['expected_warn_rate']:.1f} %; "
              f"{t['warn_rule']}), error below {t['error']:.4f} (at most {100 * t['error_rate']:g} %, expected "
              f"{100 * t['expected_error_rate']:.1f} %; {t['error_rule']}); in-domain median "
              f"{entry['distribution']['quantiles']['p50']:.4f}")
        if t["count"] < t["error_frames_needed"]:
            print(f"  note: {t['count']} frames are too few to guarantee these rates; the thresholds below the bound "
                  f"come from a normal tail fit ({t['warn_frames_needed']} frames guarantee the warning rate, "
                  f"{t['error_frames_needed']} the error rate)")
    return 0
