"""Train a VLTSeg/VLTDet checkpoint (the paper's recipe by default), on one device or many through torchrun.

    vltseg train --config training/configs/synth_tiny.yaml
    torchrun --nproc_per_node 2 -m vltseg_train.train --config training/configs/gta5_eva02_l14.yaml \\
        --set data.train.root=/data/gta5

Resumable: every ``checkpoint_interval`` iterations the run directory gets an atomic checkpoint with the weights,
optimiser state, schedule position, RNG state and data position; ``--resume`` (the default when the run
directory has one) continues exactly where it stopped, so a killed run loses at most one interval.
Determinism: augmentation randomness comes from (seed, stream position), not from worker processes, and the data
order from (seed, epoch), so the sample stream does not depend on the number of workers or on restarts.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import re
import sys
import time
from contextlib import nullcontext
from statistics import median_high
from typing import Callable, Iterator, Optional

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader, Dataset, Sampler

from vltseg_ros.checkpoint import CheckpointMeta, load_checkpoint, load_extra, read_meta, save_checkpoint
from vltseg_ros.config import (
    ConfigError, ModelConfig, model_config_from_dict, model_preset, to_dict,
)
from vltseg_ros.model import VLTSeg, build_model, load_pretrained
from vltseg_ros.precision import autocast, describe_device, device_line, resolve_precision

from .config import TrainConfig, deep_merge, load_config
from .config import to_dict as config_to_dict
from .datasets import build_dataset
from .distributed import Dist, torchrun_main
from .transforms import TrainTransform, collate

logger = logging.getLogger("vltseg.train")
CHECKPOINT_RE = re.compile(r"^ckpt_(\d+)\.safetensors$")


# -------------------------------------------------------------------------------------------------------- data
class StreamSampler(Sampler):
    """Infinite sample stream: position p -> (index into the dataset, p). The order is a fresh permutation per
    epoch, seeded by (seed, epoch); rank r of w takes, per micro-step s, positions s*w*b + r*b ... + b - 1."""

    def __init__(self, size: int, seed: int, rank: int, world: int, batch: int, start_step: int = 0):
        self.size, self.seed, self.rank, self.world, self.batch = size, seed, rank, world, batch
        self.start_step = start_step
        self._epoch, self._perm = -1, np.arange(size)

    def _index(self, position: int) -> int:
        epoch = position // self.size
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.size)
        return int(self._perm[position % self.size])

    def __iter__(self) -> Iterator[tuple[int, int]]:
        step = self.start_step
        while True:
            base = step * self.world * self.batch + self.rank * self.batch
            for position in range(base, base + self.batch):
                yield self._index(position), position
            step += 1


class AugmentedStream(Dataset):
    """Dataset keyed by (index, stream position): augmentation RNG = (seed, position), independent of workers."""

    def __init__(self, dataset: Dataset, transform: TrainTransform, seed: int):
        self.dataset, self.transform, self.seed = dataset, transform, seed

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, position = key
        return self.transform(self.dataset[index], rng=np.random.default_rng([self.seed, 1, position]))

    def __len__(self) -> int:
        return len(self.dataset)


def det_class_indices(model_cfg: ModelConfig) -> Optional[torch.Tensor]:
    """LUT: dataset box trainId -> 0-based detection class index (-1 = not a detection class)."""
    if model_cfg.det_head is None:
        return None
    lut = torch.full((256,), -1, dtype=torch.int64)
    for i, name in enumerate(model_cfg.det_head.classes):
        if name in model_cfg.classes:
            lut[model_cfg.classes.index(name)] = i
    return lut


# ------------------------------------------------------------------------------------------------------- model
def build_model_config(cfg: TrainConfig) -> ModelConfig:
    """The ModelConfig for a run: preset + heads + overrides + drop path. With ``model.init_checkpoint`` the
    checkpoint's own network takes the preset's place (an imported reference checkpoint has compatibility fields
    and sizes no preset has), and its heads must be the ones the run asks for."""
    spec = cfg.model
    if spec.init_checkpoint:
        data = to_dict(read_meta(spec.init_checkpoint).model)
        heads = sorted(name for name in ("seg", "det") if data.get(f"{name}_head") is not None)
        if heads != sorted(spec.heads):
            raise ConfigError(f"model.init_checkpoint {spec.init_checkpoint} has heads {heads}; the run asks for "
                              f"{sorted(spec.heads)} (model.heads)")
    else:
        data = to_dict(model_preset(spec.preset, tuple(spec.heads)))
    deep_merge(data, spec.overrides)
    if spec.drop_path_rate is not None:
        data["encoder"]["drop_path_rate"] = spec.drop_path_rate
    return model_config_from_dict(data)


def _encoder_depth_index(name: str, depth: int) -> Optional[int]:
    """Layer index for layer-wise lr decay: 0 = embeddings, i+1 = block i, depth+1 = pyramid; None = head."""
    if name.startswith("pyramid."):
        return depth + 1
    if not name.startswith("encoder."):
        return None
    match = re.match(r"encoder\.trunk\.blocks\.(\d+)\.", name)
    return int(match.group(1)) + 1 if match else 0


def build_optimizer(model: VLTSeg, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with per-group lr multipliers (encoder x0.1, optional layer decay) and no decay on norms/embeddings."""
    o = cfg.optim
    depth = len(model.encoder.trunk.blocks)
    groups_by_name = model.parameter_groups()
    no_decay = set(groups_by_name["no_decay"])
    frozen = _frozen_prefixes(o.freeze_blocks)
    groups: dict[tuple[float, float, bool], dict] = {}
    for name, param in model.named_parameters():
        if any(name.startswith(p) for p in frozen):
            param.requires_grad_(False)
        if not param.requires_grad:
            continue
        layer = _encoder_depth_index(name, depth)
        if layer is None:
            mult = 1.0
        else:
            mult = o.encoder_lr_mult * o.layer_decay ** (depth + 1 - layer)
        decay = 0.0 if name in no_decay else o.weight_decay
        key = (mult, decay, layer is not None)
        group = groups.setdefault(key, {"params": [], "lr_mult": mult, "weight_decay": decay,
                                        "is_encoder": layer is not None, "lr": o.lr * mult})
        group["params"].append(param)
    ordered = [groups[k] for k in sorted(groups)]
    return torch.optim.AdamW(ordered, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)


