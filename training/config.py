"""Training configuration: YAML files in ``training/configs/`` plus ``--set key=value`` overrides, validated once.

Defaults are the paper's recipe (docs/design.md#method): AdamW lr 1e-4 with the encoder at x0.1, weight decay 0.05 (none on
norms, biases, position embedding, queries and level embeddings), global-norm gradient clipping at 0.01, poly(0.9)
decay after 500 constant iterations, drop path 0.2, bf16 autocast (``precision: auto`` picks it where the device
runs bf16 natively, fp32 elsewhere). ``final.safetensors`` is the run's result; a ``best.safetensors`` is chosen only
on a held-out split of the source (``data.select``), never on a target.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml

from vltseg_ros.config import ConfigError, InferenceConfig, TTAConfig, from_dict, validate_inference_config
from vltseg_ros.precision import PRECISIONS


@dataclass
class DatasetSpec:
    """One dataset split: a reader name from ``vltseg_train.datasets.DATASETS``, its root and split, and options."""

    name: str = "cityscapes"
    root: str = ""
    split: str = "train"
    label: str = ""  # display name in reports; defaults to name/split
    options: dict[str, Any] = field(default_factory=dict)  # extra reader kwargs (e.g. conditions, mapping)

    @property
    def title(self) -> str:
        """Display name."""
        return self.label or f"{self.name}/{self.split}"


@dataclass
class ModelSpec:
    """The network: a preset (encoder name), heads, optional config overrides and pretrained encoder weights."""

    preset: str = "eva02_l14"
    heads: list[str] = field(default_factory=lambda: ["seg"])
    drop_path_rate: Optional[float] = None  # None = the preset's (0.2)
    overrides: dict[str, Any] = field(default_factory=dict)  # nested ModelConfig fields, e.g. {seg_head: {...}}
    pretrained: Optional[str] = None  # local file or open_clip tag (see vltseg checkpoint new --pretrained)
    init_checkpoint: Optional[str] = None  # start from a vltseg checkpoint (e.g. the Mapillary-then-CS schedule)


@dataclass
class DataSpec:
    """Training and validation data and the augmentation pipeline."""

    train: DatasetSpec = field(default_factory=DatasetSpec)
    # Evaluated at every eval_interval and reported; never used to choose a checkpoint (they are the targets).
    val: list[DatasetSpec] = field(default_factory=list)
    # A held-out split of the source (same reader and root as train, another split): when given, its best score
    # (mIoU, or box AP without a segmentation head) selects best.safetensors. None = only final.safetensors.
    select: Optional[DatasetSpec] = None
    resize: Optional[list[int]] = None  # [W, H] exact resize before cropping (GTA5: [1280, 720]); None = keep
    crop_size: list[int] = field(default_factory=lambda: [512, 512])  # [H, W]
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = True
    workers: int = 4
    val_limit: int = 0  # evaluate at most this many images per val set during training (0 = all)


@dataclass
class OptimSpec:
    """Optimiser and learning-rate schedule."""

    lr: float = 1e-4
    encoder_lr_mult: float = 0.1
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    grad_clip: float = 0.01  # global L2 norm; 0 = off
    poly_power: float = 0.9
    poly_begin: int = 500  # constant lr before this iteration (mmengine PolyLR begin=500)
    layer_decay: float = 1.0  # layer-wise lr decay over encoder blocks (1.0 = off, the paper's setting)
    freeze_blocks: int = 0  # freeze the first N encoder blocks (+ patch embedding) for the whole run
    frozen_warmup_iters: int = 0  # train with the whole encoder frozen for this many iterations first


@dataclass
class ScheduleSpec:
    """Iterations, batch, checkpointing, evaluation and logging intervals."""

    iterations: int = 5000
    batch_size: int = 16  # global batch per optimiser step (all GPUs x accumulation)
    accum_steps: int = 1
    checkpoint_interval: int = 500
    keep_last: int = 3
    eval_interval: int = 1000
    log_interval: int = 20
    image_log_interval: int = 500


@dataclass
class TrainConfig:
    """Everything a training run needs."""

    name: str = "run"
    output_dir: str = "runs/run"
    seed: int = 0
    precision: str = "auto"  # auto: bf16 where the device runs it natively, else fp32 (vltseg_ros.precision)
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    optim: OptimSpec = field(default_factory=OptimSpec)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    test_tta: Optional[TTAConfig] = None  # test-server runs: the TTA `vltseg eval --tta` applies to this run


def config_from_dict(data: dict) -> TrainConfig:
    """Build and validate a TrainConfig from nested dicts (YAML)."""
    cfg = from_dict(TrainConfig, data, "config")
    validate(cfg)
    return cfg


def load_config(path: str, overrides: Optional[list[str]] = None) -> TrainConfig:
    """Read a YAML config (``base: other.yaml`` inherits, relative to the file) and apply ``key=value`` overrides."""
    data = _read_yaml(path)
    for item in overrides or []:
        apply_override(data, item)
    return config_from_dict(data)


def _read_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    base = data.pop("base", None)
    if base:
        merged = _read_yaml(os.path.join(os.path.dirname(path), base))
        deep_merge(merged, data)
        data = merged
    return data


def deep_merge(into: dict, update: dict) -> None:
    """Merge nested dicts in place: mappings merge key by key, anything else replaces."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            deep_merge(into[key], value)
        else:
            into[key] = value


