"""ONNX export: onnxruntime reproduces PyTorch on CPU (fp32, max abs error <= 1e-3), dynamic batch for seg-only."""
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


def test_seg_and_det_export_matches_pytorch(tmp_path, tiny_model, tiny_checkpoint):
    _, meta = load_checkpoint(tiny_checkpoint)
    report = export_onnx(tiny_model, meta, str(tmp_path / "m.onnx"), 64, 128)
    assert report["outputs"] == ["seg_scores", "boxes", "scores", "labels"]
    assert not report["dynamic_batch"] and report["batch"] == 1
    assert all(e is not None and e <= 1e-3 for e in report["max_abs_error"].values()), report


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
