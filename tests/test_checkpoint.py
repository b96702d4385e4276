"""Checkpoint format: bit-exact round trip and one clear error for every kind of bad file."""
from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

from vltseg_ros.checkpoint import (
    FORMAT_VERSION, METADATA_KEY, CheckpointError, CheckpointMeta, load_checkpoint, load_extra, read_meta,
    save_checkpoint,
)
from vltseg_ros.cli import main as cli
from vltseg_ros.config import model_preset


def _rewrite(src: str, dst: str, tensors=None, meta_edit=None) -> None:
    """Copy a checkpoint, optionally changing its tensors or its metadata dict."""
    from safetensors import safe_open

    with safe_open(src, "pt") as f:
        meta = json.loads(f.metadata()[METADATA_KEY])
    if meta_edit:
        meta_edit(meta)
    save_file(tensors if tensors is not None else load_file(src), dst, metadata={METADATA_KEY: json.dumps(meta)})


def test_round_trip_is_bit_exact(tiny_checkpoint, tiny_model):
    model, meta = load_checkpoint(tiny_checkpoint)
    original = tiny_model.state_dict()
    loaded = model.state_dict()
    assert original.keys() == loaded.keys()
    for key, value in original.items():
        assert loaded[key].dtype == value.dtype
        assert torch.equal(loaded[key], value), key
    assert meta.provenance == {"test": True}
    assert meta.model == tiny_model.cfg


def test_round_trip_keeps_config_and_extra_tensors(tmp_path, tiny_model, tiny_config):
    path = str(tmp_path / "with_extra.safetensors")
    meta = CheckpointMeta(model=tiny_config, provenance={"iteration": 7})
    step = torch.tensor([7])
    save_checkpoint(path, tiny_model, meta, extra={"optimizer/step": step})
    assert torch.equal(load_extra(path)["optimizer/step"], step)
    again = read_meta(path)
    assert again.to_json() == meta.to_json()
    load_checkpoint(path)  # extra tensors are not "unexpected" weights


def test_missing_file():
    with pytest.raises(CheckpointError, match="checkpoint not found: /no/such/file.safetensors"):
        load_checkpoint("/no/such/file.safetensors")


def test_pickle_file_is_refused_not_unpickled(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps({"state_dict": Evil()}))
    with pytest.raises(CheckpointError, match="not a safetensors checkpoint"):
        load_checkpoint(str(path))
    assert not marker.exists()


def test_garbage_and_truncated_files(tmp_path, tiny_checkpoint):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="not a safetensors checkpoint"):
        load_checkpoint(str(garbage))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(open(tiny_checkpoint, "rb").read()[:5000])
    with pytest.raises(CheckpointError, match="not a safetensors checkpoint"):
        load_checkpoint(str(truncated))


def test_plain_safetensors_without_metadata(tmp_path, tiny_model):
    path = str(tmp_path / "plain.safetensors")
    save_file({k: v.contiguous() for k, v in tiny_model.state_dict().items()}, path)
    with pytest.raises(CheckpointError, match="no 'vltseg_ros' metadata"):
        load_checkpoint(path)


