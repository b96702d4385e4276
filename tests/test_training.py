"""Training: recipe pieces (config, optimiser groups, schedule, data stream), kill-and-resume exactness,
2-process torchrun (gloo), and the eval report."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from vltseg_train.config import ConfigError, load_config
from vltseg_train.train import StreamSampler, Trainer, build_optimizer, learning_rate, set_learning_rates
from vltseg_ros.checkpoint import load_checkpoint, read_meta

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(tmp_path: Path, synth_root: str, name: str = "run", heads: str = "[seg, det]",
                iterations: int = 6, extra: str = "") -> Path:
    """A tiny run config file."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"""
name: {name}
output_dir: {tmp_path / name}
precision: fp32
model: {{preset: eva02_tiny, heads: {heads}}}
data:
  train: {{name: cityscapes, root: {synth_root}, split: train}}
  val: [{{name: cityscapes, root: {synth_root}, split: val, label: synth-val}}]
  crop_size: [64, 64]
  workers: 0
optim: {{poly_begin: 2}}
schedule: {{iterations: {iterations}, batch_size: 2, checkpoint_interval: 2, eval_interval: 0, log_interval: 1,
           image_log_interval: 3}}
inference: {{mode: whole, size: [64, 128], fit_size: [64, 128], window: 64, stride: 48}}
{extra}
""")
    return path


def test_config_inheritance_and_overrides(tmp_path):
    cfg = load_config(str(ROOT / "training" / "configs" / "synthia_eva02_l14.yaml"),
                      ["optim.lr=2e-4", "data.train.root=/data/synthia", "schedule.batch_size=8"])
    assert cfg.data.train.name == "synthia" and cfg.data.train.root == "/data/synthia"
    assert cfg.data.resize == [1280, 720] and cfg.data.crop_size == [512, 512]  # inherited from the GTA5 config
    assert cfg.optim.lr == 2e-4 and cfg.optim.encoder_lr_mult == 0.1 and cfg.optim.grad_clip == 0.01
    assert cfg.schedule.batch_size == 8 and cfg.schedule.iterations == 5000
    assert (cfg.inference.mode, cfg.inference.window, cfg.inference.stride) == ("slide", 512, 426)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['lrr'\]"):
        load_config(str(ROOT / "training" / "configs" / "gta5_eva02_l14.yaml"), ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "missing.yaml"))


def test_overrides_reach_into_lists():
    """The README's own command sets a validation set's root by its index."""
    cfg = load_config(str(ROOT / "training" / "configs" / "gta5_eva02_l14.yaml"),
                      ["data.val.0.root=/data/cityscapes", "data.val.3.split=test"])
    assert cfg.data.val[0].root == "/data/cityscapes" and cfg.data.val[0].name == "cityscapes"
    assert cfg.data.val[3].split == "test"
    with pytest.raises(ConfigError, match="not an index"):
        load_config(str(ROOT / "training" / "configs" / "gta5_eva02_l14.yaml"), ["data.val.9.root=/x"])
    with pytest.raises(ConfigError, match="neither a mapping nor a list"):
        load_config(str(ROOT / "training" / "configs" / "gta5_eva02_l14.yaml"), ["name.x=1"])


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "training" / "configs").glob("*.yaml")))
def test_every_shipped_config_loads(name):
    cfg = load_config(str(ROOT / "training" / "configs" / name))
    assert cfg.schedule.iterations > 0 and cfg.data.train.root


def test_optimizer_groups_follow_the_recipe(tmp_path, synth_root):
    cfg = load_config(str(tiny_config(tmp_path, synth_root)), ["optim.freeze_blocks=1"])
    trainer_model = Trainer(cfg, device="cpu", resume=None, progress=False).model
    optimizer = build_optimizer(trainer_model, cfg)
    names = {id(p): n for n, p in trainer_model.named_parameters()}
    by_name = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            by_name[names[id(p)]] = group
    assert by_name["seg_head.query_feat.weight"]["weight_decay"] == 0.0
    assert by_name["seg_head.level_embed.weight"]["weight_decay"] == 0.0
    head_layer = by_name["seg_head.layers.0.ffn.0.weight"]
    assert head_layer["lr_mult"] == 1.0 and head_layer["weight_decay"] == 0.05
    block = by_name["encoder.trunk.blocks.2.attn.q_proj.weight"]
    assert block["lr_mult"] == pytest.approx(0.1) and block["weight_decay"] == 0.05
    assert by_name["encoder.trunk.blocks.2.norm1.weight"]["weight_decay"] == 0.0
    assert "encoder.trunk.blocks.0.attn.q_proj.weight" not in by_name  # frozen block
    assert not trainer_model.encoder.trunk.blocks[0].attn.q_proj.weight.requires_grad
    assert "encoder.trunk.pos_embed" not in by_name  # frozen with the first block
    set_learning_rates(optimizer, 0, cfg)
    assert block["lr"] == pytest.approx(1e-5)


def test_layer_decay_and_frozen_warmup(tmp_path, synth_root):
    cfg = load_config(str(tiny_config(tmp_path, synth_root)), ["optim.layer_decay=0.5",
                                                               "optim.frozen_warmup_iters=3"])
    model = Trainer(cfg, device="cpu", resume=None, progress=False).model
    optimizer = build_optimizer(model, cfg)
    mults = {}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            mults[names[id(p)]] = group["lr_mult"]
    depth = len(model.encoder.trunk.blocks)  # 4
    assert mults["encoder.trunk.blocks.3.attn.q_proj.weight"] == pytest.approx(0.1 * 0.5 ** (depth + 1 - 4))
    assert mults["encoder.trunk.blocks.0.attn.q_proj.weight"] == pytest.approx(0.1 * 0.5 ** (depth + 1 - 1))
    assert mults["encoder.trunk.patch_embed.proj.weight"] == pytest.approx(0.1 * 0.5 ** (depth + 1))
    set_learning_rates(optimizer, 2, cfg)
    assert all(g["lr"] == 0 for g in optimizer.param_groups if g["is_encoder"])
    assert all(g["lr"] > 0 for g in optimizer.param_groups if not g["is_encoder"])
    set_learning_rates(optimizer, 3, cfg)
    assert all(g["lr"] > 0 for g in optimizer.param_groups)


def test_poly_schedule(tmp_path, synth_root):
    cfg = load_config(str(tiny_config(tmp_path, synth_root)), ["schedule.iterations=100", "optim.poly_begin=20"])
    assert learning_rate(0, cfg) == learning_rate(19, cfg) == 1e-4
    assert learning_rate(60, cfg) == pytest.approx(1e-4 * 0.5 ** 0.9)
    assert learning_rate(100, cfg) == 0.0


def test_stream_sampler_shards_and_restarts():
    def take(sampler, n):
        it = iter(sampler)
        return [next(it) for _ in range(n)]

    single = take(StreamSampler(10, seed=3, rank=0, world=1, batch=4), 40)
    rank0 = take(StreamSampler(10, seed=3, rank=0, world=2, batch=2), 20)
    rank1 = take(StreamSampler(10, seed=3, rank=1, world=2, batch=2), 20)
    interleaved = [x for s in range(10) for x in rank0[2 * s:2 * s + 2] + rank1[2 * s:2 * s + 2]]
    assert interleaved == single  # ranks split the same global stream
    assert sorted(i for i, _ in single[:10]) == list(range(10))  # each epoch is a permutation
    resumed = take(StreamSampler(10, seed=3, rank=0, world=1, batch=4, start_step=5), 20)
    assert resumed == single[20:]


def _run_training(config: Path, *extra: str, wait_for: str | None = None) -> subprocess.CompletedProcess | None:
    cmd = [sys.executable, "-m", "vltseg_train.train", "--config", str(config), "--device", "cpu", "--no-progress",
           *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if wait_for is None:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    deadline = time.monotonic() + 300
    while not os.path.exists(wait_for) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert os.path.exists(wait_for), proc.communicate()[0] if proc.poll() is not None else "timed out"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return None


def _assert_same_weights(a: str, b: str) -> None:
    model_a, _ = load_checkpoint(a)
    model_b, _ = load_checkpoint(b)
    sa, sb = model_a.state_dict(), model_b.state_dict()
    assert sa.keys() == sb.keys()
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, different[:5]


def test_kill_and_resume_equals_uninterrupted_run(tmp_path, synth_root):
    straight = tiny_config(tmp_path, synth_root, "straight", iterations=8)
    done = _run_training(straight)
    assert done.returncode == 0, done.stdout + done.stderr
    killed = tiny_config(tmp_path, synth_root, "killed", iterations=8)
    _run_training(killed, wait_for=str(tmp_path / "killed" / "ckpt_0000002.safetensors"))
    assert not (tmp_path / "killed" / "final.safetensors").exists(), "the run finished before it was killed"
    resumed = _run_training(killed)  # --resume auto picks the newest complete checkpoint
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert re.search(r"resumed from .*ckpt_000000[246]\.safetensors at iteration [246]\b", resumed.stderr)
    _assert_same_weights(str(tmp_path / "straight" / "final.safetensors"),
                         str(tmp_path / "killed" / "final.safetensors"))
    kept = sorted(p.name for p in (tmp_path / "straight").glob("ckpt_*.safetensors"))
    assert kept == ["ckpt_0000004.safetensors", "ckpt_0000006.safetensors", "ckpt_0000008.safetensors"]  # keep 3
    meta = read_meta(str(tmp_path / "straight" / "final.safetensors"))
    assert meta.provenance["trained"] and meta.provenance["iteration"] == 8
    assert (tmp_path / "straight" / "tb").is_dir()


def free_port() -> int:
    """A TCP port nobody listens on right now (for torchrun's rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("heads", ["[seg]", "[det]", "[seg, det]"])
def test_every_trainable_parameter_gets_a_gradient(tmp_path, synth_root, heads):
    """DDP without find_unused_parameters needs this: the final encoder norm (taps are raw block outputs) must be
    frozen, not left trainable without a gradient."""
    cfg = load_config(str(tiny_config(tmp_path, synth_root, heads=heads)))
    trainer = Trainer(cfg, device="cpu", resume=None, progress=False)
    batch = next(trainer._loader())
    seg, det = trainer._targets(batch)
    losses = trainer.model(trainer._normalise(batch["image"]), seg_targets=seg, det_targets=det)
    sum(losses.values()).backward()
    missing = [n for n, p in trainer.model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    assert not trainer.model.encoder.trunk.norm.weight.requires_grad


@pytest.mark.parametrize("heads", ["[seg]", "[det]", "[seg, det]"])
def test_torchrun_two_processes_produce_one_checkpoint(tmp_path, synth_root, heads):
    config = tiny_config(tmp_path, synth_root, "ddp", heads=heads, iterations=3, extra="")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "vltseg_train.train", "--config", str(config), "--device", "cpu", "--no-progress"]
    result = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                            timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    digests = summary["rank_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]
    meta = read_meta(str(tmp_path / "ddp" / "final.safetensors"))
    assert meta.provenance["world_size"] == 2 and meta.provenance["rank_digests"] == digests


def test_eval_writes_report(tmp_path, synth_root):
    from vltseg_ros.cli import main as cli

    ckpt = tmp_path / "model.safetensors"
    assert cli(["checkpoint", "new", "--model", "eva02_tiny", "--heads", "seg,det", "--out", str(ckpt),
                "--mode", "whole", "--size", "64x128"]) == 0
    out = tmp_path / "report"
    assert cli(["eval", "--checkpoint", str(ckpt), "--data", f"cityscapes:{synth_root}:val:source",
                "--data", f"cityscapes:{synth_root}:train:train", "--out", str(out), "--limit", "3"]) == 0
    results = json.loads((out / "results.json").read_text())["results"]
    assert set(results) == {"source", "train"}
    for r in results.values():
        assert r["images"] == 3
        assert 0.0 <= r["segmentation"]["mIoU"] <= 1.0
        assert np.isfinite(r["detection"]["AP50"])
    for name in ("results.md", "per_class_iou.png", "confusion_source.png", "confusion_train.png"):
        assert (out / name).stat().st_size > 0
    assert "| source | 3 |" in (out / "results.md").read_text()


def test_selection_set_must_be_a_held_out_split_of_the_source(tmp_path, synth_root):
    config = str(tiny_config(tmp_path, synth_root))
    with pytest.raises(ConfigError, match="held-out split of the training set"):
        load_config(config, [f"data.select={{name: acdc, root: {synth_root}, split: val}}"])  # another domain
    with pytest.raises(ConfigError, match="held-out split"):
        load_config(config, [f"data.select={{name: cityscapes, root: {synth_root}, split: train}}"])  # training data
    cfg = load_config(config, [f"data.select={{name: cityscapes, root: {synth_root}, split: val, label: held-out}}"])
    assert cfg.data.select.title == "held-out"


def test_best_checkpoint_exists_only_when_selected_on_the_source(tmp_path, synth_root):
    """Validation sets are the targets: a run scores them but picks nothing on them. Only a held-out source split
    (data.select) produces best.safetensors, and its metadata names the set it was selected on."""
    plain = tiny_config(tmp_path, synth_root, "plain", iterations=4).read_text()
    (tmp_path / "plain.yaml").write_text(plain.replace("eval_interval: 0", "eval_interval: 2"))
    trainer = Trainer(load_config(str(tmp_path / "plain.yaml")), device="cpu", resume=None, progress=False)
    summary = trainer.train()
    assert [h["iteration"] for h in summary["history"]] == [2, 4]
    # one duration per optimiser step (the demo's calibration reads them); evaluations are inside the steps' spans
    assert len(trainer.step_times) == 4 and all(t > 0 for t in trainer.step_times)
    assert "synth-val" in summary["history"][0]["results"]
    assert not (tmp_path / "plain" / "best.safetensors").exists()
    assert read_meta(str(tmp_path / "plain" / "final.safetensors")).provenance["final"]

    cfg = load_config(str(tmp_path / "plain.yaml"), [
        f"output_dir={tmp_path / 'selected'}",
        f"data.select={{name: cityscapes, root: {synth_root}, split: val, label: source-val}}"])
    summary = Trainer(cfg, device="cpu", resume=None, progress=False).train()
    selection = read_meta(str(tmp_path / "selected" / "best.safetensors")).provenance["selection"]
    assert selection["dataset"] == "source-val" and selection["metric"] == "mIoU"
    assert selection["iteration"] in (2, 4) and selection["value"] == summary["best"]


@pytest.mark.parametrize("seconds_left, expected", [(1e6, 8), (0.0, 3)])
def test_a_deadline_resizes_the_schedule_while_training(tmp_path, synth_root, seconds_left, expected):
    """With ``deadline`` (time, fewest, most) the run re-sizes schedule.iterations to what fits before the time
    (bounded by fewest and most), as the demo does when its steps speed up after the background rendering."""
    cfg = load_config(str(tiny_config(tmp_path, synth_root, "budget", heads="[seg]", iterations=4)))
    trainer = Trainer(cfg, device="cpu", resume=None, progress=False)
    trainer.deadline, trainer.replan_every = (time.perf_counter() + seconds_left, 3, 8), 1
    summary = trainer.train()
    assert summary["iteration"] == expected == trainer.cfg.schedule.iterations
    assert len(trainer.step_times) == expected


def test_weights_digest_covers_batchnorm_counters():
    """The paper's pyramid has BatchNorm, whose num_batches_tracked is a 0-d tensor: the digest must hash it (it
    raised 'self.dim() cannot be 0 to view Long as Byte') and change with it."""
    from vltseg_train.train import weights_digest

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    before = weights_digest(model)
    model.train()(torch.randn(2, 3, 4, 4))
    assert weights_digest(model) != before