def _frozen_prefixes(blocks: int) -> list[str]:
    if blocks <= 0:
        return []
    return ["encoder.trunk.patch_embed.", "encoder.trunk.pos_embed", "encoder.trunk.cls_token"] + [
        f"encoder.trunk.blocks.{i}." for i in range(blocks)]


def learning_rate(iteration: int, cfg: TrainConfig) -> float:
    """Base lr at an iteration: constant before ``poly_begin``, then poly(power) decay to 0 at the end."""
    o, total = cfg.optim, cfg.schedule.iterations
    if iteration < o.poly_begin or total <= o.poly_begin:
        return o.lr
    progress = (iteration - o.poly_begin) / (total - o.poly_begin)
    return o.lr * max(0.0, 1.0 - progress) ** o.poly_power


def set_learning_rates(optimizer: torch.optim.Optimizer, iteration: int, cfg: TrainConfig) -> float:
    """Apply the schedule (and the frozen warm-up, which zeroes encoder lrs); returns the base lr."""
    base = learning_rate(iteration, cfg)
    warmup = iteration < cfg.optim.frozen_warmup_iters
    for group in optimizer.param_groups:
        group["lr"] = 0.0 if (warmup and group["is_encoder"]) else base * group["lr_mult"]
    return base


# -------------------------------------------------------------------------------------------------- checkpoints
def training_state(optimizer: torch.optim.Optimizer, device: torch.device) -> tuple[dict, dict[str, torch.Tensor]]:
    """(JSON part, tensor part) of the optimiser and RNG state."""
    state = optimizer.state_dict()
    tensors = {f"optim/{pid}/{key}": value for pid, entry in state["state"].items() for key, value in entry.items()
               if isinstance(value, torch.Tensor)}
    tensors["rng/torch"] = torch.get_rng_state()
    if device.type == "cuda":
        tensors["rng/cuda"] = torch.cuda.get_rng_state(device)
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in state["param_groups"]]
    return {"param_groups": groups}, tensors


