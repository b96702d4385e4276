"""Parity fixtures produced by the public reference implementation (GitHub VLTSeg/VLTSeg, mmsegmentation 1.2.2).

This script runs the reference's own code (imported from a checkout that you provide; nothing of it is copied here)
on TINY models built from its own config files, and writes small published-layout checkpoints, one raw training
checkpoint, deterministic test images and the reference's outputs on them, so that the importer and the network in
vltseg_ros/ can be checked against the reference without the 1.3 GB published files.

It needs its own virtual environment (not the project's .venv). Regenerate with, from the repository root:

    python3 -m venv .venv-reference
    .venv-reference/bin/pip install torch==2.14.1 torchvision==0.29.1 mmengine==0.10.7 mmcv-lite==2.1.0 \
        mmdet==3.3.0 mmsegmentation==1.2.2 timm==1.0.9 einops ftfy regex numpy==2.4.6 safetensors==0.8.0
    git clone https://github.com/VLTSeg/VLTSeg /path/to/VLTSeg && git -C /path/to/VLTSeg checkout 19cff2c
    .venv-reference/bin/python scripts/reference_fixtures.py --reference-repo /path/to/VLTSeg \
        --out tests/fixtures/reference

(mmcv-lite 2.2.0 is refused by mmseg 1.2.2 / mmdet 3.3.0; mmcv-lite ships no compiled ``mmcv._ext``, and the
reference's backbone imports ``xformers.ops``: both are replaced below by stand-ins before any mm import, see
``install_stubs``. On CPU tensors mmcv's MultiScaleDeformableAttention takes its pure-PyTorch branch.)

Optional: ``--fullsize-out DIR`` also builds the full-size ViT-L/14 reference (GTA config unchanged but for
``init_cfg``), perturbs it the same way and writes its ~1.3 GB published-layout checkpoint, a 512x512 window and a
512x940 image with the reference's outputs into DIR (never into the repository). About 16 s per 512 window on 2
cores. ``--only-fullsize`` skips the tiny sets.

Conventions (also written into MANIFEST.json):
- Images are stored as uint8 RGB, HxWx3. The reference's SegDataPreProcessor has bgr_to_rgb=True (its loader reads
  BGR with cv2), so it is fed the channels reversed (BGR); after its flip it normalises the RGB values with mean
  (123.675, 116.28, 103.53) and std (58.395, 57.12, 57.375). Nothing is resized: windows and images are fed at their
  stored size.
- Every parameter is perturbed by 0.02*N(0,1) (seeded), every BatchNorm's running statistics are randomised, and the
  pixel decoder's input-projection conv biases are set to 0.5*N(0,1), so that a swapped or dropped tensor shows.
  The mask embedding's last layer is scaled x8 and the class embedding made query-dependent (``diversify_classes``)
  so that the per-pixel argmax varies over the image.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import hashlib
import importlib
import importlib.machinery
import json
import logging
import os
import platform
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REFERENCE_COMMIT_EXPECTED = "19cff2c"
FIXED_TIME = "20250101_000000"  # meta.time / experiment_name stamp: fixed so that reruns give identical bytes
FIXTURE_TIME_NOTE = f"{FIXED_TIME} (fixed, not the generation time, so that reruns give identical bytes)"
SEED = 0
CITYSCAPES_CLASSES_N = 19

# ----------------------------------------------------------------------------------------------------------------
# stand-ins for the two compiled/optional modules the reference imports


def install_stubs() -> None:
    """``mmcv._ext`` whose every attribute is a function that raises; ``xformers.ops`` on torch SDPA."""

    class _Ext(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)

            def _missing(*args, **kwargs):
                raise RuntimeError(f"mmcv._ext.{name} is a stub (mmcv-lite has no compiled ops)")

            return _missing

    ext = _Ext("mmcv._ext")
    # a spec without a loader: importlib/pkgutil queries work and mmengine's mmcv_full_available() says False
    ext.__spec__ = importlib.machinery.ModuleSpec("mmcv._ext", None)
    sys.modules["mmcv._ext"] = ext

    def memory_efficient_attention(q, k, v, attn_bias=None, p=0.0, scale=None, **kwargs):
        # xformers layout: (B, N, H, C); SDPA wants (B, H, N, C)
        if attn_bias is not None or p:
            raise NotImplementedError("stand-in supports plain attention only")
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale)
        return out.transpose(1, 2)

    xformers = types.ModuleType("xformers")
    ops = types.ModuleType("xformers.ops")
    ops.memory_efficient_attention = memory_efficient_attention
    xformers.ops = ops
    sys.modules["xformers"] = xformers
    sys.modules["xformers.ops"] = ops


# ----------------------------------------------------------------------------------------------------------------
# the fixture sets: reference config + overrides (dotted keys, applied with mmengine's Config.merge_from_dict)


def head_overrides(feat: int, queries: int, enc_layers: int, dec_layers: int, ffn: int, heads: int,
                   num_feats: int, pixel_heads: int | None = None) -> dict:
    h = "model.decode_head."
    pd = h + "pixel_decoder."
    enc = pd + "encoder.layer_cfg."
    dec = h + "transformer_decoder.layer_cfg."
    return {
        h + "feat_channels": feat,
        h + "out_channels": feat,
        h + "num_queries": queries,
        pd + "encoder.num_layers": enc_layers,
        enc + "self_attn_cfg.embed_dims": feat,
        enc + "self_attn_cfg.num_heads": pixel_heads or heads,
        enc + "ffn_cfg.embed_dims": feat,
        enc + "ffn_cfg.feedforward_channels": ffn,
        pd + "positional_encoding.num_feats": num_feats,
        h + "positional_encoding.num_feats": num_feats,
        h + "transformer_decoder.num_layers": dec_layers,
        dec + "self_attn_cfg.embed_dims": feat,
        dec + "self_attn_cfg.num_heads": heads,
        dec + "cross_attn_cfg.embed_dims": feat,
        dec + "cross_attn_cfg.num_heads": heads,
        dec + "ffn_cfg.embed_dims": feat,
        dec + "ffn_cfg.feedforward_channels": ffn,
    }


def geometry_overrides(crop: int, stride: int, random_crop_index: int) -> dict:
    return {
        "crop_size": (crop, crop),
        "stride_size": (stride, stride),
        "data_preprocessor.size": (crop, crop),
        "model.data_preprocessor.size": (crop, crop),
        "model.backbone.img_size": crop,
        "model.test_cfg": dict(mode="slide", crop_size=(crop, crop), stride=(stride, stride)),
        # keeps the saved config text self-consistent (training crop = crop); does not affect inference
        f"train_pipeline.{random_crop_index}.crop_size": (crop, crop),
        f"train_dataloader.dataset.pipeline.{random_crop_index}.crop_size": (crop, crop),
    }


def backbone_overrides(embed: int, depth: int, heads: int, out_indices: list, patch: int,
                       init_values: float | None = None) -> dict:
    b = "model.backbone."
    return {
        **({b + "init_values": init_values} if init_values is not None else {}),
        b + "init_cfg": None,
        b + "embed_dim": embed,
        b + "depth": depth,
        b + "num_heads": heads,
        b + "out_indices": out_indices,
        b + "patch_size": patch,
        "model.decode_head.in_channels": [embed] * 4,
    }


SETS = {
    "gta": dict(
        config="configs/mask2former_evaclip_2xb8_5k_gta2cityscapes.py",
        checkpoint="vltseg_checkpoint_tiny_gta.pth",
        tensors="reference_tiny_gta.safetensors",
        raw_checkpoint="iter_40.pth",
        backbone=dict(embed=64, depth=4, heads=2, out_indices=[0, 1, 2, 3], patch=14),
        head=dict(feat=64, queries=20, enc_layers=2, dec_layers=3, ffn=128, heads=4, num_feats=32),
        crop=120, stride=100,
        full_hw=(130, 230),   # 2 x 3 windows: rows at 0, 10; columns at 0, 100, 110
        image_seeds=(101, 102),
    ),
    "cityscapes": dict(
        config="configs/mask2former_evaclip_2xb4_20k_cityscapes2cityscapes.py",
        checkpoint="vltseg_checkpoint_tiny_cityscapes.pth",
        tensors="reference_tiny_cityscapes.safetensors",
        raw_checkpoint=None,
        backbone=dict(embed=48, depth=5, heads=3, out_indices=[0, 2, 3, 4], patch=16),
        head=dict(feat=64, queries=10, enc_layers=2, dec_layers=2, ffn=128, heads=4, num_feats=32),
        crop=136, stride=100,
        full_hw=(140, 180),   # 2 x 2 windows: rows at 0, 4; columns at 0, 44
        image_seeds=(201, 202),
    ),
    # Other choices the published configs never make, so the importer is tested beyond them: the reference's
    # patch-8 pyramid (x2, x1, /2, /4), layer scale (init_values), and pixel-decoder heads other than the decoder's.
    "synthia": dict(
        config="configs/mask2former_evaclip_2xb8_5k_synthia2cityscapes.py",
        checkpoint="vltseg_checkpoint_tiny_synthia.pth",
        tensors="reference_tiny_synthia.safetensors",
        raw_checkpoint=None,
        backbone=dict(embed=32, depth=4, heads=2, out_indices=[0, 1, 2, 3], patch=8, init_values=0.1),
        head=dict(feat=32, queries=8, enc_layers=1, dec_layers=3, ffn=64, heads=4, num_feats=16, pixel_heads=2),
        crop=68, stride=50,
        full_hw=(80, 110),   # 2 x 2 windows: rows at 0, 12; columns at 0, 42
        image_seeds=(301, 302),
    ),
}


def set_overrides(spec: dict, random_crop_index: int) -> dict:
    out = {}
    out.update(backbone_overrides(**spec["backbone"]))
    out.update(geometry_overrides(spec["crop"], spec["stride"], random_crop_index))
    out.update(head_overrides(**spec["head"]))
    return out


# ----------------------------------------------------------------------------------------------------------------
# reference model


def load_config(reference_repo: Path, rel_config: str, overrides: dict | None, fullsize: bool):
    from mmengine.config import Config

    cfg = Config.fromfile(str(reference_repo / rel_config))
    if overrides is None:
        overrides = {}
    if fullsize:
        overrides = {"model.backbone.init_cfg": None}
    else:
        overrides = dict(overrides)
    cfg.merge_from_dict(overrides)
    return cfg, overrides


def random_crop_index(cfg) -> int:
    for i, t in enumerate(cfg.train_pipeline):
        if t["type"] == "RandomCrop":
            return i
    raise RuntimeError("no RandomCrop in train_pipeline")


def build_model(cfg):
    from mmengine.model import revert_sync_batchnorm
    from mmseg.registry import MODELS

    torch.manual_seed(SEED)
    np.random.seed(SEED)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model = revert_sync_batchnorm(model)
    model.eval()
    return model


@torch.no_grad()
def perturb(model, seed: int) -> dict:
    """Add 0.02*N(0,1) to every parameter, randomise BN statistics, make the input-projection biases non-zero."""
    from torch.nn.modules.batchnorm import _BatchNorm

    g = torch.Generator().manual_seed(seed)
    n_params = 0
    for _, p in model.named_parameters():
        p.add_(0.02 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        n_params += 1
    bns = []
    for name, m in model.named_modules():
        if isinstance(m, _BatchNorm):
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
            bns.append(name)
    biases = []
    for i, conv_module in enumerate(model.decode_head.pixel_decoder.input_convs):
        b = conv_module.conv.bias
        b.copy_(0.5 * torch.randn(b.shape, generator=g))
        biases.append(f"decode_head.pixel_decoder.input_convs.{i}.conv.bias")
    # larger mask logits (sharper masks): the last Linear of the mask embedding x8
    head = model.decode_head
    for p in (head.mask_embed[-1].weight, head.mask_embed[-1].bias):
        p.mul_(8.0)
    return dict(seed=seed, parameters_perturbed=n_params, parameter_noise="0.02*N(0,1) added",
                mask_embed_scaled="decode_head.mask_embed.4.{weight,bias} x8 (after the noise)",
                batchnorms_randomised=bns, batchnorm_stats="running_mean=0.1*N(0,1), running_var=0.5+U(0,1)",
                input_proj_biases_set=biases, input_proj_bias="0.5*N(0,1)")


@torch.no_grad()
def diversify_classes(model, window_rgb: np.ndarray, logit_std: float = 3.0) -> str:
    """Make different queries prefer different classes, so that the per-pixel argmax varies over the image.

    With random weights the last decoder layer's query features share one dominant direction (|mean| is ~95% of
    the mean norm), so every query favours the same class. The rows of cls_embed.weight are projected orthogonal to
    that mean direction (measured on the test window), then scaled so the class logits have std ``logit_std``.
    """
    captured = {}
    hook = model.decode_head.cls_embed.register_forward_hook(
        lambda m, i, o: captured.__setitem__("q", i[0].detach()))
    try:
        run_window(model, window_rgb)
    finally:
        hook.remove()
    q = captured["q"][0]
    u = q.mean(0) / q.mean(0).norm()
    w = model.decode_head.cls_embed.weight
    w.sub_((w @ u)[:, None] * u[None, :])
    scale = logit_std / float((q @ w.T).std())
    w.mul_(scale)
    return (f"decode_head.cls_embed.weight rows projected orthogonal to the mean last-layer query feature on the "
            f"test window, then x{scale:.4f} (class-logit std {logit_std} there)")


def dataset_meta(cfg) -> dict:
    """The train dataset's ``metainfo`` (what the runner stores as meta.dataset_meta), built without data."""
    from mmseg.registry import DATASETS

    ds_cfg = copy.deepcopy(cfg.train_dataloader.dataset)
    ds_cfg["lazy_init"] = True
    ds_cfg["pipeline"] = []
    ds = DATASETS.build(ds_cfg)
    meta = ds.metainfo
    assert len(meta["classes"]) == CITYSCAPES_CLASSES_N, meta["classes"]
    return meta


