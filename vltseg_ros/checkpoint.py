"""The checkpoint format: one ``.safetensors`` file, weights plus JSON metadata; nothing is ever unpickled.

Metadata (safetensors header, key ``vltseg_ros``) holds the format version, the full model config (classes and
palette included), input normalisation, inference mode/size, and training provenance. A checkpoint either loads
completely or raises CheckpointError naming the problem; it never half-loads.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config import (
    ConfigError, InferenceConfig, ModelConfig, NormalizationConfig, inference_config_from_dict,
    model_config_from_checkpoint_dict, normalization_from_dict, to_dict,
)

FORMAT_NAME = "vltseg_ros.checkpoint"
FORMAT_VERSION = 1
METADATA_KEY = "vltseg_ros"
EXTRA_PREFIX = "extra/"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, not in this format, of an unsupported version, or does not fit its config."""


@dataclass
class CheckpointMeta:
    """Everything a checkpoint says about itself besides the weights."""

    model: ModelConfig
    normalization: NormalizationConfig = field(default_factory=NormalizationConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    provenance: dict[str, Any] = field(default_factory=dict)
    # The domain-shift monitor's in-domain calibration (``vltseg monitor calibrate``): per frame-score name its
    # statistics and alarm thresholds, the in-domain score distribution, and which split and how many frames gave
    # them. None = uncalibrated: the monitor then says so instead of judging.
    monitor: Optional[dict[str, Any]] = None

    def to_json(self) -> str:
        """Serialise to the JSON stored in the file header."""
        return json.dumps({
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "model": to_dict(self.model),
            "normalization": to_dict(self.normalization),
            "inference": to_dict(self.inference),
            "provenance": self.provenance,
            **({"monitor": self.monitor} if self.monitor else {}),
        }, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, path: str = "<memory>") -> "CheckpointMeta":
        """Parse and validate header JSON; raise CheckpointError on any problem."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path}: metadata is not valid JSON ({exc})") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            raise CheckpointError(f"{path}: metadata does not declare format {FORMAT_NAME!r}")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise CheckpointError(
                f"{path}: checkpoint format version {version!r} is not supported (this build reads {FORMAT_VERSION})"
            )
        try:
            return cls(
                model=model_config_from_checkpoint_dict(data["model"]),
                normalization=normalization_from_dict(data["normalization"]),
                inference=inference_config_from_dict(data["inference"]),
                provenance=dict(data.get("provenance") or {}),
                monitor=_monitor_section(data.get("monitor"), path),
            )
        except KeyError as exc:
            raise CheckpointError(f"{path}: metadata lacks {exc}") from exc
        except ConfigError as exc:
            raise CheckpointError(f"{path}: invalid config in metadata: {exc}") from exc


def save_checkpoint(
    path: str, model: torch.nn.Module, meta: CheckpointMeta, extra: Optional[dict[str, torch.Tensor]] = None
) -> None:
    """Write weights (plus optional ``extra`` tensors, e.g. training state, stored under ``extra/``) atomically:
    a temp file in the same directory, then a rename."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tensors.update({EXTRA_PREFIX + k: v.detach().contiguous().cpu() for k, v in (extra or {}).items()})
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=directory)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={METADATA_KEY: meta.to_json()})
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def read_meta(path: str) -> CheckpointMeta:
    """Read and validate only the metadata (cheap: the header alone)."""
    with _open(path) as f:
        return _meta(f, path)


def load_checkpoint(path: str, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, CheckpointMeta]:
    """Build the network described by the checkpoint and load its weights strictly; returns (model in eval mode,
    metadata). Raises CheckpointError for a missing file, another format, a wrong version, or any missing,
    unexpected or mis-shaped tensor (all named)."""
    from .model import build_model

    with _open(path) as f:
        meta = _meta(f, path)
        model = build_model(meta.model, meta.normalization)
        expected = model.state_dict()
        stored = set(f.keys())
        missing = sorted(set(expected) - stored)
        unexpected = sorted(k for k in stored - set(expected) if not k.startswith(EXTRA_PREFIX))
        mismatched = [
            f"{k}: file {tuple(f.get_slice(k).get_shape())} vs model {tuple(expected[k].shape)}"
            for k in sorted(stored & set(expected)) if tuple(f.get_slice(k).get_shape()) != tuple(expected[k].shape)
        ]
        problems = [
            f"{label} {listing(items)}"
            for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched))
            if items
        ]
        if problems:
            raise CheckpointError(f"{path}: weights do not fit {meta.model.encoder.name}: " + "; ".join(problems))
        state = {k: f.get_tensor(k) for k in expected}
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), meta


def load_extra(path: str) -> dict[str, torch.Tensor]:
    """Tensors stored beside the weights by ``save_checkpoint(extra=...)`` (training state), prefix removed."""
    with _open(path) as f:
        return {k[len(EXTRA_PREFIX):]: f.get_tensor(k) for k in f.keys() if k.startswith(EXTRA_PREFIX)}


def _monitor_section(section: Any, path: str) -> Optional[dict[str, Any]]:
    """Validate the metadata's ``monitor`` section (None when absent)."""
    if section is None:
        return None
    scores = section.get("scores") if isinstance(section, dict) else None
    if not isinstance(scores, dict) or not scores or any(
            not isinstance(e, dict) or not {"stats", "thresholds"} <= set(e) or
            not {"warn", "error"} <= set(e["thresholds"] or {}) for e in scores.values()):
        raise CheckpointError(f"{path}: metadata 'monitor' needs 'scores', each with 'stats' and 'thresholds' "
                              "(warn, error)")
    return section


def listing(items: list[str], limit: int = 8) -> str:
    """Up to ``limit`` names in brackets, with the total when there are more (error messages)."""
    shown = ", ".join(items[:limit])
    return f"[{shown}{f', ... ({len(items)} in all)' if len(items) > limit else ''}]"


def _open(path: str):
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return safe_open(path, framework="pt", device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: not a safetensors checkpoint ({exc}); pickled .pt/.pth files are never loaded"
        ) from exc


def _meta(f: Any, path: str) -> CheckpointMeta:
    text = (f.metadata() or {}).get(METADATA_KEY)
    if text is None:
        raise CheckpointError(f"{path}: safetensors file has no {METADATA_KEY!r} metadata (not written by vltseg)")
    return CheckpointMeta.from_json(text, path)
