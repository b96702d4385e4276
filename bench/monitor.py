#!/usr/bin/env python
"""Domain-shift monitor benchmark (issue 20): which frame-level score tracks the accuracy drop under domain shift.

Three steps, each re-runnable on its own (the data and per-frame scores live outside the repository):

    python bench/monitor.py prepare --data /work/monitor_data      # render new seeds, apply corruptions
    python bench/monitor.py score   --data /work/monitor_data --checkpoint CKPT   # every candidate, every frame
    python bench/monitor.py analyse --data /work/monitor_data      # tables (markdown) from scores.csv
    python bench/monitor.py ablate  --data /work/monitor_data      # the default's design choices (descriptors.npz)
    python bench/monitor.py cost    --data /work/monitor_data --checkpoint CKPT   # ms/frame per candidate

``--out DIR`` keeps the results of another checkpoint apart (score, analyse, ablate and cost read and write there).

``prepare`` renders, with ``vltseg synth`` and seeds far from the demo's (0..379): a source-style calibration split
and a source-style in-domain test split; realistic-style clear/fog/night/rain/snow in a *dev* and a *test* seed
range; and source-style frames under image corruptions at three strengths, five *dev* corruption types (used to
choose the default) and six *held-out* types (also applied to realistic-clear frames; only reported).

``score`` runs the network once per frame (plus a flipped and a 0.75x pass for the consistency candidates), fits
every calibrated candidate on the calibration split, and writes scores.csv (one row per frame: group, domain,
frame mIoU, every candidate) and descriptors.npz. Calibration frames are scored out-of-fold (5 folds: a frame's
score uses statistics fitted without it), so thresholds set on them are not biased by in-sample distances.

``analyse`` reports per candidate: Spearman rho(score, frame mIoU) over all target frames and within each domain,
failure AUROC (failed: frame mIoU < source mean - 10 points), AURC and E-AURC (loss 1 - frame mIoU), and the
in-domain false-alarm rate at the calibration split's 5th percentile. Scores are confidences: higher = trusted.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Optional

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from vltseg_ros import metrics, monitor as M

CONDITIONS = ("clear", "fog", "night", "rain", "snow")
SIZE = (256, 512)
FOLDS = 5
# Seeds far from the demo's (source train 0-299, source val 300-339, targets 340-379).
SEEDS = {
    "source_calib": 50000, "source_test": 51000, "render_dev": 52000, "render_test": 53000,
    "corrupt_dev_base": 54000, "corrupt_heldout_base": 55000, "corrupt_heldout_realistic": 56000,
}
COUNTS = {
    "source_calib": 100, "source_test": 100, "render_dev": 40, "render_test": 40,
    "corrupt_dev_base": 16, "corrupt_heldout_base": 8, "corrupt_heldout_realistic": 8,
}
TARGET_GROUPS = ("render_dev", "render_test", "corrupt_dev", "corrupt_heldout")
DEV_GROUPS = ("render_dev", "corrupt_dev")
TEST_GROUPS = ("render_test", "corrupt_heldout")


# ================================================================================================ corruptions
def _clip(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def _gauss_noise(img, s, rng):
    return _clip(img.astype(np.float32) + rng.normal(0, s, img.shape))


def _gauss_blur(img, s, rng):
    return cv2.GaussianBlur(img, (0, 0), s)


def _contrast(img, c, rng):
    x = img.astype(np.float32)
    return _clip(x.mean() + c * (x - x.mean()))


def _darken(img, f, rng):
    return _clip(img.astype(np.float32) * f)


def _jpeg(img, q, rng):
    ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(q)])
    assert ok
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]


def _motion_blur(img, length, rng):
    kernel = np.zeros((length, length), np.float32)
    kernel[length // 2, :] = 1
    centre = (length / 2 - 0.5, length / 2 - 0.5)
    kernel = cv2.warpAffine(kernel, cv2.getRotationMatrix2D(centre, float(rng.uniform(-30, 30)), 1.0),
                            (length, length))
    return cv2.filter2D(img, -1, kernel / kernel.sum())


def _pixelate(img, factor, rng):
    h, w = img.shape[:2]
    small = cv2.resize(img, (w // factor, h // factor), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def _impulse(img, amount, rng):
    out = img.copy()
    u = rng.uniform(size=img.shape[:2])
    out[u < amount / 2] = 0
    out[u > 1 - amount / 2] = 255
    return out


def _overexpose(img, gain, rng):
    return _clip(img.astype(np.float32) * gain)


def _color_cast(img, a, rng):
    return _clip(img.astype(np.float32) * np.array([1 + a, 1.0, 1 - a], np.float32))


def _haze(img, t0, rng):
    h = img.shape[0]
    t = (t0 + (1 - t0) * np.linspace(0, 1, h, dtype=np.float32) ** 2)[:, None, None]  # denser towards the top
    return _clip(img.astype(np.float32) * t + 0.8 * 255 * (1 - t))


# name -> (function, three strengths, group)
CORRUPTIONS: dict[str, tuple[Callable, tuple, str]] = {
    "gauss_noise": (_gauss_noise, (8, 20, 40), "dev"),
    "gauss_blur": (_gauss_blur, (1.0, 2.5, 5.0), "dev"),
    "contrast": (_contrast, (0.5, 0.25, 0.1), "dev"),
    "darken": (_darken, (0.5, 0.25, 0.1), "dev"),
    "jpeg": (_jpeg, (30, 12, 5), "dev"),
    "motion_blur": (_motion_blur, (7, 15, 25), "heldout"),
    "pixelate": (_pixelate, (2, 4, 8), "heldout"),
    "impulse": (_impulse, (0.02, 0.06, 0.15), "heldout"),
    "overexpose": (_overexpose, (1.6, 2.5, 4.0), "heldout"),
    "color_cast": (_color_cast, (0.2, 0.4, 0.6), "heldout"),
    "haze": (_haze, (0.6, 0.35, 0.15), "heldout"),
}


# ================================================================================================ prepare
def _render(out: str, style: str, condition: str, seed: int, count: int, workers: int) -> list[tuple[str, str]]:
    """Render one split with `vltseg synth` (skipped when already complete); returns (image, label) paths."""
    city = f"{style}_{condition}"
    images = os.path.join(out, "leftImg8bit", "val", city)
    pairs = [(os.path.join(images, f"{city}_{i:06d}_000019_leftImg8bit.png"),
              os.path.join(out, "gtFine", "val", city, f"{city}_{i:06d}_000019_gtFine_labelTrainIds.png"))
             for i in range(count)]
    if not all(os.path.exists(a) and os.path.exists(b) for a, b in pairs):
        exe = os.path.join(os.path.dirname(sys.executable), "vltseg")
        subprocess.run([exe, "synth", "--out", out, "--style", style, "--condition", condition, "--split", "val",
                        "--count", str(count), "--seed", str(seed), "--size", f"{SIZE[0]}x{SIZE[1]}",
                        "--workers", str(workers)], check=True)
    return pairs


def prepare(args: argparse.Namespace) -> int:
    data = args.data
    frames: list[dict] = []
    renders = os.path.join(data, "renders")

    def add(group, domain, image, label, seed, corruption=None, strength=None, base=None):
        stem = os.path.basename(image).split("_leftImg8bit")[0]
        frames.append({"id": f"{domain}/{stem}" if strength is None else f"{domain}_{strength}/{stem}", "group": group,
                       "domain": domain, "image": image, "label": label, "seed": seed, "corruption": corruption,
                       "strength": strength, "base": base})

    for group in ("source_calib", "source_test"):
        pairs = _render(os.path.join(renders, group), "synthetic", "clear", SEEDS[group], COUNTS[group], args.workers)
        for i, (img, lab) in enumerate(pairs):
            add(group, "source", img, lab, SEEDS[group] + i)
    for group in ("render_dev", "render_test"):
        for cond in CONDITIONS:
            pairs = _render(os.path.join(renders, group), "realistic", cond, SEEDS[group], COUNTS[group], args.workers)
            for i, (img, lab) in enumerate(pairs):
                add(group, f"realistic_{cond}", img, lab, SEEDS[group] + i)
    bases = {
        "dev": [("synthetic", p, SEEDS["corrupt_dev_base"] + i) for i, p in enumerate(_render(
            os.path.join(renders, "corrupt_dev_base"), "synthetic", "clear", SEEDS["corrupt_dev_base"],
            COUNTS["corrupt_dev_base"], args.workers))],
        "heldout": [("synthetic", p, SEEDS["corrupt_heldout_base"] + i) for i, p in enumerate(_render(
            os.path.join(renders, "corrupt_heldout_base"), "synthetic", "clear", SEEDS["corrupt_heldout_base"],
            COUNTS["corrupt_heldout_base"], args.workers))]
        + [("realistic", p, SEEDS["corrupt_heldout_realistic"] + i) for i, p in enumerate(_render(
            os.path.join(renders, "corrupt_heldout_realistic"), "realistic", "clear",
            SEEDS["corrupt_heldout_realistic"], COUNTS["corrupt_heldout_realistic"], args.workers))],
    }
    for name, (fn, strengths, kind) in CORRUPTIONS.items():
        for level, strength in enumerate(strengths, start=1):
            folder = os.path.join(data, "corrupt", f"{name}_{level}")
            os.makedirs(folder, exist_ok=True)
            for style, (img_path, lab_path), seed in bases[kind]:
                out = os.path.join(folder, f"{style}_{seed}_leftImg8bit.png")
                if not os.path.exists(out):
                    rng = np.random.default_rng([seed, level, sum(map(ord, name))])
                    img = cv2.imread(img_path, cv2.IMREAD_COLOR)[..., ::-1]
                    cv2.imwrite(out, np.ascontiguousarray(fn(img, strength, rng)[..., ::-1]))
                add(f"corrupt_{kind}", f"{name}", out, lab_path, seed, name, level, style)
    meta = {"size": list(SIZE), "seeds": SEEDS, "counts": COUNTS,
            "corruptions": {k: {"strengths": list(v[1]), "group": v[2]} for k, v in CORRUPTIONS.items()},
            "frames": frames}
    with open(os.path.join(data, "manifest.json"), "w") as f:
        json.dump(meta, f, indent=1)
    counts: dict[str, int] = {}
    for fr in frames:
        counts[fr["group"]] = counts.get(fr["group"], 0) + 1
    print(f"{len(frames)} frames: {counts} -> {os.path.join(data, 'manifest.json')}")
    return 0


# ================================================================================================ score
TOKEN_FEATURES = ("tap0", "tap1", "tap2", "tap3", "mf")
CLASS_FEATURES = ("tap3", "mf")
STAT_SETS = {"taps": ("tap0", "tap1", "tap2", "tap3"), "tap0": ("tap0",), "tap1": ("tap1",), "tap2": ("tap2",),
             "tap3": ("tap3",), "mf": ("mf",)}


def _load(frame: dict) -> tuple[np.ndarray, np.ndarray]:
    image = cv2.imread(frame["image"], cv2.IMREAD_COLOR)[..., ::-1].copy()
    label = cv2.imread(frame["label"], cv2.IMREAD_UNCHANGED)
    if image.shape[:2] != SIZE or label.shape != SIZE:
        raise ValueError(f"{frame['image']}: expected {SIZE}, got {image.shape} / {label.shape}")
    return image, label


class Network:
    """The checkpoint's network with the predictor's preprocessing and precision, returning monitor inputs."""

    def __init__(self, checkpoint: str, precision: str = "auto"):
        from vltseg_ros.checkpoint import load_checkpoint
        from vltseg_ros.precision import resolve_precision

        self.model, self.meta = load_checkpoint(checkpoint)
        self.model.eval()
        self.precision = resolve_precision(precision, "cpu")
        self.num_classes = len(self.meta.model.classes)
        inf = self.meta.inference
        if inf.mode != "whole" or tuple(inf.size) != SIZE:
            raise ValueError(f"expected whole-image inference at {SIZE}, checkpoint has {inf.mode} {inf.size}")

    def raw(self, image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(image).permute(2, 0, 1)[None].float()

    @torch.inference_mode()
    def outputs(self, raw: torch.Tensor, mask_features: bool = True, scale: float = 1.0, flip: bool = False) -> dict:
        from vltseg_ros.precision import autocast

        x = raw
        if scale != 1.0:
            x = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
        if flip:
            x = x.flip(-1)
        with autocast(self.precision, "cpu"):
            out = M.network_outputs(self.model, self.model.normalize(x), mask_features=mask_features)
        scores = out["seg_scores"]
        if flip:
            scores = M.flip_back(scores)
        if scores.shape[-2:] != raw.shape[-2:]:
            scores = F.interpolate(scores, size=raw.shape[-2:], mode="bilinear", align_corners=False)
        out["seg_scores"] = scores
        out["features"] = {f"tap{i}": t.float() for i, t in enumerate(out["taps"])}
        if mask_features:
            out["features"]["mf"] = out["mask_features"].float()
        return out


def _output_scores(seg: torch.Tensor) -> dict[str, float]:
    """Calibration-free output-based candidates of one frame's [1, K, H, W] scores."""
    maps = {"maxprob": M.max_probability_map(seg), "entropy": M.entropy_confidence_map(seg),
            "rba": M.rba_confidence_map(seg), "rawmax": seg.float().amax(1)}
    out = {}
    for name, m in maps.items():
        out[f"{name}_mean"] = M.pool_mean(m)
        out[f"{name}_p10"] = M.pool_quantile(m, 0.10)
        out[f"{name}_grid"] = M.pool_grid_worst(m, (4, 8), 4)
    out["maxprob_frac50"] = M.pool_fraction_above(maps["maxprob"], 0.5)
    out["maxprob_frac90"] = M.pool_fraction_above(maps["maxprob"], 0.9)
    out["entropy_frac50"] = M.pool_fraction_above(maps["entropy"], 0.5)
    return {k: float(v[0]) for k, v in out.items()}