def published_meta(cfg, config_path: str, iteration: int) -> dict:
    import mmengine

    stem = Path(config_path).stem
    return dict(
        epoch=0,
        iter=iteration,
        cfg=cfg.pretty_text,
        seed=cfg.randomness.get("seed", SEED),
        experiment_name=f"{stem}_{FIXED_TIME}",
        time=FIXED_TIME,
        mmengine_version=mmengine.__version__,
        dataset_meta=dataset_meta(cfg),
    )


def save_published(model, meta: dict, path: Path) -> None:
    from mmengine.runner.checkpoint import save_checkpoint, weights_to_cpu

    save_checkpoint({"meta": meta, "state_dict": weights_to_cpu(model.state_dict())}, str(path))


def save_raw_training_checkpoint(model, cfg, meta: dict, path: Path) -> dict:
    """``iter_40.pth`` as mmengine's Runner.save_checkpoint writes it, from real mmengine objects.

    The state_dict is the model's (the same as the published tiny file's). The optimizer state comes from one real
    ``OptimWrapper.update_params`` step (config's AdamW, paramwise custom_keys, grad clipping) on a deep copy of the
    model, with a loss that reaches only the decode head's query/level/class embeddings, so that the state stays small
    (AdamW keeps state only for parameters that received a gradient); the param_groups list every parameter.
    """
    from mmengine.logging import MessageHub
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import PARAM_SCHEDULERS
    from mmengine.runner.checkpoint import save_checkpoint, weights_to_cpu
    from mmengine.utils import apply_to

    iters = meta["iter"]
    twin = copy.deepcopy(model).train()
    optim_wrapper = build_optim_wrapper(twin, cfg.optim_wrapper)
    schedulers = []
    for sc in cfg.param_scheduler:
        sc = dict(sc)
        schedulers.append(PARAM_SCHEDULERS.build(sc, default_args=dict(optimizer=optim_wrapper)))
    head = twin.decode_head
    loss = (head.query_feat.weight.square().mean() + head.query_embed.weight.square().mean()
            + head.level_embed.weight.square().mean() + head.cls_embed.weight.square().mean()
            + head.cls_embed.bias.square().mean())
    optim_wrapper.update_params(loss)
    for _ in range(iters):
        for s in schedulers:
            s.step()

    hub = MessageHub.get_instance("vltseg_reference_fixtures_iter")
    rng = np.random.default_rng(SEED)
    # RuntimeInfoHook.before_run / before_train
    hub.update_info_dict(dict(cfg=meta["cfg"], seed=meta["seed"], experiment_name=meta["experiment_name"],
                              mmengine_version=meta["mmengine_version"]))
    hub.update_info("loop_stage", "train")
    hub.update_info("epoch", 0)
    hub.update_info("max_epochs", 1)
    hub.update_info("max_iters", cfg.train_cfg.max_iters)
    hub.update_info("dataset_meta", meta["dataset_meta"])
    for it in range(iters):
        hub.update_info("iter", it + 1)
        lr = optim_wrapper.get_lr()["lr"][0]
        hub.update_scalar("train/lr", lr)
        hub.update_scalar("train/data_time", float(0.01 + 0.001 * rng.random()))
        hub.update_scalar("train/time", float(0.5 + 0.05 * rng.random()))
        # losses arrive as 0-dim tensors (parsed model outputs)
        hub.update_scalar("train/loss", torch.tensor(60.0 - 0.5 * it + rng.random()))
        hub.update_scalar("train/decode.loss_cls", torch.tensor(2.0 - 0.01 * it))
    # what CheckpointHook(save_best=...) leaves: IoUMetric results are numpy float64
    hub.update_info("best_score", np.float64(12.34))
    hub.update_info("best_ckpt", "work_dirs/best_mIoU_iter_40.pth")

    checkpoint = {
        "meta": meta,
        "state_dict": weights_to_cpu(model.state_dict()),
        "message_hub": apply_to(hub.state_dict(), lambda x: hasattr(x, "cpu"), lambda x: x.cpu()),
        "optimizer": apply_to(optim_wrapper.state_dict(), lambda x: hasattr(x, "cpu"), lambda x: x.cpu()),
        "param_schedulers": [s.state_dict() for s in schedulers],
    }
    save_checkpoint(checkpoint, str(path))
    opt_sd = optim_wrapper.state_dict()
    return dict(
        optimizer=f"{type(optim_wrapper.optimizer).__name__} in {type(optim_wrapper).__name__}, one real "
                  "update_params step on a copy (loss reaching only decode_head query_feat/query_embed/level_embed/"
                  "cls_embed)",
        optimizer_param_groups=len(opt_sd["param_groups"]),
        optimizer_state_entries=len(opt_sd["state"]),
        param_schedulers=[type(s).__name__ for s in schedulers],
        scheduler_steps=iters,
        message_hub_log_scalars=sorted(hub.state_dict()["log_scalars"].keys()),
        message_hub_runtime_info=sorted(hub.state_dict()["runtime_info"].keys()),
        state_dict_equals_that_of=SETS["gta"]["checkpoint"],
    )


