"""Precision "auto": bf16 only where the device computes it natively, asked of torch; explicit names win; the
choice reaches the predictor, the trainer's log and the checkpoint metadata."""
from __future__ import annotations

import contextlib

import pytest
import torch

from vltseg_ros import precision as precision_module
from vltseg_ros.checkpoint import read_meta
from vltseg_ros.precision import cpu_bf16_support, resolve_precision
from vltseg_ros.predictor import Predictor

# (AVX512-BF16, AMX, oneDNN bf16, ATen capability) as torch reports them
AVX2_ONLY = (False, False, False, "AVX2")  # e.g. a cloud VM's EPYC Rome or a Haswell..Coffee Lake laptop
SKYLAKE_AVX512 = (False, False, True, "AVX512")  # oneDNN "supports" bf16 here, by emulation
COOPER_LAKE = (True, False, True, "AVX512")
SAPPHIRE_RAPIDS = (True, True, True, "AVX512")
CAPPED_TO_AVX2 = (True, True, False, "AVX2")  # native hardware under ATEN_CPU_CAPABILITY/ONEDNN_MAX_CPU_ISA=avx2


@pytest.fixture
def cpu_reports(monkeypatch):
    """Make torch's CPU capability queries report a given CPU."""

    def report(facts: tuple[bool, bool, bool, str]) -> None:
        avx512_bf16, amx, onednn, capability = facts
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn)
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)

    return report


@pytest.mark.parametrize("facts, expected", [
    (AVX2_ONLY, "fp32"), (SKYLAKE_AVX512, "fp32"), (CAPPED_TO_AVX2, "fp32"),
    (COOPER_LAKE, "bf16"), (SAPPHIRE_RAPIDS, "bf16"),
])
def test_auto_on_cpu_is_bf16_only_with_native_bf16(cpu_reports, facts, expected):
    cpu_reports(facts)
    assert resolve_precision("auto", "cpu") == expected
    assert cpu_bf16_support().native == (expected == "bf16")


@pytest.mark.parametrize("facts", [AVX2_ONLY, SAPPHIRE_RAPIDS])
@pytest.mark.parametrize("name", ["fp32", "bf16", "fp16"])
def test_explicit_precision_wins(cpu_reports, facts, name):
    cpu_reports(facts)
    assert resolve_precision(name, "cpu") == name


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_on_cuda_follows_native_bf16(monkeypatch, native, expected):
    asked = []
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: asked.append(including_emulation) or native)
    assert resolve_precision("auto", "cuda:0") == expected
    assert asked == [False]  # emulated bf16 (pre-Ampere GPUs) does not count


def test_unknown_precision_is_rejected():
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("int8", "cpu")


@pytest.mark.parametrize("facts, expected", [(AVX2_ONLY, "fp32"), (SAPPHIRE_RAPIDS, "bf16")])
def test_predictor_resolves_auto_by_default(cpu_reports, tiny_checkpoint, facts, expected):
    cpu_reports(facts)
    assert Predictor.from_checkpoint(tiny_checkpoint).precision == expected
    assert Predictor.from_checkpoint(tiny_checkpoint, precision="auto").precision == expected


def test_trainer_prints_and_records_the_resolved_precision(cpu_reports, tmp_path, capsys):
    from vltseg_train.config import config_from_dict
    from vltseg_ros.synth import write_split
    from vltseg_train.train import Trainer

    cpu_reports(AVX2_ONLY)
    write_split(str(tmp_path / "data"), "train", 2, seed=0, height=32, width=64, style="synthetic")
    cfg = config_from_dict({
        "output_dir": str(tmp_path / "run"), "model": {"preset": "eva02_tiny", "heads": ["seg"]},
        "data": {"train": {"name": "cityscapes", "root": str(tmp_path / "data"), "split": "train"},
                 "crop_size": [32, 32], "workers": 0},
        "schedule": {"iterations": 1, "batch_size": 1, "eval_interval": 0, "checkpoint_interval": 1},
        "inference": {"mode": "whole", "size": [32, 64], "fit_size": [32, 64], "window": 32, "stride": 32},
    })
    assert cfg.precision == "auto"  # the default
    summary = Trainer(cfg, device="cpu", resume=None, progress=False).train()
    assert "precision: auto -> fp32 on cpu" in capsys.readouterr().out
    provenance = read_meta(summary["final"]).provenance
    assert provenance["precision"] == "fp32" and provenance["config"]["precision"] == "auto"
    assert provenance["machine"]["bf16"] == precision_module.cpu_bf16_support().describe()