def test_wrong_version(tmp_path, tiny_checkpoint):
    path = str(tmp_path / "future.safetensors")
    _rewrite(tiny_checkpoint, path, meta_edit=lambda m: m.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(CheckpointError, match=f"format version {FORMAT_VERSION + 1} is not supported"):
        load_checkpoint(path)


def test_invalid_config_in_metadata(tmp_path, tiny_checkpoint):
    path = str(tmp_path / "badcfg.safetensors")
    _rewrite(tiny_checkpoint, path, meta_edit=lambda m: m["model"]["encoder"].update(name="vit_giant"))
    with pytest.raises(CheckpointError, match="unknown encoder 'vit_giant'"):
        load_checkpoint(path)
    _rewrite(tiny_checkpoint, path, meta_edit=lambda m: m["model"].update(colour="blue"))
    with pytest.raises(CheckpointError, match=r"unknown key\(s\) \['colour'\]"):
        load_checkpoint(path)
    _rewrite(tiny_checkpoint, path, meta_edit=lambda m: m["model"]["seg_head"].update(num_queries="many"))
    with pytest.raises(CheckpointError, match=r"model.seg_head.num_queries: expected a number, got 'many'"):
        load_checkpoint(path)


def test_missing_and_unexpected_keys_are_named(tmp_path, tiny_checkpoint):
    tensors = load_file(tiny_checkpoint)
    removed = "seg_head.query_feat.weight"
    assert removed in tensors
    del tensors[removed]
    tensors["seg_head.surprise"] = torch.zeros(3)
    path = str(tmp_path / "keys.safetensors")
    _rewrite(tiny_checkpoint, path, tensors=tensors)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert f"missing [{removed}]" in str(info.value)
    assert "unexpected [seg_head.surprise]" in str(info.value)


def test_shape_mismatch_is_named(tmp_path, tiny_checkpoint):
    tensors = load_file(tiny_checkpoint)
    key = "encoder.trunk.pos_embed"
    tensors[key] = torch.zeros(1, 5, tensors[key].shape[-1])
    path = str(tmp_path / "shape.safetensors")
    _rewrite(tiny_checkpoint, path, tensors=tensors)
    with pytest.raises(CheckpointError, match=r"shape mismatch \[encoder.trunk.pos_embed: file \(1, 5, 64\)"):
        load_checkpoint(path)


def test_weights_of_another_config_do_not_half_load(tmp_path, tiny_checkpoint):
    """A seg-only config cannot silently take a seg+det file's tensors: the det weights are unexpected."""
    path = str(tmp_path / "segonly.safetensors")
    seg_only = model_preset("eva02_tiny", ("seg",))
    from vltseg_ros.config import to_dict

    _rewrite(tiny_checkpoint, path, meta_edit=lambda m: m.update(model=to_dict(seg_only)))
    with pytest.raises(CheckpointError, match=r"unexpected \[det_head\."):
        load_checkpoint(path)


def test_cli_new_and_info(tmp_path, capsys):
    path = str(tmp_path / "cli.safetensors")
    assert cli(["checkpoint", "new", "--model", "eva02_tiny", "--heads", "seg,det", "--out", path,
                "--mode", "slide", "--fit-size", "256x512", "--window", "256", "--stride", "200"]) == 0
    meta = read_meta(path)
    assert meta.model.det_head is not None and meta.model.seg_head is not None
    assert (meta.inference.mode, meta.inference.window, meta.inference.stride) == ("slide", 256, 200)
    assert meta.provenance["trained"] is False
    capsys.readouterr()
    assert cli(["checkpoint", "info", path]) == 0
    out = capsys.readouterr().out
    assert "eva02_tiny" in out and "seg, det" in out and "person, rider, car" in out
    assert cli(["checkpoint", "info", path, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["format_version"] == FORMAT_VERSION


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert cli(["checkpoint", "info", str(tmp_path / "nope.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vltseg: error: checkpoint not found") and "Traceback" not in err
    assert cli(["checkpoint", "new", "--model", "resnet50", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "unknown model 'resnet50'" in capsys.readouterr().err
    assert cli(["checkpoint", "new", "--model", "eva02_tiny", "--heads", "seg,mask",
                "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "choose from 'seg' and 'det'" in capsys.readouterr().err


def test_input_statistics_travel_with_the_network(tmp_path, tiny_model, tiny_config):
    """The checkpoint's normalisation becomes the loaded network's own, which the predictor and trainer use."""
    from vltseg_ros.config import NormalizationConfig

    path = str(tmp_path / "stats.safetensors")
    stats = NormalizationConfig(mean=[10.0, 20.0, 30.0], std=[2.0, 4.0, 8.0])
    save_checkpoint(path, tiny_model, CheckpointMeta(model=tiny_config, normalization=stats))
    model, meta = load_checkpoint(path)
    assert meta.normalization == stats and model.normalization == stats
    images = torch.full((1, 3, 2, 2), 42.0)
    mean, std = torch.tensor([10.0, 20.0, 30.0]), torch.tensor([2.0, 4.0, 8.0])
    expected = (images - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    torch.testing.assert_close(model.normalize(images), expected)
    assert set(model.state_dict()) == set(tiny_model.state_dict())  # statistics are metadata, not weights
