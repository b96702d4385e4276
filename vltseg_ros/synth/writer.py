"""The Cityscapes-layout writer: splits of rendered frames (``leftImg8bit`` / ``gtFine`` with labelIds,
labelTrainIds and 16-bit instanceIds), spread over worker processes, and the whole benchmark."""
from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Sequence

import cv2
import numpy as np
from tqdm import tqdm

from vltseg_ros.labels import CITYSCAPES_CLASSES

from .frame import check_look, render_frame
from .weather import CONDITIONS


def _init_worker() -> None:
    """Worker processes render one frame at a time on one core each; OpenCV's own thread pool would oversubscribe."""
    cv2.setNumThreads(1)


@dataclass(frozen=True)
class _SplitJob:
    """One split to write: frames 0..count-1 with seeds seed..seed+count-1 under root in the Cityscapes layout."""

    root: str
    split: str
    city: str
    count: int
    seed: int
    height: int
    width: int
    style: str
    condition: str


def _write_frames(job: _SplitJob, indices: Sequence[int]) -> int:
    """Render and write frames ``indices`` of a split (one worker task); returns how many."""
    image_dir = os.path.join(job.root, "leftImg8bit", job.split, job.city)
    label_dir = os.path.join(job.root, "gtFine", job.split, job.city)
    for i in indices:
        frame = render_frame(job.seed + i, job.height, job.width, job.style, job.condition)
        stem = f"{job.city}_{i:06d}_000019"
        outputs = {
            os.path.join(image_dir, f"{stem}_leftImg8bit.png"): frame.image[..., ::-1],
            os.path.join(label_dir, f"{stem}_gtFine_labelIds.png"): frame.label_ids,
            os.path.join(label_dir, f"{stem}_gtFine_labelTrainIds.png"): frame.train_ids,
            os.path.join(label_dir, f"{stem}_gtFine_instanceIds.png"): frame.instance_ids.astype(np.uint16),
        }
        for path, array in outputs.items():
            if not cv2.imwrite(path, np.ascontiguousarray(array)):
                raise OSError(f"could not write {path}")
    return len(indices)


def _write_splits(jobs: Sequence[_SplitJob], workers: int, progress: bool) -> int:
    """Write all frames of ``jobs``, in chunks spread over ``workers`` processes when > 1; returns the frame count."""
    for job in jobs:
        check_look(job.style, job.condition, job.height, job.width)
        if job.count < 0 or job.seed < 0:
            raise ValueError(f"count and seed must be >= 0, got count={job.count}, seed={job.seed}")
        for top in ("leftImg8bit", "gtFine"):
            os.makedirs(os.path.join(job.root, top, job.split, job.city), exist_ok=True)
    chunk = 8
    tasks = [(job, range(i, min(i + chunk, job.count))) for job in jobs for i in range(0, job.count, chunk)]
    total = sum(job.count for job in jobs)
    with tqdm(total=total, unit="frame", disable=not progress) as bar:
        if workers <= 1 or len(tasks) <= 1:
            for task in tasks:
                bar.update(_write_frames(*task))
        else:
            # spawn: safe with torch / OpenCV threads in the parent, and the same on every platform
            with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                                     initializer=_init_worker) as pool:
                for n in pool.map(_write_frames, *zip(*tasks)):
                    bar.update(n)
    return total


def write_split(root: str, split: str, count: int, seed: int, height: int, width: int, style: str,
                condition: str = "clear", city: str | None = None, workers: int = 1, progress: bool = False) -> int:
    """Write ``count`` frames (seeds seed..seed+count-1) of one split in the Cityscapes layout; returns the count."""
    job = _SplitJob(root, split, city or f"{style}_{condition}", count, seed, height, width, style, condition)
    return _write_splits([job], workers, progress)


def write_benchmark(root: str, train: int = 300, val: int = 60, height: int = 256, width: int = 512, seed: int = 0,
                    workers: int = 1, progress: bool = False,
                    splits: Sequence[str] = ("train", "val")) -> dict[str, str]:
    """Write the source domain (synthetic/clear train + val) and realistic target domains (val, one per condition).

    Target seeds start after the source's and are shared by all target conditions, so the targets show the same
    scenes in different weather. Only the splits named in ``splits`` are rendered (the demo renders ``train`` first
    and the ``val`` splits while it trains). Returns {domain name: dataset root}; root/benchmark.json describes the
    whole benchmark.
    """
    domains = {"source": ("synthetic", "clear", {"train": (train, seed), "val": (val, seed + train)})}
    target_seed = seed + train + val
    for condition in CONDITIONS:
        domains[f"target_{condition}"] = ("realistic", condition, {"val": (val, target_seed)})
    roots, summary, jobs = {}, {}, []
    for name, (style, condition, domain_splits) in domains.items():
        roots[name] = os.path.join(root, name)
        city = f"{style}_{condition}"
        jobs += [_SplitJob(roots[name], split, city, count, first, height, width, style, condition)
                 for split, (count, first) in domain_splits.items() if split in splits]
        summary[name] = {"root": name, "style": style, "condition": condition, "city": city,
                         "splits": {s: {"count": c, "first_seed": fs} for s, (c, fs) in domain_splits.items()}}
    _write_splits(jobs, workers, progress)
    meta = {
        "generator": "vltseg_ros.synth",
        "layout": "cityscapes",
        "size": [height, width],
        "seed": seed,
        "classes": list(CITYSCAPES_CLASSES),
        "label_files": ["gtFine_labelIds", "gtFine_labelTrainIds", "gtFine_instanceIds"],
        "domains": summary,
    }
    with open(os.path.join(root, "benchmark.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return roots
