"""Checkpoints of the public VLTSeg reimplementation (GitHub VLTSeg/VLTSeg, mmsegmentation 1.2.2) into ours.

The reimplementation's trained files (Zenodo record 14766160, ``vltseg_checkpoint_*.pth``) hold ``{meta,
state_dict}``; a raw training checkpoint (``iter_*.pth``) adds ``message_hub``, ``optimizer`` and
``param_schedulers``. ``import_checkpoint`` reads either without running code from the pickle, builds the network
the weights describe (sizes from the tensors, the rest from the config text stored in ``meta.cfg``), maps every
tensor to our names, and writes one ``.safetensors`` checkpoint whose metadata carries the model config with the
reference-compatibility fields (docs/design.md#reference-compatibility), classes and palette, the reference's
inference protocol and the provenance. Any file that is not such a checkpoint raises ``ReferenceCheckpointError``
naming the problem.
"""
from __future__ import annotations

import _compat_pickle
import ast
import collections
import hashlib
import math
import os
import pickle
import re
import types
from typing import Any, Optional

import torch
from torch import Tensor

from .checkpoint import CheckpointError, CheckpointMeta, listing, save_checkpoint
from .config import (
    ConfigError, EncoderConfig, InferenceConfig, ModelConfig, NormalizationConfig, PyramidConfig,
    SegHeadConfig, validate_inference_config, validate_model_config,
)
from .labels import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE

__all__ = ["ReferenceCheckpointError", "import_checkpoint", "read_reference_file", "convert", "parse_config_text"]


class ReferenceCheckpointError(CheckpointError):
    """A file is not a readable checkpoint of the VLTSeg reimplementation (the message says why)."""


# ----------------------------------------------------------------------------------------------------------------
# Reading a pickled file without running it

# Globals a torch checkpoint of tensors and containers needs; everything else becomes an inert placeholder.
_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch", "Size"): torch.Size,
    ("_codecs", "encode"): __import__("codecs").encode,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
}
# Globals a raw mmengine training checkpoint names besides those (its message hub's history buffers, numpy values
# of its runtime info): expected, so the file is accepted, but still never called.
_EXPECTED_FOREIGN = re.compile(r"^(mmengine|mmseg|mmdet|mmcv|numpy)(\.|$)|^builtins\.getattr$")


class _Inert:
    """Stands in for a global the file names: calling, building or filling it does nothing."""

    global_name = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> "_Inert":
        return _Inert()

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<inert {self.global_name}>"


def _restricted_pickle_module(seen: set[str]) -> types.ModuleType:
    """A stand-in for the ``pickle`` module whose unpickler resolves only ``_SAFE_GLOBALS``; any other global is
    recorded in ``seen`` and replaced by an inert class, so nothing from the file can run."""

    class RestrictedUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            # Protocol-2 pickles (torch.save's) name Python 2 modules (__builtin__, copy_reg): map them as pickle does.
            module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
            safe = _SAFE_GLOBALS.get((module, name))
            if safe is not None:
                return safe
            seen.add(f"{module}.{name}")
            return type(f"Inert_{name}", (_Inert,), {"global_name": f"{module}.{name}"})

    def load(file: Any, **kwargs: Any) -> Any:
        return RestrictedUnpickler(file, **kwargs).load()

    module = types.ModuleType("vltseg_restricted_pickle")
    module.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]
    module.load = load  # type: ignore[attr-defined]
    module.__name__ = "vltseg_restricted_pickle"
    return module


def read_reference_file(path: str) -> Any:
    """The object pickled in a torch ``.pth`` file, read without running code from it.

    ``torch.load(weights_only=True)`` where it accepts the file (the published layout); otherwise an unpickler that
    allowlists tensors and containers and replaces every other global by an inert placeholder. A file naming globals
    that no mmengine checkpoint names (``os.system``, ``builtins.eval``, ...) is refused.
    """
    if not os.path.isfile(path):
        raise ReferenceCheckpointError(f"file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # globals beyond tensors and containers: read again with the allowlisting unpickler below
    except Exception as exc:
        raise ReferenceCheckpointError(_unreadable(path, exc)) from exc
    seen: set[str] = set()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_restricted_pickle_module(seen))
    except Exception as exc:
        _refuse_foreign(path, seen)
        raise ReferenceCheckpointError(_unreadable(path, exc)) from exc
    _refuse_foreign(path, seen)
    return obj