# ----------------------------------------------------------------------------------------------------------------
# inputs and runs


def make_image(h: int, w: int, seed: int) -> np.ndarray:
    """Deterministic structured RGB uint8 image: smooth gradients, filled discs and rectangles, mild noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w, 3), np.float64)
    for c in range(3):
        a, b = rng.uniform(-1, 1, size=2)
        phase = rng.uniform(0, 2 * np.pi)
        img[..., c] = 128 + 70 * np.sin((a * xx + b * yy) / max(h, w) * 2 * np.pi + phase) \
            + 30 * (xx / w - 0.5) * rng.uniform(-1, 1)
    for _ in range(6):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        r = rng.uniform(0.08, 0.25) * min(h, w)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
        img[mask] = rng.uniform(0, 255, size=3)
    for _ in range(4):
        y0, x0 = int(rng.uniform(0, h * 0.8)), int(rng.uniform(0, w * 0.8))
        hh, ww = int(rng.uniform(0.1, 0.4) * h), int(rng.uniform(0.1, 0.4) * w)
        img[y0:y0 + hh, x0:x0 + ww] = rng.uniform(0, 255, size=3)
    img += rng.normal(0, 4, size=img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def preprocess(model, rgb: np.ndarray) -> torch.Tensor:
    """The model's own SegDataPreProcessor; fed BGR (as cv2 loads) so that after its bgr_to_rgb flip it sees RGB."""
    bgr_chw = torch.from_numpy(np.ascontiguousarray(rgb[..., ::-1])).permute(2, 0, 1).contiguous()
    out = model.data_preprocessor(dict(inputs=[bgr_chw], data_samples=None), False)
    return out["inputs"]


