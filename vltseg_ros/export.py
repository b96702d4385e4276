"""ONNX export of the network (encoder + heads) for onnxruntime / TensorRT deployments, with a numerical check.

The graph takes normalised images [B, 3, H, W] (dynamic batch) at one fixed size (position embedding resampled and
RoPE grid precomputed for it, so the graph has no resampling) and returns ``seg_scores`` [B, K, H, W] and, with a
detection head, ``boxes`` [B, D, 4] xyxy, ``scores`` [B, D], ``labels`` [B, D] (0-based detection classes) and
``count`` [B] (image b's detections are its first ``count[b]`` rows; the layout of TensorRT's EfficientNMS).
The detection head's fixed-shape inference path (``DetectionHead.infer``) has no per-image loops, so tracing keeps
the batch dynamic; its NMS is unrolled for ``nms_unroll`` steps.
"""
from __future__ import annotations

import copy
import warnings
from typing import Optional

import numpy as np
import timm
import torch
from timm.layers import resample_abs_pos_embed
from torch import Tensor, nn

from .checkpoint import CheckpointMeta
from .model import VLTSeg
from .model.encoder import ENCODERS


def fixed_size_copy(model: VLTSeg, height: int, width: int) -> VLTSeg:
    """A copy of ``model`` whose encoder is built for exactly (height, width): same weights, no dynamic resizing."""
    if height % model.patch_size or width % model.patch_size:
        raise ValueError(f"export size {height}x{width} must be a multiple of the patch size {model.patch_size}")
    fixed = copy.deepcopy(model).eval()
    spec = ENCODERS[model.cfg.encoder.name]
    old = model.encoder.trunk
    new = timm.create_model(spec.timm_name, pretrained=False, num_classes=0, img_size=(height, width),
                            dynamic_img_size=False, **spec.overrides)
    state = old.state_dict()
    prefix = 0 if getattr(old, "no_embed_class", False) else old.num_prefix_tokens
    state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], new_size=new.patch_embed.grid_size,
                                                old_size=old.patch_embed.grid_size, num_prefix_tokens=prefix)
    new.load_state_dict(state, strict=True)
    fixed.encoder.trunk = new.eval()
    return fixed


class ExportGraph(nn.Module):
    """Flat tensor outputs of the network for tracing."""

    def __init__(self, model: VLTSeg):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        """Normalised images -> (seg_scores?, boxes?, scores?, labels?, count?) for the heads present."""
        out = self.model(images)
        outputs: tuple[Tensor, ...] = ()
        if "seg_scores" in out:
            outputs += (out["seg_scores"],)
        if "detections" in out:
            det = out["detections"]
            outputs += (det["boxes"], det["scores"], det["labels"], det["count"])
        return outputs


def output_names(model: VLTSeg) -> list[str]:
    """Names of the exported outputs, in order."""
    names = ["seg_scores"] if model.seg_head is not None else []
    return names + (["boxes", "scores", "labels", "count"] if model.det_head is not None else [])


def export_onnx(model: VLTSeg, meta: CheckpointMeta, path: str, height: int, width: int, batch: int = 1,
                opset: int = 17) -> dict:
    """Export (traced with ``batch`` images, dynamic batch) and verify with onnxruntime on CPU with a different
    batch size; returns the max abs error per output."""
    fixed = fixed_size_copy(model.cpu().eval(), height, width)
    graph = ExportGraph(fixed).eval()
    names = output_names(fixed)
    example = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(0))
    axes = {name: {0: "batch"} for name in ["images", *names]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow in torchvision/timm
        with torch.no_grad():
            torch.onnx.export(graph, (example,), path, input_names=["images"], output_names=names,
                              dynamic_axes=axes, opset_version=opset, dynamo=False)
    errors = verify_onnx(path, graph, torch.randn(batch + 1, 3, height, width,
                                                  generator=torch.Generator().manual_seed(1)), names)
    return {"path": path, "outputs": names, "dynamic_batch": True, "input_size": [height, width],
            "max_abs_error": errors, "normalization": {"mean": meta.normalization.mean, "std": meta.normalization.std}}


def verify_onnx(path: str, graph: nn.Module, images: Tensor, names: list[str]) -> dict[str, Optional[float]]:
    """Max abs difference between onnxruntime and PyTorch for each output on ``images``."""
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        ref = graph(images)
    errors: dict[str, Optional[float]] = {}
    for name, a, b in zip(names, got, ref):
        b = b.numpy()
        errors[name] = float(np.abs(a.astype(np.float64) - b).max()) if a.shape == b.shape and a.size else (
            0.0 if a.shape == b.shape else None)
    return errors