def _token_scores(features: dict, token_stats: dict, class_stats: dict) -> dict[str, float]:
    out = {}
    for name, st in token_stats.items():
        d = M.token_mahalanobis_map(features[name], st)
        out[f"tok_{name}_mean"] = -float(torch.log1p(M.pool_mean(d))[0])
        out[f"tok_{name}_p90"] = -float(torch.log1p(M.pool_quantile(d, 0.90))[0])
        out[f"tok_{name}_grid"] = -float(torch.log1p(-M.pool_grid_worst(-d, (4, 8), 4))[0])
    for name, st in class_stats.items():
        d = M.class_mahalanobis_map(features[name], st)
        out[f"cls_{name}_mean"] = -float(torch.log1p(M.pool_mean(d))[0])
        out[f"cls_{name}_p90"] = -float(torch.log1p(M.pool_quantile(d, 0.90))[0])
    return out


def score(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    with open(os.path.join(args.data, "manifest.json")) as f:
        manifest = json.load(f)
    frames = manifest["frames"]
    if args.limit:
        frames = [fr for g in ("source_calib", "source_test", *TARGET_GROUPS)
                  for fr in [x for x in frames if x["group"] == g][:args.limit]]
    net = Network(args.checkpoint, args.precision)
    k = net.num_classes
    calib = [fr for fr in frames if fr["group"] == "source_calib"]
    fold_of = {fr["id"]: i % FOLDS for i, fr in enumerate(calib)}
    start = time.perf_counter()

    # Sanity: the label map equals the predictor's on a few frames.
    from vltseg_ros.predictor import Predictor

    predictor = Predictor(net.model, net.meta, precision=args.precision)
    for fr in frames[:2]:
        image, _ = _load(fr)
        ours = net.outputs(net.raw(image), mask_features=False)["seg_scores"].argmax(1)[0].numpy()
        theirs = predictor.predict([image])[0].label_map
        agree = float((ours == theirs).mean())
        print(f"label map vs Predictor.predict on {fr['id']}: {agree:.5f} of pixels agree")
        if agree < 0.999:
            raise SystemExit("label maps differ from the predictor's")

    # Pass 1: calibration moments, per frame (so that calibration frames can be scored out-of-fold).
    token_m: list[dict] = []
    class_m: list[dict] = []
    for i, fr in enumerate(calib):
        image, _ = _load(fr)
        out = net.outputs(net.raw(image))
        labels = out["seg_scores"].argmax(1)
        token_m.append({n: M.moments(M.tokens(out["features"][n])) for n in TOKEN_FEATURES})
        class_m.append({n: M.class_moments(out["features"][n], labels, k) for n in CLASS_FEATURES})
        if i % 20 == 0:
            print(f"calibration {i}/{len(calib)} ({time.perf_counter() - start:.0f} s)", flush=True)

    def fit_stats(exclude_fold: Optional[int]) -> tuple[dict, dict]:
        keep = [i for i, fr in enumerate(calib) if exclude_fold is None or fold_of[fr["id"]] != exclude_fold]

        def merged(per_frame: list[dict], name: str) -> dict:
            acc = None
            for i in keep:
                acc = M.merge_moments(acc, per_frame[i][name])
            return acc

        tok = {n: M.gaussian_from_moments(merged(token_m, n), args.shrinkage) for n in TOKEN_FEATURES}
        cls = {n: M.class_gaussian_from_moments(merged(class_m, n), args.shrinkage) for n in CLASS_FEATURES}
        return tok, cls

    fitted = {None: fit_stats(None), **{f: fit_stats(f) for f in range(FOLDS)}}

    # Pass 2: every frame.
    rows: list[dict] = []
    descriptors: dict[str, list[np.ndarray]] = {n: [] for n in ("stats_" + s for s in STAT_SETS)}
    descriptors.update(img=[], hist=[], soft_hist=[])
    for i, fr in enumerate(frames):
        image, label = _load(fr)
        raw = net.raw(image)
        out = net.outputs(raw)
        seg = out["seg_scores"]
        pred = seg.argmax(1)
        row = {key: fr[key] for key in ("id", "group", "domain", "corruption", "strength", "base", "seed")}
        row["miou"] = metrics.frame_miou(pred[0].numpy().astype(np.uint8), label, k)
        row.update(_output_scores(seg))
        tok, cls = fitted[fold_of.get(fr["id"])]
        row.update(_token_scores(out["features"], tok, cls))
        flipped = net.outputs(raw, mask_features=False, flip=True)["seg_scores"]
        scaled = net.outputs(raw, mask_features=False, scale=0.75)["seg_scores"]
        p = M.class_probabilities(seg)
        for name, other in (("flip", flipped), ("scale", scaled)):
            row[f"{name}_agree"] = float(M.label_agreement(pred, other.argmax(1))[0])
            row[f"{name}_miou"] = float(M.label_map_miou(pred, other.argmax(1), k)[0])
            row[f"{name}_soft"] = float(M.soft_agreement(p, M.class_probabilities(other))[0])
        for s, names in STAT_SETS.items():
            descriptors["stats_" + s].append(M.channel_statistics([out["features"][n] for n in names])[0].numpy())
        descriptors["img"].append(M.image_statistics(raw)[0].numpy())
        descriptors["hist"].append(M.class_histogram(pred, k)[0].numpy())
        descriptors["soft_hist"].append(M.soft_class_histogram(seg)[0].numpy())
        rows.append(row)
        if i % 50 == 0:
            print(f"frame {i}/{len(frames)} ({time.perf_counter() - start:.0f} s) {row['id']} "
                  f"mIoU {row['miou']:.3f}", flush=True)

    # Frame-level descriptor candidates: calibration frames out-of-fold, the rest against all calibration frames.
    desc = {n: torch.from_numpy(np.stack(v)).float() for n, v in descriptors.items()}
    calib_idx = [i for i, fr in enumerate(frames) if fr["group"] == "source_calib"]
    fold = np.array([fold_of.get(fr["id"], -1) for fr in frames])

    def calibrated(name: str, x: torch.Tensor, fit: Callable, dist: Callable) -> None:
        values = np.zeros(len(frames))
        for f in [-1, *range(FOLDS)]:
            train = [i for i in calib_idx if fold[i] != f] if f >= 0 else calib_idx
            target = np.flatnonzero(fold == f)
            if len(target):
                st = fit(x[train])
                values[target] = -torch.log1p(dist(x[target], st)).numpy()
        for row, v in zip(rows, values):
            row[name] = float(v)

    for s in STAT_SETS:
        calibrated(f"fstat_{s}_maha", desc["stats_" + s], M.fit_gaussian, M.mahalanobis)
        calibrated(f"fstat_{s}_diag", desc["stats_" + s], M.fit_diagonal, M.diagonal_distance)
    for kind in ("skl", "l1"):
        calibrated(f"hist_{kind}", desc["hist"], lambda x: x.mean(0),
                   lambda h, ref, kind=kind: M.histogram_distance(h, ref, kind))
        calibrated(f"softhist_{kind}", desc["soft_hist"], lambda x: x.mean(0),
                   lambda h, ref, kind=kind: M.histogram_distance(h, ref, kind))
    calibrated("img_bc_diag", desc["img"][:, :2], M.fit_diagonal, M.diagonal_distance)
    calibrated("img_all_diag", desc["img"], M.fit_diagonal, M.diagonal_distance)
    calibrated("img_all_maha", desc["img"], M.fit_gaussian, M.mahalanobis)
    for j, name in enumerate(M.IMAGE_STATISTICS):
        for row, v in zip(rows, desc["img"][:, j].tolist()):
            row[f"raw_{name}"] = v

    out_dir = args.out or args.data
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "scores.csv")
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    np.savez_compressed(os.path.join(out_dir, "descriptors.npz"), ids=np.array([r["id"] for r in rows]),
                        groups=np.array([r["group"] for r in rows]), **{n: v.numpy() for n, v in desc.items()})
    # The full calibration of the frame-level candidates (for the integration into checkpoints).
    cal = {n: M.to_plain(M.fit_gaussian(desc["stats_" + n][calib_idx])) for n in ("taps", "tap3", "mf")}
    cal["mf_diag"] = M.to_plain(M.fit_frame_score(desc["stats_mf"][calib_idx]))
    cal["mf_diag_thresholds"] = M.alarm_thresholds(M.out_of_fold_scores(desc["stats_mf"][calib_idx]))
    cal["img_all_diag"] = M.to_plain(M.fit_diagonal(desc["img"][calib_idx]))
    cal["hist_mean"] = M.to_plain(desc["hist"][calib_idx].mean(0))
    with open(os.path.join(out_dir, "calibration_stats.json"), "w") as f:
        json.dump({"checkpoint": os.path.abspath(args.checkpoint), "frames": len(calib_idx), "stats": cal}, f)
    meta = {"checkpoint": os.path.abspath(args.checkpoint), "precision": net.precision, "frames": len(rows),
            "threads": args.threads, "shrinkage_tokens": args.shrinkage, "seconds": time.perf_counter() - start}
    with open(os.path.join(out_dir, "scores_meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(f"wrote {path}: {len(rows)} frames, {len(rows[0]) - 8} candidates ({meta['seconds']:.0f} s)")
    return 0


# ================================================================================================ analyse
META_COLUMNS = {"id", "group", "domain", "corruption", "strength", "base", "seed", "miou"}
BASELINES = ("img_bc_diag", "img_all_diag", "img_all_maha")
FAMILY_PREFIXES = {
    "output": ("maxprob_", "entropy_", "rba_", "rawmax_"),
    "feature": ("fstat_", "tok_", "cls_"),
    "consistency": ("flip_", "scale_", "hist_", "softhist_"),
    "baseline": ("img_",),
}


def family(name: str) -> str:
    if name.startswith("combo_"):
        return "combination"
    for fam, prefixes in FAMILY_PREFIXES.items():
        if name.startswith(prefixes):
            return fam
    return "other"


def _nan(value: Optional[float]) -> float:
    return float("nan") if value is None else value


def auroc(score: np.ndarray, failed: np.ndarray) -> float:
    return _nan(metrics.failure_auroc(score, failed))


def aurc(score: np.ndarray, loss: np.ndarray) -> tuple[float, float]:
    return tuple(_nan(v) for v in metrics.aurc(score, loss))


def spearman(score: np.ndarray, miou: np.ndarray) -> float:
    return _nan(metrics.spearman(score, miou))


def _load_rows(data: str) -> tuple[list[dict], list[str]]:
    with open(os.path.join(data, "scores.csv")) as f:
        rows = list(csv.DictReader(f))
    names = [c for c in rows[0] if c not in META_COLUMNS and not c.startswith("raw_")]
    for r in rows:
        r["miou"] = float(r["miou"])
        for n in names:
            r[n] = float(r[n])
    return rows, names


def add_combinations(rows: list[dict], names: list[str], pairs: dict[str, tuple[str, ...]]) -> list[str]:
    """Named z-score averages (calibration mean/std from the out-of-fold calibration scores)."""
    calib = [r for r in rows if r["group"] == "source_calib"]
    for combo, members in pairs.items():
        norms = {m: M.fit_normalizer(torch.tensor([r[m] for r in calib])) for m in members}
        for r in rows:
            z = [M.standardize(torch.tensor([r[m]]), norms[m]) for m in members]
            r[combo] = float(M.combine(z, "mean")[0])
    return names + list(pairs)


def evaluate_candidates(rows: list[dict], names: list[str]) -> dict:
    """Every metric of every candidate (see module docs)."""
    calib = [r for r in rows if r["group"] == "source_calib"]
    test = [r for r in rows if r["group"] == "source_test"]
    source_mean = float(np.mean([r["miou"] for r in calib + test]))
    fail_below = source_mean - 0.10
    domains = sorted({r["domain"] for r in rows if r["group"] in TARGET_GROUPS})
    sets = {
        "targets": [r for r in rows if r["group"] in TARGET_GROUPS],
        "dev": [r for r in rows if r["group"] in DEV_GROUPS],
        "test": [r for r in rows if r["group"] in TEST_GROUPS],
        "renders": [r for r in rows if r["group"] in ("render_dev", "render_test")],
        "corruptions": [r for r in rows if r["group"] in ("corrupt_dev", "corrupt_heldout")],
    }
    evalset = {k: test + v for k, v in sets.items()}  # AUROC/AURC: in-domain test frames + the shifted ones
    results = {"source_mean": source_mean, "fail_below": fail_below, "domains": domains,
               "counts": {k: len(v) for k, v in sets.items()}, "candidates": {}}
    for name in names:
        res: dict = {"family": family(name)}
        cal = np.array([r[name] for r in calib])
        threshold = float(np.quantile(cal, 0.05))
        res["false_alarm"] = float(np.mean([r[name] < threshold for r in test]))
        for key, subset in sets.items():
            s = np.array([r[name] for r in subset])
            miou = np.array([r["miou"] for r in subset])
            res[f"rho_{key}"] = spearman(s, miou)
            e = evalset[key]
            s2 = np.array([r[name] for r in e])
            m2 = np.array([r["miou"] for r in e])
            res[f"auroc_{key}"] = auroc(s2, m2 < fail_below)
            res[f"aurc_{key}"], res[f"eaurc_{key}"] = aurc(s2, 1 - m2)
            res[f"detect_{key}"] = float(np.mean(s2[m2 < fail_below] < threshold)) if (m2 < fail_below).any() \
                else float("nan")
        for d in domains + ["source"]:
            subset = [r for r in rows if r["domain"] == d and r["group"] != "source_calib"]
            res[f"rho_in_{d}"] = spearman(np.array([r[name] for r in subset]), np.array([r["miou"] for r in subset]))
        for group in ("render_dev", "render_test"):
            for cond in CONDITIONS:
                subset = [r for r in rows if r["group"] == group and r["domain"] == f"realistic_{cond}"]
                res[f"rho_in_{group}_{cond}"] = spearman(np.array([r[name] for r in subset]),
                                                        np.array([r["miou"] for r in subset]))
        results["candidates"][name] = res
    return results


def _fmt(v: float, digits: int = 2) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def bootstrap(rows: list[dict], name: str, results: dict, draws: int = 1000, seed: int = 0) -> dict[str, list]:
    """95 % percentile intervals of rho and AUROC over the target frames (frames resampled with replacement)."""
    rng = np.random.default_rng(seed)
    test = [r for r in rows if r["group"] == "source_test"]
    targets = [r for r in rows if r["group"] in TARGET_GROUPS]
    s_t, m_t = np.array([r[name] for r in targets]), np.array([r["miou"] for r in targets])
    e = test + targets
    s_e, m_e = np.array([r[name] for r in e]), np.array([r["miou"] for r in e])
    rhos, aucs = [], []
    for _ in range(draws):
        i = rng.integers(0, len(s_t), len(s_t))
        rhos.append(spearman(s_t[i], m_t[i]))
        j = rng.integers(0, len(s_e), len(s_e))
        aucs.append(auroc(s_e[j], m_e[j] < results["fail_below"]))
    return {"rho_targets": np.nanpercentile(rhos, [2.5, 97.5]).tolist(),
            "auroc_targets": np.nanpercentile(aucs, [2.5, 97.5]).tolist()}


def analyse(args: argparse.Namespace) -> int:
    out_dir = args.out or args.data
    rows, names = _load_rows(out_dir)
    # Choose the best feature-based and output-based candidates on the dev set only, then combine them.
    pre = evaluate_candidates(rows, names)["candidates"]
    best = {fam: max((n for n in names if pre[n]["family"] == fam), key=lambda n: pre[n]["rho_dev"])
            for fam in ("feature", "output", "consistency")}
    combos = {"combo_feat+out": (best["feature"], best["output"]),
              "combo_feat+cons": (best["feature"], best["consistency"]),
              "combo_feat+out+cons": (best["feature"], best["output"], best["consistency"])}
    combos.update({f"combo_{a}+{b}": (a, b) for a, b in args.combo})
    names = add_combinations(rows, names, combos)
    results = evaluate_candidates(rows, names)
    results["combinations"] = combos
    results["best_dev"] = best
    cands = results["candidates"]
    base = max(BASELINES, key=lambda n: cands[n]["rho_dev"])
    order = sorted(names, key=lambda n: -cands[n]["rho_dev"])
    shown = order[:args.top] if args.top else order
    focus = list(dict.fromkeys([*order[:4], *args.focus, "maxprob_mean", *BASELINES]))
    results["bootstrap"] = {n: bootstrap(rows, n, results) for n in focus if n in cands}
    with open(os.path.join(out_dir, "analysis.json"), "w") as f:
        json.dump(results, f, indent=1)
    n_test = sum(r["group"] == "source_test" for r in rows)
    n_cal = sum(r["group"] == "source_calib" for r in rows)
    print(f"source mean frame mIoU {100 * results['source_mean']:.1f} (calibration + in-domain test frames); "
          f"failed below {100 * results['fail_below']:.1f}; frames: {n_cal} calibration, {n_test} in-domain test, "
          f"{results['counts']}; strongest baseline on dev: {base}")
    fails = [r for r in rows if r["group"] in TARGET_GROUPS and r["miou"] < results["fail_below"]]
    print(f"failed target frames: {len(fails)} of {results['counts']['targets']}")
    print("best on dev per family:", best)
    cols = ["rho_targets", "rho_dev", "rho_test", "rho_renders", "rho_corruptions", "auroc_targets", "auroc_test",
            "aurc_targets", "eaurc_targets"]
    print("\n| candidate | family | " + " | ".join(cols) + " | false alarms |")
    print("|---" * (len(cols) + 3) + "|")
    for n in shown:
        c = cands[n]
        fa = round(c["false_alarm"] * n_test)
        print(f"| `{n}` | {c['family']} | " + " | ".join(_fmt(c[k]) for k in cols)
              + f" | {100 * c['false_alarm']:.1f} % ({fa}/{n_test}) |")
    doms = results["domains"] + ["source"]
    print("\nSpearman rho within each domain (target frames of that domain, dev and test seeds; corruptions over their"
          " three strengths; source = the in-domain test frames). Last column: domains where the candidate's rho "
          "exceeds that of every baseline")
    print("\n| candidate | " + " | ".join(doms) + " | beats every baseline in |")
    print("|---" * (len(doms) + 2) + "|")
    for n in shown:
        c = cands[n]
        wins = sum(c[f"rho_in_{d}"] > max(cands[b][f"rho_in_{d}"] for b in BASELINES) for d in doms)
        print(f"| `{n}` | " + " | ".join(_fmt(c[f"rho_in_{d}"]) for d in doms) + f" | {wins}/{len(doms)} |")
    print("\n95 % bootstrap intervals over frames (1000 draws)\n\n| candidate | rho targets | AUROC |\n|---|---|---|")
    for n, b in results["bootstrap"].items():
        print(f"| `{n}` | {_fmt(cands[n]['rho_targets'])} [{_fmt(b['rho_targets'][0])}, {_fmt(b['rho_targets'][1])}]"
              f" | {_fmt(cands[n]['auroc_targets'])} [{_fmt(b['auroc_targets'][0])}, "
              f"{_fmt(b['auroc_targets'][1])}] |")
    shown_means = [n for n in focus if n in cands][:8]
    print("\nMean frame mIoU and mean score per domain\n\n| domain | frames | mIoU | "
          + " | ".join(f"`{n}`" for n in shown_means) + " |\n" + "|---" * (len(shown_means) + 3) + "|")
    for d in ["source"] + results["domains"]:
        sub = [r for r in rows if r["domain"] == d and r["group"] != "source_calib"]
        print(f"| {d} | {len(sub)} | {100 * np.mean([r['miou'] for r in sub]):.1f} | "
              + " | ".join(f"{np.mean([r[n] for r in sub]):.3f}" for n in shown_means) + " |")
    return 0


def ablate(args: argparse.Namespace) -> int:
    """The default score's design choices, from descriptors.npz (no network run): descriptor parts, the distance,
    and in-sample vs out-of-fold thresholds at several calibration sizes (false alarms on the in-domain test
    frames, averaged over random calibration subsets)."""
    out_dir = args.out or args.data
    d = np.load(os.path.join(out_dir, "descriptors.npz"))
    rows, _ = _load_rows(out_dir)
    groups = d["groups"]
    miou = np.array([r["miou"] for r in rows])
    cal, test = np.flatnonzero(groups == "source_calib"), np.flatnonzero(groups == "source_test")
    targets = np.flatnonzero(np.isin(groups, TARGET_GROUPS))
    fail_below = miou[np.r_[cal, test]].mean() - 0.10
    ev_idx = np.r_[test, targets]

    def report(name: str, x: torch.Tensor, fit: Callable, score: Callable) -> None:
        s = score(x, fit(x[cal])).numpy()
        th = np.quantile(M.out_of_fold_scores(x[cal], FOLDS, fit, score).numpy(), 0.05)
        print(f"| {name} | {spearman(s[targets], miou[targets]):.3f} | "
              f"{auroc(s[ev_idx], miou[ev_idx] < fail_below):.3f} | {100 * np.mean(s[test] < th):.1f} % |")

    def z_pooled(pool: Callable) -> Callable:
        return lambda x, st: -pool(((x - st["mean"]) / st["std"]).abs())

    print("Descriptor and distance (fitted on all calibration frames; threshold at the 5th percentile of their "
          "out-of-fold scores)\n\n| variant | rho targets | AUROC | false alarms |\n|---|---|---|---|")
    for feat in ("mf", "taps", "tap3", "tap0"):
        x = torch.from_numpy(d["stats_" + feat])
        half = x.shape[1] // 2
        parts = {"means+stds": slice(None)} if feat != "mf" else {"means+stds": slice(None), "means": slice(0, half),
                                                                   "stds": slice(half, None)}
        for part, sl in parts.items():
            xs = x[:, sl].contiguous()
            report(f"{feat} {part}, RMS z (diagonal)", xs, M.fit_frame_score,
                   M.frame_score)
            if feat == "mf" and part == "means+stds":
                report(f"{feat} {part}, mean abs z", xs, M.fit_diagonal, z_pooled(lambda z: z.mean(1)))
                report(f"{feat} {part}, max abs z", xs, M.fit_diagonal, z_pooled(lambda z: z.amax(1)))
                for shrink in (None, 0.5, 0.9):
                    label = "Ledoit-Wolf" if shrink is None else f"shrinkage {shrink}"
                    report(f"{feat} {part}, Mahalanobis ({label})", xs, lambda c, sh=shrink: M.fit_gaussian(c, sh),
                           lambda v, st: -M.mahalanobis(v, st))
    x = torch.from_numpy(d["stats_mf"])
    print("\nFalse alarms on the in-domain test frames vs calibration size, threshold at the 5th percentile of the "
          "calibration frames' in-sample or out-of-fold (5 folds) scores; mean over 50 random calibration subsets"
          "\n\n| calibration frames | in-sample | out-of-fold |\n|---|---|---|")
    for n in (20, 40, 60, 100):
        if n > len(cal):
            continue
        fa_in, fa_oof = [], []
        for rep in range(50 if n < len(cal) else 1):
            c = np.random.default_rng(rep).choice(cal, n, replace=False) if n < len(cal) else cal
            st = M.fit_frame_score(x[c])
            s_test = M.frame_score(x[test], st).numpy()
            fa_in.append(np.mean(s_test < np.quantile(M.frame_score(x[c], st).numpy(), 0.05)))
            fa_oof.append(np.mean(s_test < np.quantile(M.out_of_fold_scores(x[c]).numpy(), 0.05)))
        print(f"| {n} | {100 * np.mean(fa_in):.1f} % | {100 * np.mean(fa_oof):.1f} % |")
    return 0


# ================================================================================================ cost
def cost(args: argparse.Namespace) -> int:
    """Per-frame ms of a plain forward (the predictor's network pass and argmax) and of each candidate's extra work
    given that forward's outputs (batch 1, CPU, the checkpoint's precision)."""
    from vltseg_ros.precision import cpu_model

    torch.set_num_threads(args.threads)
    with open(os.path.join(args.data, "manifest.json")) as f:
        frames = [fr for fr in json.load(f)["frames"] if fr["group"] == "source_test"][:args.frames]
    net = Network(args.checkpoint, args.precision)
    k = net.num_classes
    out_dir = args.out or args.data
    with open(os.path.join(out_dir, "calibration_stats.json")) as f:
        cal = M.from_plain(json.load(f)["stats"])
    raws = [net.raw(_load(fr)[0]) for fr in frames]
    calib_out = net.outputs(raws[0])
    labels = calib_out["seg_scores"].argmax(1)
    tok = {n: M.gaussian_from_moments(M.moments(M.tokens(calib_out["features"][n])), 0.05) for n in TOKEN_FEATURES}
    cls = {n: M.class_gaussian_from_moments(M.class_moments(calib_out["features"][n], labels, k), 0.05, 1)
           for n in CLASS_FEATURES}

    def timed(fn: Callable, repeat: int = 3) -> float:
        times = []
        for raw in raws:
            for _ in range(repeat):
                t = time.perf_counter()
                fn(raw)
                times.append(time.perf_counter() - t)
        return 1000 * statistics.median(times)

    with torch.inference_mode():
        outs = [net.outputs(r) for r in raws]
        forward = timed(lambda r: net.outputs(r, mask_features=False)["seg_scores"].argmax(1), 2)
        hooked = timed(lambda r: net.outputs(r, mask_features=True)["seg_scores"].argmax(1), 2)
        o = outs[0]
        seg, feats = o["seg_scores"], o["features"]
        pred = seg.argmax(1)
        extra = {
            "fstat_mf_diag (default)": lambda: M.frame_score(M.frame_descriptor(o), cal["mf_diag"]),
            "maxprob_mean": lambda: M.pool_mean(M.max_probability_map(seg)),
            "maxprob_p10": lambda: M.pool_quantile(M.max_probability_map(seg), 0.1),
            "entropy_mean": lambda: M.pool_mean(M.entropy_confidence_map(seg)),
            "entropy_grid": lambda: M.pool_grid_worst(M.entropy_confidence_map(seg)),
            "rba_mean": lambda: M.pool_mean(M.rba_confidence_map(seg)),
            "rba_p10": lambda: M.pool_quantile(M.rba_confidence_map(seg), 0.1),
            "fstat_taps_maha": lambda: M.mahalanobis(M.channel_statistics([feats[f"tap{i}"] for i in range(4)]),
                                                     cal["taps"]),
            "fstat_tap3_maha": lambda: M.mahalanobis(M.channel_statistics([feats["tap3"]]), cal["tap3"]),
            "fstat_mf_maha": lambda: M.mahalanobis(M.channel_statistics([feats["mf"]]), cal["mf"]),
            "tok_tap3_mean": lambda: M.pool_mean(M.token_mahalanobis_map(feats["tap3"], tok["tap3"])),
            "tok_mf_mean": lambda: M.pool_mean(M.token_mahalanobis_map(feats["mf"], tok["mf"])),
            "cls_mf_mean": lambda: M.pool_mean(M.class_mahalanobis_map(feats["mf"], cls["mf"])),
            "cls_tap3_mean": lambda: M.pool_mean(M.class_mahalanobis_map(feats["tap3"], cls["tap3"])),
            "hist_skl": lambda: M.histogram_distance(M.class_histogram(pred, k), cal["hist_mean"]),
            "img_all_diag": lambda: M.diagonal_distance(M.image_statistics(raws[0]), cal["img_all_diag"]),
        }
        costs = {}
        for name, fn in extra.items():
            times = []
            for _ in range(20):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            costs[name] = 1000 * statistics.median(times)
        costs["flip_* (second forward + compare)"] = timed(
            lambda r: M.label_map_miou(pred, net.outputs(r, mask_features=False, flip=True)["seg_scores"].argmax(1),
                                       k), 2)
        costs["scale_* (0.75x forward + compare)"] = timed(
            lambda r: M.label_map_miou(pred, net.outputs(r, mask_features=False, scale=0.75)["seg_scores"].argmax(1),
                                       k), 2)
    result = {"cpu": cpu_model(), "threads": args.threads, "precision": net.precision, "frames": len(raws),
              "forward_ms": forward, "forward_with_hook_ms": hooked, "extra_ms": costs}
    with open(os.path.join(out_dir, "cost.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(f"CPU {result['cpu']}, {args.threads} thread(s), {net.precision}, batch 1, {SIZE[0]}x{SIZE[1]}, "
          f"median of {len(raws)} frames")
    print(f"plain forward (network + argmax): {forward:.1f} ms; with the pixel-decoder hook: {hooked:.1f} ms")
    print("| candidate | extra ms/frame | % of the forward |\n|---|---|---|")
    for name, ms in costs.items():
        print(f"| `{name}` | {ms:.2f} | {100 * ms / forward:.1f} % |")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="render the held-out frames and the corruptions")
    p.add_argument("--data", required=True)
    p.add_argument("--workers", type=int, default=2)
    for name in ("score", "cost"):
        p = sub.add_parser(name)
        p.add_argument("--data", required=True)
        p.add_argument("--out", help="where the results go (default: --data)")
        p.add_argument("--checkpoint", required=True)
        p.add_argument("--precision", default="auto")
        p.add_argument("--threads", type=int, default=2)
        if name == "score":
            p.add_argument("--shrinkage", type=float, default=0.05, help="token Gaussians' covariance shrinkage")
            p.add_argument("--limit", type=int, default=0, help="frames per group (0 = all; for a smoke run)")
        else:
            p.add_argument("--frames", type=int, default=8)
    p = sub.add_parser("ablate")
    p.add_argument("--data", required=True)
    p.add_argument("--out", help="where score wrote its results (default: --data)")
    p = sub.add_parser("analyse")
    p.add_argument("--data", required=True)
    p.add_argument("--out", help="where score wrote its results (default: --data)")
    p.add_argument("--focus", nargs="*", default=[], help="candidates for the bootstrap and per-domain tables")
    p.add_argument("--top", type=int, default=0, help="rows in the tables (0 = all)")
    p.add_argument("--combo", nargs=2, action="append", default=[], metavar=("A", "B"),
                   help="an extra z-averaged pair of candidates")
    args = parser.parse_args(argv)
    return {"prepare": prepare, "score": score, "analyse": analyse, "ablate": ablate, "cost": cost}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