def slide_windows(h: int, w: int, crop: int, stride: int) -> list:
    """mmseg 1.2.2 EncoderDecoder.slide_inference's window boxes (y1, y2, x1, x2)."""
    h_grids = max(h - crop + stride - 1, 0) // stride + 1
    w_grids = max(w - crop + stride - 1, 0) // stride + 1
    boxes = []
    for hi in range(h_grids):
        for wi in range(w_grids):
            y1, x1 = hi * stride, wi * stride
            y2, x2 = min(y1 + crop, h), min(x1 + crop, w)
            boxes.append((max(y2 - crop, 0), y2, max(x2 - crop, 0), x2))
    return boxes


@torch.no_grad()
def run_window(model, rgb: np.ndarray) -> dict:
    crop = rgb.shape[0]
    inputs = preprocess(model, rgb)
    captured = {}
    hooks = [
        model.decode_head.pixel_decoder.register_forward_hook(
            lambda m, i, o: captured.__setitem__("mask_features", o[0].clone())),
        model.decode_head.register_forward_hook(
            lambda m, i, o: captured.update(cls=o[0][-1].clone(), mask=o[1][-1].clone())),
    ]
    try:
        feats = model.extract_feat(inputs)
        metas = [dict(ori_shape=(crop, crop), img_shape=(crop, crop), pad_shape=(crop, crop))]
        scores = model.decode_head.predict(feats, metas, model.test_cfg)
    finally:
        for h in hooks:
            h.remove()
    out = {f"window_pyramid_{i}": f.contiguous() for i, f in enumerate(feats)}
    out["window_mask_features"] = captured["mask_features"].contiguous()
    out["window_cls_logits"] = captured["cls"].contiguous()
    out["window_mask_logits"] = captured["mask"].contiguous()
    out["window_scores"] = scores.contiguous()
    return out