def apply_override(data: dict, item: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) to nested dicts in place; a number indexes a list
    (``data.val.0.root=/data/cityscapes``)."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, text = item.split("=", 1)
    parts = key.strip().split(".")
    node: Any = data
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {key}: {part!r} is not an index of the {len(node)}-item list "
                                  f"{'.'.join(parts[:depth])}")
            index: Any = int(part)
        elif isinstance(node, dict):
            index = part
            if not last:
                node.setdefault(part, {})
        else:
            raise ConfigError(f"--set {key}: {'.'.join(parts[:depth])} is neither a mapping nor a list")
        if last:
            node[index] = yaml.safe_load(text)
        else:
            node = node[index]


def to_dict(cfg: TrainConfig) -> dict:
    """Plain-data form (for checkpoints' provenance and the run directory's config.yaml)."""
    return dataclasses.asdict(cfg)


def validate(cfg: TrainConfig) -> None:
    """Raise ConfigError for values that cannot work."""
    if cfg.precision not in PRECISIONS:
        raise ConfigError(f"precision: one of {list(PRECISIONS)}, got {cfg.precision!r}")
    s = cfg.schedule
    if s.iterations < 1 or s.batch_size < 1 or s.accum_steps < 1:
        raise ConfigError("schedule: iterations, batch_size and accum_steps must be >= 1")
    if s.checkpoint_interval < 1 or s.eval_interval < 0 or s.keep_last < 1:
        raise ConfigError("schedule: checkpoint_interval >= 1, eval_interval >= 0, keep_last >= 1")
    if len(cfg.data.crop_size) != 2 or min(cfg.data.crop_size) < 16:
        raise ConfigError(f"data.crop_size: [H, W] of at least 16, got {cfg.data.crop_size}")
    if cfg.data.resize is not None and len(cfg.data.resize) != 2:
        raise ConfigError(f"data.resize: [W, H] or null, got {cfg.data.resize}")
    if not cfg.data.train.root:
        raise ConfigError("data.train.root: the training dataset's directory is required")
    if not set(cfg.model.heads) <= {"seg", "det"} or not cfg.model.heads:
        raise ConfigError(f"model.heads: seg and/or det, got {cfg.model.heads}")
    if not 0 < cfg.optim.layer_decay <= 1:
        raise ConfigError("optim.layer_decay must be in (0, 1]")
    select, train = cfg.data.select, cfg.data.train
    if select is not None and ((select.name, select.root) != (train.name, train.root) or select.split == train.split):
        raise ConfigError(f"data.select must be a held-out split of the training set ({train.name} at {train.root}, "
                          f"a split other than {train.split!r}), got {select.name} at {select.root} split "
                          f"{select.split!r}: choosing a checkpoint on another domain would select on a target")
    validate_inference_config(cfg.inference)