def _refuse_foreign(path: str, seen: set[str]) -> None:
    foreign = sorted(name for name in seen if not _EXPECTED_FOREIGN.match(name))
    if foreign:
        raise ReferenceCheckpointError(
            f"{path}: refused: its pickle calls {', '.join(foreign)}, which no mmengine checkpoint does (a "
            "malicious or foreign file); nothing from it was run"
        )


def _unreadable(path: str, exc: BaseException) -> str:
    size = os.path.getsize(path)
    return (f"{path}: not a readable torch checkpoint ({size} bytes; truncated or damaged?): "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")


# ----------------------------------------------------------------------------------------------------------------
# The config text stored in meta.cfg

def parse_config_text(text: str) -> dict[str, Any]:
    """Top-level assignments of an mmengine config dump (``Config.pretty_text``), evaluated without running it:
    literals, ``dict(...)``, lists, tuples, arithmetic on numbers and names assigned earlier. Anything else
    (calls, attributes, imports) evaluates to None."""
    try:
        tree = ast.parse(text)
    except SyntaxError as exc:
        raise ReferenceCheckpointError(f"meta.cfg is not an mmengine config dump: {exc}") from exc
    scope: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            scope[node.targets[0].id] = _evaluate(node.value, scope)
    return scope


_BINARY = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
           ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: a // b}


def _evaluate(node: ast.AST, scope: dict[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_evaluate(e, scope) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.Dict):
        return {_evaluate(k, scope): _evaluate(v, scope) for k, v in zip(node.keys, node.values) if k is not None}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
        return {kw.arg: _evaluate(kw.value, scope) for kw in node.keywords if kw.arg is not None}
    if isinstance(node, ast.Name):
        return {"True": True, "False": False, "None": None}.get(node.id, scope.get(node.id))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        value = _evaluate(node.operand, scope)
        return -value if isinstance(value, (int, float)) else None
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left, scope), _evaluate(node.right, scope)
        try:
            return _BINARY[type(node.op)](left, right)
        except Exception:  # e.g. None * 2: an operand we could not evaluate
            return None
    return None


def _get(tree: Any, *path: str, default: Any = None) -> Any:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return default
        tree = tree[key]
    return tree


# ----------------------------------------------------------------------------------------------------------------
# The network the weights describe

_BLOCK = re.compile(r"^backbone\.blocks\.(\d+)\.")
_UNUSED = re.compile(r"^backbone\.(blocks\.\d+\.attn\.)?rope\.freqs_(cos|sin)$|^decode_head\.conv_seg\.")


def _count(state: dict[str, Tensor], pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for k in state for m in [regex.match(k)] if m})


def _require(state: dict[str, Tensor], key: str, what: str) -> Tensor:
    if key not in state:
        raise ReferenceCheckpointError(f"the state dict has no {key!r} ({what})")
    return state[key]


def _check_is_vltseg(state: dict[str, Tensor], cfg: dict[str, Any]) -> None:
    model = cfg.get("model") or {}
    backbone_type = _get(model, "backbone", "type")
    head_type = _get(model, "decode_head", "type")
    has_eva = "backbone.cls_token" in state and any(_BLOCK.match(k) for k in state) \
        and "backbone.patch_embed.proj.weight" in state
    has_m2f = "decode_head.query_feat.weight" in state and "decode_head.cls_embed.weight" in state
    if has_eva and has_m2f:
        return
    if not any(k.startswith(("backbone.", "decode_head.")) for k in state):
        raise ReferenceCheckpointError(
            f"not an mmsegmentation checkpoint: no backbone.* or decode_head.* weights (keys like "
            f"{sorted(state)[:3]})")
    described = ", ".join(f"{name} {value!r}" for name, value in (("backbone", backbone_type),
                                                                  ("decode head", head_type)) if value)
    raise ReferenceCheckpointError(
        "an mmsegmentation checkpoint, but not of VLTSeg (EVA02 backbone + Mask2Former head)"
        + (f": its config names {described}" if described else "")
        + f"; {'no EVA02 backbone (backbone.cls_token, backbone.blocks.N.*)' if not has_eva else ''}"
        + f"{'; ' if not has_eva and not has_m2f else ''}"
        + f"{'no Mask2Former head (decode_head.query_feat, decode_head.cls_embed)' if not has_m2f else ''}")