@torch.no_grad()
def run_slide(model, rgb: np.ndarray) -> tuple[dict, int]:
    h, w = rgb.shape[:2]
    inputs = preprocess(model, rgb)
    calls = []
    hook = model.backbone.register_forward_hook(lambda m, i, o: calls.append(tuple(i[0].shape[-2:])))
    try:
        scores = model.inference(inputs, [dict(ori_shape=(h, w), img_shape=(h, w), pad_shape=(h, w))])
    finally:
        hook.remove()
    return {"slide_scores": scores.contiguous()}, calls


# ----------------------------------------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def reference_commit(repo: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def versions() -> dict:
    import mmcv
    import mmdet
    import mmengine
    import mmseg
    import timm

    return dict(python=platform.python_version(), torch=torch.__version__, numpy=np.__version__,
                mmengine=mmengine.__version__, mmcv=mmcv.__version__ + " (mmcv-lite, stubbed _ext)",
                mmdet=mmdet.__version__, mmseg=mmseg.__version__, timm=timm.__version__,
                torch_threads=torch.get_num_threads())


def unsafe_globals(path: Path) -> list:
    return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))


def weights_only_loads(path: Path) -> str:
    try:
        torch.load(str(path), map_location="cpu", weights_only=True)
        return "accepted"
    except Exception as e:  # noqa: BLE001 - any refusal is the answer
        return f"refused ({type(e).__name__})"


def describe(tensors: dict, meanings: dict) -> dict:
    return {k: dict(shape=list(v.shape), dtype=str(v.dtype).replace("torch.", ""), meaning=meanings.get(k, ""))
            for k, v in tensors.items()}