def restore_training_state(optimizer: torch.optim.Optimizer, json_state: dict, tensors: dict[str, torch.Tensor],
                           device: torch.device) -> None:
    """Inverse of ``training_state``."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, pid, name = key.split("/", 2)
            state.setdefault(int(pid), {})[name] = value.to(device) if name != "step" else value
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in json_state["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    torch.set_rng_state(tensors["rng/torch"])
    if "rng/cuda" in tensors and device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng/cuda"], device)


def latest_checkpoint(output_dir: str) -> Optional[str]:
    """The newest complete ``ckpt_*.safetensors`` in a run directory (temp files of a killed write are ignored)."""
    if not os.path.isdir(output_dir):
        return None
    found = sorted((int(m.group(1)), f) for f in os.listdir(output_dir) if (m := CHECKPOINT_RE.match(f)))
    for _, name in reversed(found):
        path = os.path.join(output_dir, name)
        try:
            read_meta(path)
            return path
        except Exception as exc:  # a damaged file: fall back to the previous one
            logger.warning("ignoring unreadable checkpoint %s: %s", path, exc)
    return None


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 over all parameters and buffers (to compare replicas across ranks)."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        # reshape(-1): 0-d tensors (BatchNorm's num_batches_tracked) cannot be viewed as bytes directly.
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------------- run
class Trainer:
    """One training run (any rank)."""

    def __init__(self, cfg: TrainConfig, device: str = "auto", resume: Optional[str] = "auto",
                 progress: bool = True, max_iterations: Optional[int] = None):
        self.cfg = cfg
        self.dist = Dist(device)
        self.device = self.dist.device
        self.precision = resolve_precision(cfg.precision, self.device)
        self.machine = describe_device(self.device)
        self.progress = progress and self.dist.main
        self.stop_at = max_iterations
        self.model_cfg = build_model_config(cfg)
        torch.manual_seed(cfg.seed)
        self.model = self._build_model()
        self.optimizer = build_optimizer(self.model, cfg)
        self.iteration = 0
        self.best: Optional[float] = None
        self.history: list[dict] = []
        path = latest_checkpoint(cfg.output_dir) if resume == "auto" else resume
        if path:
            self._resume(path)
        self.ddp = self._wrap(self.model)
        self.det_lut = det_class_indices(self.model_cfg)
        world, accum = self.dist.world, cfg.schedule.accum_steps
        if cfg.schedule.batch_size % (world * accum):
            raise ConfigError(f"schedule.batch_size {cfg.schedule.batch_size} is not divisible by "
                              f"world size {world} x accum_steps {accum}")
        self.per_rank_batch = cfg.schedule.batch_size // (world * accum)
        self.writer = None
        # Optional time budget: (perf_counter deadline, fewest iterations, most iterations). Every ``replan_every``
        # steps, until 80 % of the current plan, schedule.iterations (and with it the poly lr) is re-sized to the
        # steps that fit before the deadline at the median of the recent step times. The demo uses it: its steps
        # run twice as fast once the val splits it renders in the background are written.
        self.deadline: Optional[tuple[float, int, int]] = None
        self.replan_every = 20
        self.step_times: list[float] = []
        # Called with the trainer after every optimiser step (the demo's thread governor uses it).
        self.step_hooks: list[Callable[["Trainer"], None]] = []

    def _build_model(self) -> VLTSeg:
        spec = self.cfg.model
        if spec.init_checkpoint:
            model, meta = load_checkpoint(spec.init_checkpoint)
            if meta.model.classes != self.model_cfg.classes:
                raise ConfigError(f"model.init_checkpoint {spec.init_checkpoint} has other classes")
            fresh = build_model(self.model_cfg, meta.normalization)
            fresh.load_state_dict(model.state_dict(), strict=True)
            model = fresh
        else:
            model = build_model(self.model_cfg)
            if spec.pretrained:
                load_pretrained(model.encoder, spec.pretrained)
        if self.dist.world > 1 and self.device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model.to(self.device)

    def _wrap(self, model: VLTSeg) -> torch.nn.Module:
        if self.dist.world == 1:
            return model
        # Every trainable parameter takes part in every step (the encoder freezes what its taps do not reach), so
        # DDP needs no unused-parameter search.
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def _resume(self, path: str) -> None:
        model, meta = load_checkpoint(path)
        self.model.load_state_dict(model.state_dict(), strict=True)
        state = meta.provenance.get("training_state")
        if state is None:
            raise ConfigError(f"{path} holds no training state (it is an exported model, not a run checkpoint)")
        restore_training_state(self.optimizer, state, load_extra(path), self.device)
        self.iteration = int(state["iteration"])
        self.best = state.get("best")
        self.history = list(state.get("history", []))
        if self.dist.main:
            logger.info("resumed from %s at iteration %d", path, self.iteration)

    # ---------------------------------------------------------------------------------------------- data
    def _loader(self) -> Iterator[dict]:
        d = self.cfg.data
        dataset = build_dataset(d.train.name, d.train.root, d.train.split, **d.train.options)
        self.train_dataset = dataset
        transform = TrainTransform(tuple(d.crop_size), tuple(d.resize) if d.resize else None, d.cat_max_ratio,
                                   d.flip_prob, d.photometric)
        sampler = StreamSampler(len(dataset), self.cfg.seed, self.dist.rank, self.dist.world, self.per_rank_batch,
                                start_step=self.iteration * self.cfg.schedule.accum_steps)
        loader = DataLoader(
            AugmentedStream(dataset, transform, self.cfg.seed), batch_size=self.per_rank_batch, sampler=sampler,
            num_workers=d.workers, collate_fn=collate, pin_memory=self.device.type == "cuda",
            persistent_workers=d.workers > 0, generator=torch.Generator(),  # keeps the global RNG untouched
        )
        return iter(loader)

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.normalize(images.to(self.device, non_blocking=True))

    def _targets(self, batch: dict) -> tuple[Optional[torch.Tensor], Optional[list[dict]]]:
        seg = batch["label"].to(self.device, non_blocking=True) if self.model.seg_head is not None else None
        det = None
        if self.det_lut is not None:
            det = []
            for boxes, labels in zip(batch["boxes"], batch["box_labels"]):
                idx = self.det_lut[labels]
                keep = idx >= 0
                det.append({"boxes": boxes[keep].to(self.device), "labels": idx[keep].to(self.device)})
        return seg, det

    # ---------------------------------------------------------------------------------------------- loop
    def train(self) -> dict:
        """Run to ``schedule.iterations`` (or ``max_iterations``); returns the final summary."""
        cfg, s = self.cfg, self.cfg.schedule
        if self.dist.main:
            os.makedirs(cfg.output_dir, exist_ok=True)
            with open(os.path.join(cfg.output_dir, "config.yaml"), "w", encoding="utf-8") as f:
                yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False)
            self.writer = _tensorboard(cfg.output_dir)
            print(f"precision: {cfg.precision} -> {self.precision} on {device_line(self.machine)}", flush=True)
        batches = self._loader()
        end = s.iterations if self.stop_at is None else min(s.iterations, self.stop_at)
        bar = _progress(self.iteration, s.iterations, self.progress)
        self.model.train()
        started, images_seen = time.perf_counter(), 0
        self.step_times = []  # seconds of each optimiser step of this call, data wait included
        stepped = started
        while self.iteration < end:
            lr = set_learning_rates(self.optimizer, self.iteration, cfg)
            self.optimizer.zero_grad(set_to_none=True)
            totals: dict[str, float] = {}
            for micro in range(s.accum_steps):
                batch = next(batches)
                images = self._normalise(batch["image"])
                seg, det = self._targets(batch)
                sync = nullcontext() if (micro == s.accum_steps - 1 or self.dist.world == 1) else self.ddp.no_sync()
                with sync:
                    with autocast(self.precision, self.device):
                        losses = self.ddp(images, seg_targets=seg, det_targets=det)
                    loss = sum(losses.values()) / s.accum_steps
                    loss.backward()
                for key, value in losses.items():
                    totals[key] = totals.get(key, 0.0) + float(value.detach()) / s.accum_steps
                images_seen += images.shape[0] * self.dist.world
            if cfg.optim.grad_clip > 0:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(
                    [p for p in self.model.parameters() if p.requires_grad], cfg.optim.grad_clip))
            else:
                grad_norm = float("nan")
            self.optimizer.step()
            self.iteration += 1
            now = time.perf_counter()
            self.step_times.append(now - stepped)
            stepped = now
            for hook in self.step_hooks:
                hook(self)
            if self.deadline is not None and self.stop_at is None and self.iteration % self.replan_every == 0:
                end = self._replan(end, now)
                if bar is not None:
                    bar.total = end
            total = sum(totals.values())
            if not math.isfinite(total):
                raise FloatingPointError(f"loss became {total} at iteration {self.iteration}")
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{total:.3f}", lr=f"{lr:.2e}")
            if self.writer is not None and self.iteration % s.log_interval == 0:
                self.writer.add_scalar("train/loss", total, self.iteration)
                self.writer.add_scalar("train/lr", lr, self.iteration)
                self.writer.add_scalar("train/grad_norm", grad_norm, self.iteration)
                elapsed = time.perf_counter() - started
                self.writer.add_scalar("train/images_per_s", images_seen / max(elapsed, 1e-9), self.iteration)
                for key, value in totals.items():
                    if not key[-1].isdigit():  # deep-supervision terms would flood the board
                        self.writer.add_scalar(f"train/{key}", value, self.iteration)
            if self.writer is not None and s.image_log_interval and self.iteration % s.image_log_interval == 0:
                self._log_sample_image(batch)
            if s.eval_interval and self.iteration % s.eval_interval == 0 and self.iteration < end:
                self._evaluate_and_checkpoint()
            elif self.iteration % s.checkpoint_interval == 0 and self.iteration < end:
                self._checkpoint()
        if bar is not None:
            bar.close()
        summary = self._finish(end)
        self.dist.close()
        return summary

    def _replan(self, end: int, now: float) -> int:
        """The new last iteration under ``deadline`` (see __init__); ``end`` once 80 % of it is done, and always in a
        distributed run (ranks timing their own steps could disagree and leave one waiting in a collective)."""
        if self.iteration >= 0.8 * end or self.dist.world > 1:
            return end
        deadline, fewest, most = self.deadline
        step = median_high(self.step_times[-self.replan_every:])
        planned = self.iteration + int(max(0.0, deadline - now) / max(step, 1e-9))
        end = max(self.iteration + 1, min(most, max(fewest, planned)))
        self.cfg.schedule.iterations = end
        return end

    def _finish(self, end: int) -> dict:
        if end == self.cfg.schedule.iterations and self.cfg.schedule.eval_interval:
            self._evaluate_and_checkpoint()
        else:
            self._checkpoint()
        digests = self.dist.gather(weights_digest(self.model))
        summary = {"iteration": self.iteration, "best": self.best, "rank_digests": digests,
                   "history": self.history}
        if self.dist.main:
            final = os.path.join(self.cfg.output_dir, "final.safetensors")
            save_checkpoint(final, self.model, self._meta({"final": True, "rank_digests": digests,
                                                           "evaluations": self.history}))
            with open(os.path.join(self.cfg.output_dir, "summary.json"), "w", encoding="utf-8") as f:
                json.dump(summary, f, indent=1)
            if self.writer is not None:
                self.writer.close()
            summary["final"] = final
        self.dist.barrier()
        return summary

    def _meta(self, provenance: dict) -> CheckpointMeta:
        return CheckpointMeta(
            model=self.model_cfg, normalization=self.model.normalization, inference=self.cfg.inference,
            provenance={"created_by": "vltseg train", "run": self.cfg.name, "iteration": self.iteration,
                        "dataset": self.cfg.data.train.title, "pretrained": self.cfg.model.pretrained,
                        "world_size": self.dist.world, "trained": True, "precision": self.precision,
                        "machine": self.machine,
                        "config": config_to_dict(self.cfg), **provenance},
        )

    def _checkpoint(self) -> None:
        if self.dist.main:
            json_state, tensors = training_state(self.optimizer, self.device)
            json_state.update(iteration=self.iteration, best=self.best, history=self.history)
            path = os.path.join(self.cfg.output_dir, f"ckpt_{self.iteration:07d}.safetensors")
            save_checkpoint(path, self.model, self._meta({"training_state": json_state}), extra=tensors)
            self._prune()
        self.dist.barrier()

    def _prune(self) -> None:
        found = sorted((int(m.group(1)), f) for f in os.listdir(self.cfg.output_dir)
                       if (m := CHECKPOINT_RE.match(f)))
        for _, name in found[: -self.cfg.schedule.keep_last]:
            os.unlink(os.path.join(self.cfg.output_dir, name))

    def _evaluate_and_checkpoint(self) -> None:
        """Score the selection set and every val set, each sharded over all ranks (no rank idles at a barrier for a
        whole validation pass); rank 0 records the scores and, when the selection set improved, writes
        best.safetensors. Then checkpoint."""
        d = self.cfg.data
        titles: dict[tuple, list[str]] = {}  # one evaluation per distinct set, reported under each of its names
        specs = {}
        for spec in ([d.select] if d.select else []) + d.val:
            key = (spec.name, spec.root, spec.split, repr(spec.options))
            specs.setdefault(key, spec)
            titles.setdefault(key, []).append(spec.title)
        if specs:
            from .evaluate import evaluate_dataset

            self.model.eval()
            results = {}
            for key, spec in specs.items():
                dataset = build_dataset(spec.name, spec.root, spec.split, **spec.options)
                result = evaluate_dataset(self.model, self._meta({}), dataset, self.device, self.precision,
                                          limit=d.val_limit, shard=self.dist.shard)
                if result is not None:
                    for title in titles[key]:
                        results[title] = {"mIoU": result["segmentation"]["mIoU"] if "segmentation" in result else None,
                                          "AP": result["detection"]["AP"] if "detection" in result else None}
            self.model.train()
            if self.dist.main:
                self._record_evaluation(results)
        self._checkpoint()

    def _record_evaluation(self, results: dict[str, dict]) -> None:
        """Log one evaluation; keep best.safetensors for the best score on the held-out source split."""
        self.history.append({"iteration": self.iteration, "results": results})
        print(_summary_line(self.iteration, results), flush=True)
        for title, scores in results.items():
            for metric, value in scores.items():
                if value is not None and self.writer is not None:
                    self.writer.add_scalar(f"val/{title}/{metric}", value, self.iteration)
        select = self.cfg.data.select
        if select is None:
            return
        scores = results[select.title]
        metric = "mIoU" if scores["mIoU"] is not None else "AP"
        if scores[metric] is not None and (self.best is None or scores[metric] > self.best):
            self.best = scores[metric]
            selection = {"dataset": select.title, "metric": metric, "value": self.best, "iteration": self.iteration}
            save_checkpoint(os.path.join(self.cfg.output_dir, "best.safetensors"), self.model,
                            self._meta({"selection": selection, "evaluation": results}))

    def _log_sample_image(self, batch: dict) -> None:
        from vltseg_ros.visualize import colorize

        self.model.eval()
        with torch.no_grad():
            image = self._normalise(batch["image"][:1])
            out = self.model(image)
        self.model.train()
        palette = np.array(self.model_cfg.palette, dtype=np.uint8)
        rgb = batch["image"][0].permute(1, 2, 0).clamp(0, 255).byte().numpy()
        panels = [rgb, colorize(batch["label"][0].byte().numpy(), palette)]
        if "seg_scores" in out:
            panels.append(colorize(out["seg_scores"][0].argmax(0).byte().cpu().numpy(), palette))
        self.writer.add_image("train/sample", np.concatenate(panels, axis=1), self.iteration, dataformats="HWC")


def _summary_line(iteration: int, results: dict) -> str:
    parts = []
    for name, r in results.items():
        text = ", ".join(f"{k} {100 * v:.1f}" for k, v in r.items() if v is not None)
        parts.append(f"{name}: {text}")
    return f"[eval @ {iteration}] " + " | ".join(parts)


def _tensorboard(output_dir: str):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.warning("tensorboard is not installed: no TensorBoard logs")
        return None
    return SummaryWriter(os.path.join(output_dir, "tb"))


def _progress(start: int, total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc="train", dynamic_ncols=True, mininterval=1.0)


# --------------------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``vltseg train`` options."""
    parser.add_argument("--config", required=True, help="YAML file (see training/configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=2e-4 (repeatable)")
    parser.add_argument("--device", default="auto", help="auto (cuda:LOCAL_RANK if available), cpu, cuda:N")
    parser.add_argument("--resume", default="auto",
                        help="auto: newest checkpoint in output_dir if any; a path; or 'none' to start fresh")
    parser.add_argument("--max-iterations", dest="max_iterations", type=int,
                        help="stop (with a checkpoint) after this iteration; the schedule still spans all iterations")
    parser.add_argument("--no-progress", dest="progress", action="store_false")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``vltseg train``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config, args.overrides)
    resume = None if args.resume == "none" else args.resume
    summary = Trainer(cfg, device=args.device, resume=resume, progress=args.progress,
                      max_iterations=args.max_iterations).train()
    if "final" in summary:
        best = f"; best.safetensors selected on {cfg.data.select.title}: {summary['best']}" if cfg.data.select else ""
        print(f"wrote {summary['final']} (iteration {summary['iteration']}{best})")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m vltseg_train.train`` (what torchrun launches)."""
    return torchrun_main("vltseg_train.train", __doc__, add_arguments, run, argv, (ConfigError,))


if __name__ == "__main__":
    sys.exit(main())