def _encoder_config(state: dict[str, Tensor], backbone: dict[str, Any], assumed: list[str]) -> EncoderConfig:
    if any("relative_position_bias_table" in k or k.startswith("backbone.rel_pos_bias") for k in state):
        raise ReferenceCheckpointError("unsupported backbone: relative position bias (use_rel_pos_bias) is not "
                                       "part of EVA02-CLIP and has no counterpart here")
    if backbone.get("hybrid_backbone"):
        raise ReferenceCheckpointError("unsupported backbone: a hybrid (CNN) patch embedding")
    embed_dim = int(state["backbone.cls_token"].shape[-1])
    patch = int(state["backbone.patch_embed.proj.weight"].shape[-1])
    if patch not in (8, 14, 16):
        raise ReferenceCheckpointError(f"unsupported patch size {patch}: the reference's pyramid exists for 8, 14, 16")
    depth = _count(state, r"^backbone\.blocks\.(\d+)\.")
    heads = backbone.get("num_heads")
    if heads is None:
        heads = max(1, embed_dim // 64)
        assumed.append(f"backbone.num_heads={heads} (embed_dim / 64; the config does not say)")
    heads = int(heads)
    if embed_dim % heads:
        raise ReferenceCheckpointError(f"backbone.num_heads {heads} does not divide embed_dim {embed_dim}")
    qk_scale = backbone.get("qk_scale")
    if qk_scale is not None and abs(float(qk_scale) - (embed_dim // heads) ** -0.5) > 1e-12:
        raise ReferenceCheckpointError(f"unsupported backbone.qk_scale {qk_scale} (timm scales by head_dim ** -0.5)")
    if backbone.get("attn_head_dim") not in (None, embed_dim // heads):
        raise ReferenceCheckpointError(f"unsupported backbone.attn_head_dim {backbone['attn_head_dim']}")
    block = "backbone.blocks.0."
    fused = f"{block}attn.qkv.weight" in state
    swiglu = f"{block}mlp.w1.weight" in state
    hidden = int(state[f"{block}mlp.w1.weight" if swiglu else f"{block}mlp.fc1.weight"].shape[0])
    ratio = backbone.get("mlp_ratio")
    if ratio is None or int(embed_dim * ratio) != hidden:
        ratio = hidden / embed_dim if int(embed_dim * (hidden / embed_dim)) == hidden else (hidden + 0.5) / embed_dim
    taps = backbone.get("out_indices")
    if taps is None:
        taps = {24: [9, 14, 19, 23], 12: [3, 5, 7, 11]}.get(depth)
        if taps is None:
            raise ReferenceCheckpointError(f"the config gives no backbone.out_indices and depth {depth} has no default")
        assumed.append(f"backbone.out_indices={taps} (the paper's taps for depth {depth})")
    taps = sorted(int(t) for t in taps)  # the reference collects tap outputs in block order
    if len(taps) != 4 or len(set(taps)) != 4 or any(not 0 <= t < depth for t in taps):
        raise ReferenceCheckpointError(f"unsupported backbone.out_indices {taps}: need 4 distinct blocks of {depth}")
    arch: dict[str, Any] = {
        "embed_dim": embed_dim, "depth": depth, "num_heads": heads, "mlp_ratio": ratio,
        "qkv_fused": fused, "qkv_bias": f"{block}attn.q_bias" in state, "swiglu_mlp": swiglu,
        "scale_mlp": f"{block}mlp.ffn_ln.weight" in state, "use_abs_pos_emb": "backbone.pos_embed" in state,
        "use_rot_pos_emb": bool(backbone.get("rope", True)), "use_post_transformer_norm": False,
    }
    if f"{block}gamma_1" in state:
        arch["init_values"] = 1.0  # layer scale present; the stored values replace it
    grid = None
    if "backbone.pos_embed" in state:
        tokens = int(state["backbone.pos_embed"].shape[1]) - 1
        grid = math.isqrt(tokens)
        if grid * grid != tokens:
            raise ReferenceCheckpointError(f"backbone.pos_embed has {tokens} patch positions, not a square grid")
    if arch["use_rot_pos_emb"]:
        pt_grid = int(backbone.get("pt_hw_seq_len", 16))
        # intp_freq=False uses the pretraining table as is, which the reference can only run at that grid.
        arch["ref_feat_shape"] = [pt_grid, pt_grid] if backbone.get("intp_freq", True) else [grid or pt_grid] * 2
    if grid is None:
        img = backbone.get("img_size")
        grid = int(img[0] if isinstance(img, (list, tuple)) else img) // patch if img else None
    return EncoderConfig(
        name="eva02_l14" if patch == 14 else "eva02_b16", taps=taps,
        drop_path_rate=float(backbone.get("drop_path_rate") or 0.0),  # the recipe's, for fine-tuning
        patch_size=None if patch in (14, 16) else patch, arch=arch, attn_inner_norm=False, pos_embed_grid=grid,
        patch_grid="floor",
    )


def _seg_head_config(state: dict[str, Tensor], head: dict[str, Any], assumed: list[str]) -> SegHeadConfig:
    pre = "decode_head."
    queries, hidden = (int(v) for v in state[f"{pre}query_feat.weight"].shape)
    levels = _count(state, r"^decode_head\.pixel_decoder\.input_convs\.(\d+)\.")
    if levels != 3 or int(head.get("num_transformer_feat_level", 3)) != 3:
        raise ReferenceCheckpointError(f"unsupported Mask2Former: {levels} transformer feature levels (need 3)")
    pixel_layers = _count(state, r"^decode_head\.pixel_decoder\.encoder\.layers\.(\d+)\.")
    decoder_layers = _count(state, r"^decode_head\.transformer_decoder\.layers\.(\d+)\.")
    pixel_attn = _get(head, "pixel_decoder", "encoder", "layer_cfg", "self_attn_cfg", default={}) or {}
    decoder_attn = _get(head, "transformer_decoder", "layer_cfg", "self_attn_cfg", default={}) or {}
    cross_attn = _get(head, "transformer_decoder", "layer_cfg", "cross_attn_cfg", default={}) or {}
    decoder_counts = {int(v) for v in (decoder_attn.get("num_heads"), cross_attn.get("num_heads")) if v is not None}
    if len(decoder_counts) > 1:
        raise ReferenceCheckpointError(f"unsupported Mask2Former: self- and cross-attention head counts differ "
                                       f"{sorted(decoder_counts)}")
    if not decoder_counts or pixel_attn.get("num_heads") is None:
        assumed.append("decode_head attention heads = 8 (mmdet's default; the config does not say)")
    num_heads = decoder_counts.pop() if decoder_counts else 8
    pixel_heads = int(pixel_attn.get("num_heads") or 8)
    offsets = int(state[f"{pre}pixel_decoder.encoder.layers.0.self_attn.sampling_offsets.weight"].shape[0]) \
        if pixel_layers else pixel_heads * 3 * 4 * 2
    points, rest = divmod(offsets, pixel_heads * 3 * 2)
    if rest or points < 1:
        raise ReferenceCheckpointError(f"sampling_offsets of {offsets} rows do not fit {pixel_heads} heads x 3 levels")
    for where in ("positional_encoding", ("pixel_decoder", "positional_encoding")):
        feats = _get(head, *((where,) if isinstance(where, str) else where), "num_feats")
        if feats is not None and int(feats) * 2 != hidden:
            raise ReferenceCheckpointError(f"unsupported Mask2Former: positional encoding of {feats} x 2 features "
                                           f"for {hidden} channels")
    ffn = f"{pre}transformer_decoder.layers.0.ffn.layers.0.0.weight"
    pixel_ffn = f"{pre}pixel_decoder.encoder.layers.0.ffn.layers.0.0.weight"
    return SegHeadConfig(
        hidden_dim=hidden, num_queries=queries, pixel_decoder_layers=pixel_layers, decoder_layers=decoder_layers,
        num_heads=num_heads, pixel_decoder_num_heads=None if pixel_heads == num_heads else pixel_heads,
        decoder_ffn_dim=int(_require(state, ffn, "the decoder's FFN").shape[0]),
        pixel_decoder_ffn_dim=int(state[pixel_ffn].shape[0]) if pixel_layers else 1024, num_points=points,
        input_proj_bias=f"{pre}pixel_decoder.input_convs.0.conv.bias" in state,
    )


def _model_config(state: dict[str, Tensor], cfg: dict[str, Any], dataset_meta: dict[str, Any],
                  assumed: list[str]) -> ModelConfig:
    model = cfg.get("model") or {}
    encoder = _encoder_config(state, model.get("backbone") or {}, assumed)
    seg = _seg_head_config(state, model.get("decode_head") or {}, assumed)
    num_classes = int(state["decode_head.cls_embed.weight"].shape[0]) - 1
    classes = [str(c) for c in (dataset_meta.get("classes") or ())]
    palette = [[int(v) for v in c] for c in (dataset_meta.get("palette") or ())]
    if not classes:
        if num_classes != len(CITYSCAPES_CLASSES):
            raise ReferenceCheckpointError(f"meta.dataset_meta names no classes and {num_classes} is not Cityscapes' 19")
        classes = list(CITYSCAPES_CLASSES)
        assumed.append("classes: the 19 Cityscapes classes (meta.dataset_meta names none)")
    if len(classes) != num_classes:
        raise ReferenceCheckpointError(f"meta.dataset_meta names {len(classes)} classes but the head predicts "
                                       f"{num_classes}")
    if len(palette) != num_classes:
        palette = [list(c) for c in CITYSCAPES_PALETTE] if classes == list(CITYSCAPES_CLASSES) else [
            [(37 * i) % 256, (91 * i + 50) % 256, (173 * i + 100) % 256] for i in range(num_classes)]
        assumed.append("palette: generated (meta.dataset_meta has none that fits)")
    scales = [4.0, 2.0, 1.0, 0.5] if (encoder.patch_size or 14) != 8 else [2.0, 1.0, 0.5, 0.25]
    model_cfg = ModelConfig(encoder=encoder, pyramid=PyramidConfig(norm="batch", scales=scales), seg_head=seg,
                            det_head=None, classes=classes, palette=palette)
    try:
        validate_model_config(model_cfg)
    except ConfigError as exc:
        raise ReferenceCheckpointError(f"the weights describe a network this project cannot build: {exc}") from exc
    return model_cfg


def _normalization(cfg: dict[str, Any]) -> NormalizationConfig:
    pre = _get(cfg, "model", "data_preprocessor") or cfg.get("data_preprocessor") or {}
    if pre and not pre.get("bgr_to_rgb", False) and not pre.get("rgb_to_bgr", False):
        raise ReferenceCheckpointError("unsupported data_preprocessor: bgr_to_rgb=False (the network would see BGR)")
    default = NormalizationConfig()
    return NormalizationConfig(mean=[float(v) for v in pre.get("mean", default.mean)],
                               std=[float(v) for v in pre.get("std", default.std)])


def _test_resize(cfg: dict[str, Any]) -> Optional[list[int]]:
    """The fit box [H_min, H_max] of the test pipeline's keep-ratio Resize (mmcv scale is (w, h))."""
    pipelines = [_get(cfg, "test_dataloader", "dataset", "pipeline"), _get(cfg, "val_dataloader", "dataset", "pipeline"),
                 cfg.get("test_pipeline")]
    for pipeline in pipelines:
        for step in pipeline or ():
            if isinstance(step, dict) and step.get("type") == "Resize" and step.get("scale"):
                scale = [int(v) for v in step["scale"]]
                return sorted(scale)
    return None


def _inference(cfg: dict[str, Any], encoder: EncoderConfig, assumed: list[str]) -> InferenceConfig:
    test_cfg = _get(cfg, "model", "test_cfg") or {}
    patch = encoder.patch_size or (14 if encoder.name == "eva02_l14" else 16)
    crop = test_cfg.get("crop_size") or cfg.get("crop_size")
    if crop is None:
        side = (encoder.pos_embed_grid or 36) * patch
        crop = [1024 if side >= 1022 else 512 if 504 <= side < 518 else side] * 2
        assumed.append(f"window {crop[0]} (the config gives no crop size)")
    stride = test_cfg.get("stride") or cfg.get("stride_size")
    if stride is None:
        stride = [int(round(crop[0] * (426 / 512 if crop[0] == 512 else 0.75)))] * 2
        assumed.append(f"stride {stride[0]} (the config gives none)")
    crop, stride = [int(v) for v in crop], [int(v) for v in stride]
    if crop[0] != crop[1] or stride[0] != stride[1]:
        raise ReferenceCheckpointError(f"unsupported test_cfg: non-square window {crop} or stride {stride}")
    fit = _test_resize(cfg)
    if fit is None:
        fit = [512, 1024] if crop[0] <= 512 else [1024, 2048]
        assumed.append(f"test size {fit} (the config gives no test Resize)")
    mode = test_cfg.get("mode", "slide")
    if mode not in ("slide", "whole"):
        raise ReferenceCheckpointError(f"unsupported test_cfg mode {mode!r}")
    inference = InferenceConfig(mode=mode, size=list(fit), fit_size=list(fit), window=crop[0], stride=stride[0])
    validate_inference_config(inference)
    return inference


# ----------------------------------------------------------------------------------------------------------------
# Key mapping (docs/design.md#reference-compatibility has the table)

_HEAD_RULES: list[tuple[str, str]] = [
    (r"^decode_head\.pixel_decoder\.input_convs\.(\d+)\.conv\.", r"seg_head.pixel_decoder.input_convs.\1.0."),
    (r"^decode_head\.pixel_decoder\.input_convs\.(\d+)\.gn\.", r"seg_head.pixel_decoder.input_convs.\1.1."),
    (r"^decode_head\.pixel_decoder\.encoder\.layers\.(\d+)\.self_attn\.", r"seg_head.pixel_decoder.layers.\1.self_attn."),
    (r"^decode_head\.pixel_decoder\.encoder\.layers\.(\d+)\.ffn\.layers\.0\.0\.", r"seg_head.pixel_decoder.layers.\1.ffn.0."),
    (r"^decode_head\.pixel_decoder\.encoder\.layers\.(\d+)\.ffn\.layers\.1\.", r"seg_head.pixel_decoder.layers.\1.ffn.2."),
    (r"^decode_head\.pixel_decoder\.encoder\.layers\.(\d+)\.norms\.0\.", r"seg_head.pixel_decoder.layers.\1.norm1."),
    (r"^decode_head\.pixel_decoder\.encoder\.layers\.(\d+)\.norms\.1\.", r"seg_head.pixel_decoder.layers.\1.norm2."),
    (r"^decode_head\.pixel_decoder\.level_encoding\.", "seg_head.pixel_decoder.level_encoding."),
    (r"^decode_head\.pixel_decoder\.lateral_convs\.0\.conv\.", "seg_head.pixel_decoder.lateral_conv.0."),
    (r"^decode_head\.pixel_decoder\.lateral_convs\.0\.gn\.", "seg_head.pixel_decoder.lateral_conv.1."),
    (r"^decode_head\.pixel_decoder\.output_convs\.0\.conv\.", "seg_head.pixel_decoder.output_conv.0."),
    (r"^decode_head\.pixel_decoder\.output_convs\.0\.gn\.", "seg_head.pixel_decoder.output_conv.1."),
    (r"^decode_head\.pixel_decoder\.mask_feature\.", "seg_head.pixel_decoder.mask_feature."),
    (r"^decode_head\.transformer_decoder\.layers\.(\d+)\.(cross_attn|self_attn)\.attn\.", r"seg_head.layers.\1.\2."),
    (r"^decode_head\.transformer_decoder\.layers\.(\d+)\.ffn\.layers\.0\.0\.", r"seg_head.layers.\1.ffn.0."),
    (r"^decode_head\.transformer_decoder\.layers\.(\d+)\.ffn\.layers\.1\.", r"seg_head.layers.\1.ffn.2."),
    (r"^decode_head\.transformer_decoder\.layers\.(\d+)\.norms\.0\.", r"seg_head.layers.\1.norm1."),
    (r"^decode_head\.transformer_decoder\.layers\.(\d+)\.norms\.1\.", r"seg_head.layers.\1.norm2."),
    (r"^decode_head\.transformer_decoder\.layers\.(\d+)\.norms\.2\.", r"seg_head.layers.\1.norm3."),
    (r"^decode_head\.transformer_decoder\.post_norm\.", "seg_head.decoder_norm."),
    (r"^decode_head\.(query_embed|query_feat|level_embed|cls_embed|mask_embed)\.", r"seg_head.\1."),
]
_BACKBONE_RULES: list[tuple[str, str]] = [
    (r"^backbone\.(cls_token|pos_embed)$", r"encoder.trunk.\1"),
    (r"^backbone\.patch_embed\.proj\.", "encoder.trunk.patch_embed.proj."),
    (r"^backbone\.blocks\.(\d+)\.(norm1|norm2)\.", r"encoder.trunk.blocks.\1.\2."),
    (r"^backbone\.blocks\.(\d+)\.(gamma_1|gamma_2)$", r"encoder.trunk.blocks.\1.\2"),
    (r"^backbone\.blocks\.(\d+)\.attn\.([qkv])_proj\.weight$", r"encoder.trunk.blocks.\1.attn.\2_proj.weight"),
    (r"^backbone\.blocks\.(\d+)\.attn\.qkv\.weight$", r"encoder.trunk.blocks.\1.attn.qkv.weight"),
    (r"^backbone\.blocks\.(\d+)\.attn\.proj\.", r"encoder.trunk.blocks.\1.attn.proj."),
    (r"^backbone\.blocks\.(\d+)\.mlp\.w1\.", r"encoder.trunk.blocks.\1.mlp.fc1_g."),
    (r"^backbone\.blocks\.(\d+)\.mlp\.w2\.", r"encoder.trunk.blocks.\1.mlp.fc1_x."),
    (r"^backbone\.blocks\.(\d+)\.mlp\.ffn_ln\.", r"encoder.trunk.blocks.\1.mlp.norm."),
    (r"^backbone\.blocks\.(\d+)\.mlp\.w3\.", r"encoder.trunk.blocks.\1.mlp.fc2."),
    (r"^backbone\.blocks\.(\d+)\.mlp\.(fc1|fc2)\.", r"encoder.trunk.blocks.\1.mlp.\2."),
]


def _map_state(state: dict[str, Tensor], model_cfg: ModelConfig) -> tuple[dict[str, Tensor], list[str], list[str]]:
    """Reference tensors under our names; returns (mapped, unmapped reference keys, dropped unused keys)."""
    arch = model_cfg.encoder.arch
    split_bias = not arch["qkv_fused"]
    packed_glu = arch["swiglu_mlp"] and not arch["scale_mlp"]
    pyramid = ([("fpn1.0.", "pyramid.levels.0.")] if model_cfg.pyramid.scales[0] == 2.0 else
               [("fpn1.", "pyramid.levels.0."), ("fpn2.0.", "pyramid.levels.1.")])
    rules = _BACKBONE_RULES + [(rf"^backbone\.{re.escape(a)}", b) for a, b in pyramid] + _HEAD_RULES
    mapped: dict[str, Tensor] = {}
    unmapped, dropped = [], []
    for key, value in state.items():
        if _UNUSED.match(key):
            dropped.append(key)
            continue
        bias = re.match(r"^backbone\.blocks\.(\d+)\.attn\.([qv])_bias$", key)
        if bias:
            block, which = bias.groups()
            name = f"{which}_proj.bias" if split_bias else f"{which}_bias"
            mapped[f"encoder.trunk.blocks.{block}.attn.{name}"] = value
            continue
        for pattern, replacement in rules:
            if re.match(pattern, key):
                mapped[re.sub(pattern, replacement, key)] = value
                break
        else:
            unmapped.append(key)
    if packed_glu:  # timm packs SwiGLU's two input projections as one (gate first) without the sub-LN
        for block in range(arch["depth"]):
            pre = f"encoder.trunk.blocks.{block}.mlp."
            for part in ("weight", "bias"):
                gate, x = mapped.pop(f"{pre}fc1_g.{part}", None), mapped.pop(f"{pre}fc1_x.{part}", None)
                if gate is not None and x is not None:
                    mapped[f"{pre}fc1.{part}"] = torch.cat([gate, x])
    return mapped, unmapped, dropped


def convert(obj: Any, source: str = "<memory>") -> tuple[dict[str, Tensor], CheckpointMeta]:
    """A read reference checkpoint (``read_reference_file``'s result) -> (our state dict, our metadata)."""
    from .model import build_model

    if not isinstance(obj, dict):
        raise ReferenceCheckpointError(f"{source}: holds a {type(obj).__name__}, not a checkpoint dict")
    if "state_dict" not in obj:
        if "optimizer" in obj or "param_schedulers" in obj:
            raise ReferenceCheckpointError(f"{source}: holds optimizer/scheduler state but no model weights "
                                           "(state_dict): an optimizer-only file")
        if obj and all(isinstance(v, Tensor) for v in obj.values()):
            obj = {"state_dict": obj}  # a bare state dict
        else:
            raise ReferenceCheckpointError(f"{source}: no 'state_dict' (top-level keys {sorted(map(str, obj))[:8]})")
    state = obj["state_dict"]
    if not isinstance(state, dict) or not state:
        raise ReferenceCheckpointError(f"{source}: 'state_dict' is not a mapping of tensors")
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise ReferenceCheckpointError(f"{source}: 'state_dict' entries are not tensors: {bad[:5]}")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else {}
    cfg_text = meta.get("cfg") if isinstance(meta.get("cfg"), str) else None
    cfg = parse_config_text(cfg_text) if cfg_text else {}
    assumed: list[str] = [] if cfg_text else ["no config text in meta.cfg: the protocol is inferred"]
    _check_is_vltseg(state, cfg)
    dataset_meta = meta.get("dataset_meta") if isinstance(meta.get("dataset_meta"), dict) else {}
    model_cfg = _model_config(state, cfg, dataset_meta, assumed)
    mapped, unmapped, dropped = _map_state(state, model_cfg)
    model = build_model(model_cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(mapped))
    unexpected = sorted(unmapped) + sorted(set(mapped) - set(expected))
    mismatched = sorted(f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
                        for k, v in mapped.items() if k in expected and v.shape != expected[k].shape)
    if missing or unexpected or mismatched:
        parts = [f"{label} {listing(items, 10)}" for label, items in (
            ("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)) if items]
        raise ReferenceCheckpointError(f"{source}: the state dict does not fit the VLTSeg network its shapes "
                                       f"describe: {'; '.join(parts)}")
    weights = {k: mapped[k].to(expected[k].dtype) for k in expected}
    inference = _inference(cfg, model_cfg.encoder, assumed)
    provenance = {
        "created_by": "vltseg checkpoint import",
        "imported_from": "mmsegmentation checkpoint of the VLTSeg reimplementation (GitHub VLTSeg/VLTSeg)",
        "layout": "training run (iter_*.pth)" if "message_hub" in obj or "optimizer" in obj else "published",
        "iteration": meta.get("iter"),
        "epoch": meta.get("epoch"),
        "experiment_name": meta.get("experiment_name"),
        "saved_at": meta.get("time"),
        "mmengine_version": meta.get("mmengine_version"),
        "seed": meta.get("seed") if isinstance(meta.get("seed"), (int, float)) else None,
        "train_dataset": _get(cfg, "train_dataloader", "dataset", "type") or cfg.get("dataset_type_train"),
        "test_dataset": _get(cfg, "test_dataloader", "dataset", "type") or cfg.get("dataset_type_test"),
        "dropped_keys": len(dropped),
        "assumed": assumed,
        "reference_config": cfg_text,
        "trained": True,
    }
    return weights, CheckpointMeta(model=model_cfg, normalization=_normalization(cfg), inference=inference,
                                   provenance=provenance)


def sha256_of(path: str) -> str:
    """Hex sha256 of a file, read in 16 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def import_checkpoint(path: str, out: str) -> CheckpointMeta:
    """Convert the reference checkpoint ``path`` into our ``.safetensors`` checkpoint ``out``; returns its metadata."""
    from .model import build_model

    obj = read_reference_file(path)
    weights, meta = convert(obj, path)
    meta.provenance.update({"source_file": os.path.basename(path), "sha256": sha256_of(path)})
    model = build_model(meta.model, meta.normalization)
    model.load_state_dict(weights, strict=True)
    save_checkpoint(out, model, meta)
    return meta