def tensor_meanings(spec: dict, n_windows: int) -> dict:
    crop, (h, w) = spec["crop"], spec["full_hw"]
    g = crop // spec["backbone"]["patch"]
    return {
        "window_image": f"uint8 RGB HxWx3 test window ({crop}x{crop}), fed without resizing",
        "slide_image": f"uint8 RGB HxWx3 full test image ({h}x{w}), fed without resizing",
        "window_pyramid_0": f"extract_feat level 0 on the window (fpn1: 4x the {g}x{g} patch grid)",
        "window_pyramid_1": "extract_feat level 1 (fpn2: 2x)",
        "window_pyramid_2": "extract_feat level 2 (fpn3: identity)",
        "window_pyramid_3": "extract_feat level 3 (fpn4: max-pool 2)",
        "window_mask_features": "decode_head.pixel_decoder output 0 (mask features) on the window",
        "window_cls_logits": "last decoder layer's class logits [1,Q,19+1] (before softmax)",
        "window_mask_logits": "last decoder layer's mask logits [1,Q,4G,4G] (before upsampling/sigmoid)",
        "window_scores": "decode_head.predict on the window: per-class scores, softmax(cls)[:-1]·sigmoid(mask) "
                         "summed over queries, masks bilinearly upsampled (align_corners=False) to the window size",
        "slide_scores": f"model.inference, test_cfg mode='slide': sum of window scores / window count "
                       f"({n_windows} windows)",
        "slide_window_count": "how many windows covered each pixel (mmseg's count_mat), uint8",
    }


def generate_set(name: str, spec: dict, reference_repo: Path, out: Path) -> dict:
    from mmengine.config import Config
    from safetensors.torch import save_file

    cfg = Config.fromfile(str(reference_repo / spec["config"]))
    overrides = set_overrides(spec, random_crop_index(cfg))
    cfg, overrides = load_config(reference_repo, spec["config"], overrides, fullsize=False)

    t0 = time.time()
    model = build_model(cfg)
    perturbation = perturb(model, seed=1000 + sum(map(ord, name)))
    crop, stride = spec["crop"], spec["stride"]
    h, w = spec["full_hw"]
    window = make_image(crop, crop, spec["image_seeds"][0])
    full = make_image(h, w, spec["image_seeds"][1])
    perturbation["cls_embed"] = diversify_classes(model, window)
    build_s = time.time() - t0

    iters = cfg.train_cfg.max_iters
    meta = published_meta(cfg, spec["config"], iters)
    ckpt_path = out / spec["checkpoint"]
    save_published(model, meta, ckpt_path)

    raw = None
    if spec.get("raw_checkpoint"):
        raw_meta = dict(meta)
        raw_meta["iter"] = 40
        raw_path = out / spec["raw_checkpoint"]
        raw = dict(file=raw_path.name, iteration=40, weights_of=name,
                   keys=["meta", "state_dict", "message_hub", "optimizer", "param_schedulers"])
        raw.update(save_raw_training_checkpoint(model, cfg, raw_meta, raw_path))

    t1 = time.time()
    tensors = {"window_image": torch.from_numpy(window), "slide_image": torch.from_numpy(full)}
    tensors.update(run_window(model, window))
    slide, calls = run_slide(model, full)
    tensors.update(slide)
    run_s = time.time() - t1

    boxes = slide_windows(h, w, crop, stride)
    assert len(calls) == len(boxes), (calls, boxes)
    assert all(c == (crop, crop) for c in calls), calls
    count = torch.zeros(h, w, dtype=torch.uint8)
    for y1, y2, x1, x2 in boxes:
        count[y1:y2, x1:x2] += 1
    tensors["slide_window_count"] = count

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    tensor_path = out / spec["tensors"]
    # one metadata key: safetensors writes several in arbitrary order, which would change the file's bytes
    save_file(tensors, str(tensor_path), metadata={"fixture": json.dumps(
        dict(set=name, channel_order="RGB", reference_commit=REFERENCE_COMMIT_EXPECTED), sort_keys=True)})
    sd = model.state_dict()
    g = crop // spec["backbone"]["patch"]
    t2 = time.time()
    checks = verify_set(spec, cfg, out)
    verify_s = time.time() - t2
    bb = spec["backbone"]
    resize = [t for t in cfg.test_pipeline if t["type"] == "Resize"][0]
    return dict(
        config=spec["config"],
        overrides={k: (list(v) if isinstance(v, tuple) else v) for k, v in overrides.items()},
        checkpoint=ckpt_path.name,
        tensors=tensor_path.name,
        iteration=iters,
        crop=crop, stride=stride, patch_size=bb["patch"], embed_dim=bb["embed"], depth=bb["depth"],
        num_heads=bb["heads"], out_indices=bb["out_indices"], num_queries=spec["head"]["queries"],
        decoder_layers=spec["head"]["dec_layers"], feat_channels=spec["head"]["feat"],
        test_resize_scale=list(resize["scale"]), test_fit_size=sorted(resize["scale"]),
        checkpoint_info=dict(keys=["meta", "state_dict"], state_dict_entries=len(sd),
                             state_dict_numel=int(sum(v.numel() for v in sd.values())),
                             meta_time=FIXTURE_TIME_NOTE, meta_keys=list(meta.keys()),
                             dataset_meta_classes=list(meta["dataset_meta"]["classes"])),
        perturbation=perturbation,
        tensor_descriptions=describe(tensors, tensor_meanings(spec, len(boxes))),
        geometry=dict(crop=[crop, crop], stride=[stride, stride], patch=bb["patch"],
                      patch_grid=[g, g], unseen_trailing_pixels=crop - g * bb["patch"],
                      slide_image_hw=[h, w], slide_windows_y1y2x1x2=[list(b) for b in boxes],
                      slide_window_count=len(boxes), max_windows_per_pixel=int(count.max())),
        checks=checks,
        timings_s=dict(build_and_perturb=round(build_s, 2), forward_window_and_slide=round(run_s, 2),
                       checks=round(verify_s, 2)),
    ), raw



