"""Evaluation: sharded over processes equals one process exactly, the paper's per-dataset test sizes, and which
checkpoint of a run is reported."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from vltseg_train.datasets import ACDCDataset, build_dataset
from vltseg_train.evaluate import dataset_inference, describe_checkpoint, resolve_checkpoint
from vltseg_ros.checkpoint import CheckpointError, CheckpointMeta, read_meta, save_checkpoint
from vltseg_ros.config import EVAL_PROTOCOLS, InferenceConfig, evaluation_protocol, model_preset
from vltseg_ros.model import build_model

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port nobody listens on right now (for torchrun's rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def seg_det_checkpoint(tmp_path):
    """A tiny seg+det checkpoint whose random detector still emits boxes on the synthetic frames."""
    import torch

    torch.manual_seed(0)
    cfg = model_preset("eva02_tiny", ("seg", "det"))
    path = tmp_path / "model.safetensors"
    inference = InferenceConfig(mode="whole", size=[64, 128], fit_size=[64, 128], window=64, stride=48)
    save_checkpoint(str(path), build_model(cfg), CheckpointMeta(model=cfg, inference=inference))
    return path


def _evaluate(checkpoint: Path, synth_root: str, out: Path, processes: int) -> dict:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                "--master_port", str(free_port())] if processes > 1 else [sys.executable]
    cmd = [*launcher, "-m", "vltseg_train.evaluate", "--checkpoint", str(checkpoint), "--device", "cpu",
           "--data", f"cityscapes:{synth_root}:train:train", "--data", f"cityscapes:{synth_root}:val:val",
           "--limit", "7", "--out", str(out)]
    result = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                            timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


def test_sharded_evaluation_equals_one_process_exactly(tmp_path, synth_root, seg_det_checkpoint):
    """Two gloo processes each score half of every dataset (7 and 4 images: uneven shards); rank 0 merges the
    confusion matrices and the per-image detections in sample order."""
    single = _evaluate(seg_det_checkpoint, synth_root, tmp_path / "single", 1)
    sharded = _evaluate(seg_det_checkpoint, synth_root, tmp_path / "sharded", 2)
    assert sharded["processes"] == 2 and single["processes"] == 1
    for domain in ("train", "val"):
        a, b = single["results"][domain], sharded["results"][domain]
        assert a["images"] == b["images"] == (7 if domain == "train" else 4)
        assert a["segmentation"] == b["segmentation"]
        assert a["detection"] == b["detection"]
        assert a["detection"]["num_det"] > 0 and a["detection"]["num_gt"] > 0
        assert len(a["latency_ms"]) == len(b["latency_ms"])


def test_protocols_are_recognised_from_the_checkpoint():
    assert evaluation_protocol(EVAL_PROTOCOLS["synthetic"]) == "synthetic"
    assert evaluation_protocol(EVAL_PROTOCOLS["real"]) == "real"
    assert evaluation_protocol(InferenceConfig(mode="whole", size=[64, 128])) is None


@pytest.mark.parametrize("protocol, expected", [("synthetic", [540, 960]), ("real", [1080, 1920])])
def test_acdc_is_tested_at_its_own_size_per_protocol(tmp_path, protocol, expected):
    import dataset_fixtures as fx

    fx.write_acdc(tmp_path)
    acdc = ACDCDataset(tmp_path, "val")
    assert dataset_inference(acdc, EVAL_PROTOCOLS[protocol]).fit_size == expected
    custom = InferenceConfig(mode="slide", fit_size=[256, 512], window=256, stride=200)
    assert dataset_inference(acdc, custom) == custom  # custom settings apply as given


def test_other_datasets_keep_the_protocol_size(synth_root):
    cityscapes = build_dataset("cityscapes", synth_root, "val")
    assert dataset_inference(cityscapes, EVAL_PROTOCOLS["synthetic"]).fit_size == [512, 1024]


def test_a_run_directory_means_its_final_checkpoint(tmp_path, seg_det_checkpoint):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(CheckpointError, match="no final checkpoint"):
        resolve_checkpoint(str(run))
    final = run / "final.safetensors"
    final.write_bytes(seg_det_checkpoint.read_bytes())
    assert resolve_checkpoint(str(run)) == str(final)
    assert resolve_checkpoint(str(final)) == str(final)
    with pytest.raises(CheckpointError, match="data.select"):
        resolve_checkpoint(str(run), "best")
    assert "iteration" in describe_checkpoint(str(final), read_meta(str(final)))
