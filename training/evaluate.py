"""Evaluate a checkpoint: 19-class mIoU with the paper's protocol, and COCO-style box AP; JSON, Markdown and PNGs.

    vltseg eval --checkpoint runs/gta5_eva02_l14 --data cityscapes:/data/cityscapes:val --out reports/gta5
    vltseg eval --checkpoint run/final.safetensors --data acdc:/data/acdc:val --mode slide --window 512 --stride 426
    torchrun --nproc_per_node 2 -m vltseg_train.evaluate --checkpoint runs/gta5_eva02_l14 --data ... --out ...

A run directory means its ``final.safetensors`` (``--which best`` takes the checkpoint selected on the config's
held-out source split, if the run had one). The protocol follows the checkpoint: models trained on a synthetic
source slide 512/426 windows over images fitted into 1024x512, real-source models 1024/768 windows within 2048x1024,
and a dataset may fix its own test size per protocol (ACDC: 960x540 / 1920x1080). Predictions are resized to the
ground truth's resolution before scoring. Under torchrun every process scores its shard of each dataset and rank 0
writes the report; the numbers equal a single process's exactly.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Iterable, Optional

import torch

from vltseg_ros.checkpoint import CheckpointError, CheckpointMeta, load_checkpoint
from vltseg_ros.cli import add_tta_arguments, parse_size, tta_from_args
from vltseg_ros.config import (
    ConfigError, InferenceConfig, TTAConfig, evaluation_protocol, validate_inference_config,
)
from vltseg_ros.evaluation import dataset_frame, evaluate
from vltseg_ros.precision import PRECISIONS
from vltseg_ros.predictor import Predictor
from vltseg_ros.report import markdown_table, monitor_report_settings, percent, write_report

from .datasets import DatasetError, build_dataset
from .distributed import Dist, gather, torchrun_main

CHECKPOINTS = {"final": "final.safetensors", "best": "best.safetensors"}
"""What ``--which`` picks in a run directory."""


def dataset_inference(dataset, inference: InferenceConfig) -> InferenceConfig:
    """``inference`` with the dataset's own test size under the checkpoint's protocol, where it has one."""
    fit = getattr(dataset, "eval_fit_sizes", {}).get(evaluation_protocol(inference))
    return dataclasses.replace(inference, fit_size=list(fit)) if fit else inference


def evaluate_dataset(model: torch.nn.Module, meta: CheckpointMeta, dataset, device: torch.device | str = "cpu",
                     precision: str = "auto", limit: int = 0, progress: bool = False,
                     inference: Optional[InferenceConfig] = None, tta: Optional[TTAConfig] = None,
                     shard: tuple[int, int] = (0, 1)) -> Optional[dict]:
    """Score a model on a dataset (``Scorer.result`` plus ``skipped`` and the ``inference`` used): segmentation
    when the model has a segmentation head, detection when it has a detection head and the dataset has boxes, and
    latency. ``inference`` None = the checkpoint's, with the dataset's protocol size.

    ``shard`` = (rank, world) inside an initialised process group: this process scores samples rank, rank + world,
    ...; rank 0 merges every shard (frames keyed by sample index) and returns the result, the others return None.
    """
    rank, world = shard
    predictor = Predictor(model, meta, device=device, precision=precision, score_threshold=0.0, tta=tta,
                          inference=inference or dataset_inference(dataset, meta.inference))
    indices: Iterable[int] = range(rank, len(dataset) if not limit else min(limit, len(dataset)), world)
    if progress and rank == 0:
        from tqdm import tqdm

        indices = tqdm(indices, desc="eval", dynamic_ncols=True, mininterval=1.0)
    scorer = evaluate(predictor, ((i, dataset_frame(dataset[i])) for i in indices))
    shards = gather((scorer, getattr(dataset, "skipped", 0)), world)
    if rank != 0:
        return None
    for other, _ in shards[1:]:
        scorer.merge(other)
    return {**scorer.result(), "skipped": sum(skipped for _, skipped in shards),
            "inference": dataclasses.asdict(predictor.inference)}


def resolve_checkpoint(path: str, which: str = "final") -> str:
    """A checkpoint file as given, or a run directory's final (or ``which``) checkpoint."""
    if not os.path.isdir(path):
        return path
    chosen = os.path.join(path, CHECKPOINTS[which])
    if not os.path.isfile(chosen):
        hint = (" (a best checkpoint exists only when the run's config names a held-out source split in "
                "data.select)" if which == "best" else " (has the run finished?)")
        raise CheckpointError(f"no {which} checkpoint in run directory {path}: {chosen} not found{hint}")
    return chosen


