"""CLIP vision encoders (EVA02-CLIP, OpenAI CLIP) built through timm, and pretrained-weight loading.

The encoder returns four intermediate block outputs as NCHW patch grids (cls token dropped, no final norm),
which the simple feature pyramid turns into a 4-level pyramid. timm's ``dynamic_img_size`` resamples the
absolute position embedding and rescales EVA's RoPE grid for any input size on every forward pass.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class EncoderSpec:
    """One registered encoder: its timm architecture, open_clip counterpart and default tap blocks."""

    timm_name: str
    taps: tuple[int, ...]
    open_clip_name: Optional[str] = None
    default_tag: Optional[str] = None
    overrides: dict[str, Any] = field(default_factory=dict)


ENCODERS: dict[str, EncoderSpec] = {
    "eva02_l14": EncoderSpec("eva02_large_patch14_clip_224", (9, 14, 19, 23), "EVA02-L-14", "merged2b_s4b_b131k"),
    "eva02_b16": EncoderSpec("eva02_base_patch16_clip_224", (3, 5, 7, 11), "EVA02-B-16", "merged2b_s8b_b131k"),
    "clip_l14": EncoderSpec("vit_large_patch14_clip_quickgelu_224", (9, 14, 19, 23), "ViT-L-14", "openai"),
    "clip_b16": EncoderSpec("vit_base_patch16_clip_quickgelu_224", (3, 5, 7, 11), "ViT-B-16", "openai"),
    # Same block type as EVA02-CLIP (SwiGLU, sub-LN, RoPE, cls token), shrunk for tests and CPU smoke runs.
    "eva02_tiny": EncoderSpec(
        "eva02_base_patch16_clip_224", (0, 1, 2, 3), overrides=dict(embed_dim=64, depth=4, num_heads=2)
    ),
}


def _registered_patch_size(spec: EncoderSpec) -> int:
    """The patch size a registered timm architecture is built with (its name says it: ..._patch14_...)."""
    return int(spec.overrides.get("patch_size") or spec.timm_name.split("patch")[1].split("_")[0])


class PretrainedWeightsError(RuntimeError):
    """Pretrained encoder weights could not be found, read or matched to the architecture."""


class ClipEncoder(nn.Module):
    """A timm CLIP ViT trunk that returns the outputs of four tap blocks as [B, C, H/p, W/p] maps."""

    def __init__(self, name: str, taps: Optional[Sequence[int]] = None, drop_path_rate: float = 0.0,
                 patch_size: Optional[int] = None, arch: Optional[dict[str, Any]] = None,
                 attn_inner_norm: Optional[bool] = None, pos_embed_grid: Optional[int] = None):
        """``arch``: timm ``Eva``/ViT arguments over the registered ones (trunks of other sizes);
        ``attn_inner_norm``: force the LayerNorm inside attention on or off (None = the architecture's own);
        ``pos_embed_grid``: store the absolute position embedding at this many patches per side, so that it is
        used unresampled at that grid (None = the architecture's 224 px grid)."""
        super().__init__()
        spec = ENCODERS[name]
        self.name = name
        overrides = {**spec.overrides, **(arch or {})}
        if "ref_feat_shape" in overrides:
            overrides["ref_feat_shape"] = tuple(overrides["ref_feat_shape"])
        if patch_size is not None:
            overrides["patch_size"] = patch_size
        if attn_inner_norm is not None:
            overrides["scale_attn_inner"] = attn_inner_norm
        if pos_embed_grid is not None:
            overrides["img_size"] = pos_embed_grid * (patch_size or _registered_patch_size(spec))
        self.trunk = timm.create_model(
            spec.timm_name, pretrained=False, num_classes=0, dynamic_img_size=True,
            drop_path_rate=drop_path_rate, **overrides,
        )
        self.taps = list(spec.taps if taps is None else taps)
        depth = len(self.trunk.blocks)
        if any(not 0 <= t < depth for t in self.taps):
            raise ValueError(f"encoder {name}: tap blocks {self.taps} out of range for depth {depth}")
        self.embed_dim: int = self.trunk.embed_dim
        self.patch_size: int = self.trunk.patch_embed.patch_size[0]
        # The taps are raw block outputs, so the final norm, the pooling head and blocks after the last tap take
        # no part in the output. They stay in the state dict (CLIP weights and older checkpoints load unchanged)
        # but are frozen: every trainable parameter then gets a gradient, which DDP requires without the cost of
        # find_unused_parameters.
        for module in self.unused_modules():
            module.requires_grad_(False)

    def unused_modules(self) -> list[nn.Module]:
        """Trunk modules that do not contribute to the tap outputs."""
        trunk = self.trunk
        return [trunk.norm, trunk.fc_norm, trunk.head, *trunk.blocks[max(self.taps) + 1:]]

    def forward(self, images: Tensor) -> list[Tensor]:
        """[B, 3, H, W] normalised images (H, W multiples of ``patch_size``) -> 4 x [B, C, H/p, W/p]."""
        return self.trunk.forward_intermediates(
            images, indices=self.taps, norm=False, output_fmt="NCHW", intermediates_only=True, stop_early=True
        )

    def no_weight_decay(self) -> set[str]:
        """Parameter names (relative to this module) that get no weight decay: position embedding and cls token."""
        return {f"trunk.{n}" for n in self.trunk.no_weight_decay()}


def read_state_dict(path: str) -> dict[str, Tensor]:
    """Read tensors from a .safetensors file or a torch file without unpickling code (``weights_only=True``)."""
    if not os.path.isfile(path):
        raise PretrainedWeightsError(f"pretrained weights file not found: {path}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # every reader error means the same thing to the user
        raise PretrainedWeightsError(f"cannot read pretrained weights {path}: {exc}") from exc
    for key in ("model_ema", "model", "module", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise PretrainedWeightsError(f"{path} does not hold a state dict of tensors")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def open_clip_state_dict(name: str, tag: str) -> dict[str, Tensor]:
    """Weights of an open_clip pretrained tag (downloaded into, or read from, the user's hub cache)."""
    import open_clip

    spec = ENCODERS[name]
    if spec.open_clip_name is None:
        raise PretrainedWeightsError(f"encoder {name} has no open_clip counterpart; give a local weights file")
    try:
        model = open_clip.create_model(spec.open_clip_name, pretrained=tag, device="cpu")
    except Exception as exc:
        raise PretrainedWeightsError(
            f"cannot get open_clip weights {spec.open_clip_name}:{tag} ({exc}). Offline? Put the weights in the "
            "hub cache or pass a local file (open_clip, original EVA-CLIP .pt, or timm format)."
        ) from exc
    return model.state_dict()


def load_pretrained(encoder: ClipEncoder, source: str) -> None:
    """Load CLIP weights into ``encoder`` from a local file or an open_clip tag (``"openclip"`` = the default tag).

    Accepted files: an open_clip CLIP state dict (``visual.trunk.*`` or ``visual.*``), an original EVA-CLIP
    ``.pt`` (``visual.*`` with q_bias/w1-w3/ffn_ln names), or a timm trunk state dict. timm's checkpoint filter
    converts the naming and bicubically resamples the position embedding to the model's grid. Every trunk
    parameter must be provided; the text tower and projection heads are ignored.
    """
    if os.path.sep in source or os.path.exists(source):
        state = read_state_dict(source)
    else:
        tag = ENCODERS[encoder.name].default_tag if source in ("openclip", "default") else source
        state = open_clip_state_dict(encoder.name, tag)
    trunk = encoder.trunk
    # timm keeps one checkpoint filter per model family (eva.py, vision_transformer.py) next to the class.
    filter_fn = importlib.import_module(type(trunk).__module__).checkpoint_filter_fn
    try:
        converted = filter_fn(state, trunk)
    except Exception as exc:
        raise PretrainedWeightsError(f"weights from {source!r} do not convert to {encoder.name}: {exc}") from exc
    own = trunk.state_dict()
    converted = {k: v for k, v in converted.items() if k in own}
    missing = sorted(set(own) - set(converted))
    mismatched = sorted(k for k, v in converted.items() if v.shape != own[k].shape)
    if missing or mismatched:
        details = "; ".join(
            part for part in (
                f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''}" if missing else "",
                "shape mismatch " + ", ".join(
                    f"{k}: file {tuple(converted[k].shape)} vs model {tuple(own[k].shape)}" for k in mismatched[:8]
                ) if mismatched else "",
            ) if part
        )
        raise PretrainedWeightsError(f"weights from {source!r} do not fit encoder {encoder.name}: {details}")
    trunk.load_state_dict(converted, strict=True)


def pad_to_multiple(images: Tensor, multiple: int) -> Tensor:
    """Zero-pad [B, C, H, W] on the bottom/right so H and W are multiples of ``multiple``."""
    h, w = images.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    return F.pad(images, (0, pad_w, 0, pad_h)) if pad_h or pad_w else images


def floor_to_multiple(images: Tensor, multiple: int) -> Tensor:
    """Crop [B, C, H, W] on the bottom/right to the largest multiples of ``multiple`` (what a stride-``multiple``
    patch convolution without padding sees)."""
    h, w = images.shape[-2:]
    return images[..., : h - h % multiple, : w - w % multiple]
