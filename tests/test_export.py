"""ONNX export: onnxruntime reproduces PyTorch on CPU (fp32, max abs error <= 1e-3) with a dynamic batch."""
from __future__ import annotations

import json

import numpy as np
import onnxruntime
import pytest
import torch

from vltseg_ros.checkpoint import load_checkpoint
from vltseg_ros.cli import main as cli
from vltseg_ros.export import ExportGraph, export_onnx, fixed_size_copy


def test_fixed_size_copy_matches_the_dynamic_model(tiny_model):
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        a = tiny_model(images)["seg_scores"]
        b = fixed_size_copy(tiny_model, 64, 96)(images)["seg_scores"]
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        fixed_size_copy(tiny_model, 65, 96)


def test_seg_and_det_export_matches_pytorch_at_any_batch(tmp_path, tiny_model, tiny_checkpoint):
    _, meta = load_checkpoint(tiny_checkpoint)
    path = str(tmp_path / "m.onnx")
    report = export_onnx(tiny_model, meta, path, 64, 128, batch=2)  # traced at 2, checked at 3 and 1
    assert report["outputs"] == ["seg_scores", "boxes", "scores", "labels", "count"]
    assert report["dynamic_batch"]
    assert all(e is not None and e <= 1e-3 for e in report["max_abs_error"].values()), report
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    graph = ExportGraph(fixed_size_copy(tiny_model, 64, 128))
    images = torch.randn(1, 3, 64, 128, generator=torch.Generator().manual_seed(5)) * 2
    got = dict(zip(report["outputs"], session.run(None, {"images": images.numpy()})))
    with torch.no_grad():
        ref = dict(zip(report["outputs"], graph(images)))
    assert got["boxes"].shape == (1, 100, 4) and got["count"].shape == (1,)
    np.testing.assert_array_equal(got["count"], ref["count"].numpy())
    assert (got["count"] > 0).all(), "random weights at score threshold 0.05 should give boxes"
    for b, n in enumerate(got["count"]):
        np.testing.assert_array_equal(got["labels"][b, :n], ref["labels"][b, :n].numpy())
        np.testing.assert_allclose(got["boxes"][b, :n], ref["boxes"][b, :n].numpy(), atol=1e-3)
        np.testing.assert_allclose(got["scores"][b, :n], ref["scores"][b, :n].numpy(), atol=1e-4)


def test_seg_only_export_has_dynamic_batch(tmp_path, capsys):
    ckpt = str(tmp_path / "seg.safetensors")
    assert cli(["checkpoint", "new", "--model", "eva02_tiny", "--out", ckpt, "--mode", "whole", "--size",
                "64x96"]) == 0
    out = str(tmp_path / "seg.onnx")
    assert cli(["export", "--checkpoint", ckpt, "--onnx", out]) == 0
    text = capsys.readouterr().out
    report = json.loads(text[text.index("{"):text.rindex("}") + 1])
    assert report["dynamic_batch"] and report["max_abs_error"]["seg_scores"] <= 1e-3
    session = onnxruntime.InferenceSession(out, providers=["CPUExecutionProvider"])
    model, _ = load_checkpoint(ckpt)
    graph = ExportGraph(fixed_size_copy(model, 64, 96))
    for batch in (1, 3):
        images = torch.randn(batch, 3, 64, 96)
        got = session.run(None, {"images": images.numpy()})[0]
        with torch.no_grad():
            ref = graph(images)[0].numpy()
        assert got.shape == (batch, 19, 64, 96)
        assert np.abs(got - ref).max() <= 1e-3