def describe_checkpoint(path: str, meta: CheckpointMeta) -> str:
    """One line saying which checkpoint of a run this is and, for a selected one, on what it was selected."""
    provenance = meta.provenance
    selection = provenance.get("selection")
    if selection:
        return (f"{path}: selected on {selection['dataset']} ({selection['metric']} {percent(selection['value'])} "
                f"at iteration {selection['iteration']}), a held-out split of the source domain")
    if provenance.get("final"):
        return f"{path}: final checkpoint of run {provenance.get('run')!r} (iteration {provenance.get('iteration')})"
    return f"{path}: {provenance.get('created_by', 'checkpoint')} (iteration {provenance.get('iteration', '-')})"


def _parse_data(text: str) -> tuple[str, str, str, str]:
    """``name:root[:split[:label]]`` -> (name, root, split, label)."""
    parts = text.split(":")
    if len(parts) < 2:
        raise argparse.ArgumentTypeError(f"expected name:root[:split[:label]], got {text!r}")
    name, root = parts[0], parts[1]
    split = parts[2] if len(parts) > 2 and parts[2] else "val"
    label = parts[3] if len(parts) > 3 else f"{os.path.basename(os.path.normpath(root))}/{split}"
    return name, root, split, label


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``vltseg eval`` options."""
    parser.add_argument("--checkpoint", required=True, help="a .safetensors checkpoint or a run directory")
    parser.add_argument("--which", choices=sorted(CHECKPOINTS), default="final",
                        help="with a run directory: its final checkpoint (default) or the one selected on the "
                             "config's held-out source split")
    parser.add_argument("--data", action="append", required=True, type=_parse_data, metavar="NAME:ROOT[:SPLIT[:LABEL]]",
                        help="dataset reader (cityscapes, gta5, synthia, mapillary, bdd100k, bdd100k_det, acdc), "
                             "root, split (default val) and report label; repeat for several domains")
    parser.add_argument("--out", required=True, help="report directory")
    parser.add_argument("--device", default="auto", help="auto (cuda:LOCAL_RANK if available), cpu, cuda:N")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="auto: bf16 where the device runs it natively, else fp32")
    parser.add_argument("--limit", type=int, default=0, help="evaluate at most N images per dataset")
    parser.add_argument("--source", help="report label of the in-domain set: the monitor's failure threshold (its "
                                         "mean frame mIoU - 10) and false alarms are measured on it (default: the "
                                         "first label containing 'source', else the first --data)")
    parser.add_argument("--mode", choices=["whole", "slide"], help="override the checkpoint's inference mode")
    parser.add_argument("--size", type=parse_size, help="whole mode input HxW")
    parser.add_argument("--fit-size", dest="fit_size", type=parse_size,
                        help="slide mode: fit into HxW first (overrides the datasets' protocol sizes)")
    parser.add_argument("--window", type=int)
    parser.add_argument("--stride", type=int)
    add_tta_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``vltseg eval`` (one process, or every process of a torchrun job)."""
    dist = Dist(args.device)
    try:
        path = resolve_checkpoint(args.checkpoint, args.which)
        model, meta = load_checkpoint(path)
        overrides = {key: getattr(args, key) for key in ("mode", "size", "fit_size", "window", "stride")
                     if getattr(args, key) is not None}
        inference = dataclasses.replace(meta.inference, **overrides) if overrides else None
        if inference is not None:
            validate_inference_config(inference)
        tta = tta_from_args(args, meta)
        results = {}
        for name, root, split, label in args.data:
            dataset = build_dataset(name, root, split)
            result = evaluate_dataset(model, meta, dataset, dist.device, args.precision, args.limit, progress=True,
                                      inference=inference, tta=tta, shard=dist.shard)
            if result is None:
                continue
            results[label] = result
            seg, det = result.get("segmentation"), result.get("detection")
            print(f"{label}: {result['images']} images"
                  + (f", mIoU {percent(seg['mIoU'])}" if seg else "")
                  + (f", AP {percent(det['AP'])}, AP50 {percent(det['AP50'])}" if det else ""))
        if dist.main:
            described = describe_checkpoint(path, meta)
            header = {"checkpoint": path, "checkpoint_description": described,
                      "selection": meta.provenance.get("selection"), "precision": args.precision,
                      "tta": dataclasses.asdict(tta) if tta else None, "processes": dist.world}
            header["monitor_calibration"] = (meta.monitor or {}).get("calibration")
            paths = write_report(results, args.out, meta.model.classes, header, monitor_source=args.source,
                                 **monitor_report_settings(meta.monitor))
            print(f"checkpoint: {described}")
            print(markdown_table(results, meta.model.classes).split("\n\n")[0])
            print(f"report: {os.path.abspath(args.out)} ({', '.join(os.path.basename(p) for p in paths.values())})")
        return 0
    finally:
        dist.close()


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m vltseg_train.evaluate`` (what torchrun launches)."""
    return torchrun_main("vltseg_train.evaluate", __doc__, add_arguments, run, argv, (CheckpointError, ConfigError, DatasetError))


if __name__ == "__main__":
    sys.exit(main())