@torch.no_grad()
def verify_set(spec: dict, cfg, out: Path) -> dict:
    """Re-check what was written, with a model rebuilt from the saved checkpoint (weights_only=True).

    - the checkpoint round-trips (strict load) and reproduces window_scores and slide_scores bit for bit;
    - slide_scores equals the sum of independent whole-window predictions over mmseg's boxes / window count;
    - the last (crop mod patch) rows and columns of a window are never seen: changing them changes nothing;
    - scores are finite, have 19 classes and lie in [0, num_queries] (softmax·sigmoid summed over queries).
    """
    from safetensors.torch import load_file

    ckpt = torch.load(str(out / spec["checkpoint"]), map_location="cpu", weights_only=True)
    assert set(ckpt) == {"meta", "state_dict"}, set(ckpt)
    model = build_model(cfg)
    model.load_state_dict(ckpt["state_dict"], strict=True)
    t = load_file(str(out / spec["tensors"]))
    crop, stride = spec["crop"], spec["stride"]
    queries = spec["head"]["queries"]
    res = {}

    again = run_window(model, t["window_image"].numpy())
    res["window_scores_reproduced_from_checkpoint"] = bool(torch.equal(again["window_scores"], t["window_scores"]))
    slide, _ = run_slide(model, t["slide_image"].numpy())
    res["slide_scores_reproduced_from_checkpoint"] = bool(torch.equal(slide["slide_scores"], t["slide_scores"]))

    full = t["slide_image"].numpy()
    h, w = full.shape[:2]
    acc = torch.zeros(1, CITYSCAPES_CLASSES_N, h, w)
    cnt = torch.zeros(1, 1, h, w)
    for y1, y2, x1, x2 in slide_windows(h, w, crop, stride):
        acc[..., y1:y2, x1:x2] += run_window(model, full[y1:y2, x1:x2])["window_scores"]
        cnt[..., y1:y2, x1:x2] += 1
    manual = acc / cnt
    res["slide_scores_vs_mean_of_whole_window_runs_max_abs"] = float((manual - t["slide_scores"]).abs().max())
    res["window_count_matches"] = bool(torch.equal(cnt[0, 0].to(torch.uint8), t["slide_window_count"]))

    seen = (crop // spec["backbone"]["patch"]) * spec["backbone"]["patch"]
    changed = t["window_image"].numpy().copy()
    changed[seen:, :, :] = 255 - changed[seen:, :, :]
    changed[:, seen:, :] = 255 - changed[:, seen:, :]
    res["unseen_border_px"] = crop - seen
    res["changing_unseen_border_changes_scores"] = not bool(
        torch.equal(run_window(model, changed)["window_scores"], t["window_scores"]))

    for key in ("window_scores", "slide_scores"):
        v = t[key]
        assert v.shape[1] == CITYSCAPES_CLASSES_N and torch.isfinite(v).all(), key
        assert 0.0 <= float(v.min()) and float(v.max()) <= queries, key
        res[f"{key}_min_max"] = [float(v.min()), float(v.max())]
        res[f"{key}_argmax_classes_present"] = int(v.argmax(1).unique().numel())
    assert res["window_scores_reproduced_from_checkpoint"] and res["slide_scores_reproduced_from_checkpoint"], res
    assert res["slide_scores_vs_mean_of_whole_window_runs_max_abs"] < 1e-5, res
    assert res["window_count_matches"] and not res["changing_unseen_border_changes_scores"], res
    return res


def generate_fullsize(reference_repo: Path, out: Path) -> dict:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    rel = SETS["gta"]["config"]
    cfg, overrides = load_config(reference_repo, rel, None, fullsize=True)
    t0 = time.time()
    model = build_model(cfg)
    perturbation = perturb(model, seed=4242)
    crop, stride = cfg.crop_size[0], cfg.stride_size[0]
    window = make_image(crop, crop, 901)
    perturbation["cls_embed"] = diversify_classes(model, window)
    build_s = time.time() - t0
    meta = published_meta(cfg, rel, cfg.train_cfg.max_iters)
    ckpt = out / "vltseg_checkpoint_fullsize_gta.pth"
    save_published(model, meta, ckpt)
    h, w = 512, 940  # 1 x 3 windows (columns 0, 426, 428)
    full = make_image(h, w, 902)
    tensors = {"window_image": torch.from_numpy(window), "slide_image": torch.from_numpy(full)}
    t1 = time.time()
    tensors.update(run_window(model, window))
    window_s = time.time() - t1
    t2 = time.time()
    slide, calls = run_slide(model, full)
    slide_s = time.time() - t2
    tensors.update(slide)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    save_file(tensors, str(out / "reference_fullsize_gta.safetensors"), metadata={"channel_order": "RGB"})
    boxes = slide_windows(h, w, crop, stride)
    assert len(calls) == len(boxes)
    manifest = dict(
        config=rel, overrides=overrides, perturbation=perturbation, versions=versions(),
        reference_commit=reference_commit(reference_repo),
        tensors={k: dict(shape=list(v.shape), dtype=str(v.dtype)) for k, v in tensors.items()},
        geometry=dict(crop=crop, stride=stride, slide_image_hw=[h, w],
                      slide_windows_y1y2x1x2=[list(b) for b in boxes]),
        timings_s=dict(build_and_perturb=round(build_s, 1), forward_one_512_window=round(window_s, 1),
                       slide_3_windows=round(slide_s, 1)),
        files={p.name: dict(bytes=p.stat().st_size, sha256=sha256(p)) for p in sorted(out.iterdir())
               if p.name != "MANIFEST.json"},
    )
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference-repo", type=Path, required=True, help="a checkout of GitHub VLTSeg/VLTSeg")
    ap.add_argument("--out", type=Path, default=Path("tests/fixtures/reference"))
    ap.add_argument("--sets", default=",".join(SETS), help=f"comma-separated, of {', '.join(SETS)}")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (recorded; fixed for determinism)")
    ap.add_argument("--fullsize-out", type=Path, default=None,
                    help="also write the full-size ViT-L/14 parity files here (~1.4 GB; keep outside the repo)")
    ap.add_argument("--only-fullsize", action="store_true")
    args = ap.parse_args()

    reference_repo = args.reference_repo.resolve()
    if not (reference_repo / "vltseg" / "models" / "eva02.py").is_file():
        ap.error(f"{reference_repo} is not a VLTSeg checkout (no vltseg/models/eva02.py)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)

    install_stubs()
    sys.path.insert(0, str(reference_repo))
    from mmengine.logging import MMLogger
    from mmengine.registry import init_default_scope

    MMLogger.get_instance("mmengine", log_level="WARNING")
    logging.getLogger("mmengine").setLevel(logging.WARNING)
    init_default_scope("mmseg")
    importlib.import_module("vltseg")  # the reference's package: registers EVA02, Mask2FormerHeadFixed, datasets

    commit = reference_commit(reference_repo)
    if not commit.startswith(REFERENCE_COMMIT_EXPECTED):
        print(f"warning: reference checkout is at {commit}, fixtures were made at {REFERENCE_COMMIT_EXPECTED}",
              file=sys.stderr)

    if not args.only_fullsize:
        out = args.out
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        sets, raw = {}, None
        for name in [s for s in args.sets.split(",") if s]:
            print(f"[{name}] generating", flush=True)
            sets[name], set_raw = generate_set(name, SETS[name], reference_repo, out)
            raw = raw or set_raw
        files = {}
        for p in sorted(out.iterdir()):
            if p.name == "MANIFEST.json" or not p.is_file():
                continue
            files[p.name] = dict(bytes=p.stat().st_size, sha256=sha256(p), weights_only=None)
            if p.suffix == ".pth":
                files[p.name]["weights_only"] = weights_only_loads(p)
                files[p.name]["unsafe_globals"] = unsafe_globals(p)
        manifest = dict(
            generator="scripts/reference_fixtures.py",
            generated_utc=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            generation_seconds=round(time.time() - t0, 1),
            reference=dict(repository="GitHub VLTSeg/VLTSeg", commit=commit),
            versions=versions(),
            channel_order=("images stored as uint8 RGB (HxWx3); the reference (SegDataPreProcessor, "
                           "bgr_to_rgb=True) was fed the channels reversed (BGR, as its cv2 loader gives), so it "
                           "normalised these RGB values: (rgb - [123.675, 116.28, 103.53]) / [58.395, 57.12, 57.375]"),
            resizing="none: windows and images were fed to the model at their stored size",
            checkpoint_layout=("vltseg_checkpoint_tiny_*.pth: exactly {'meta','state_dict'} written by "
                               "mmengine.runner.checkpoint.save_checkpoint, as the published VLTSeg files; "
                               "iter_40.pth: mmengine Runner layout with message_hub, optimizer, param_schedulers"),
            sets=sets,
            raw_training_checkpoint=raw,
            files=files,
        )
        (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
        print(json.dumps({k: v["bytes"] for k, v in files.items()}, indent=1))
        print(f"done in {time.time() - t0:.1f} s")

    if args.fullsize_out is not None:
        if os.path.commonpath([args.fullsize_out.resolve(), Path.cwd().resolve()]) == str(Path.cwd().resolve()) \
                and (Path.cwd() / ".git").exists():
            ap.error("--fullsize-out must be outside the repository (the files are ~1.4 GB)")
        print("[fullsize] generating", flush=True)
        m = generate_fullsize(reference_repo, args.fullsize_out)
        print(json.dumps(m["timings_s"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
