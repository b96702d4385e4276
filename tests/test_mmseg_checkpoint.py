"""Importing the mmseg VLTSeg reimplementation's checkpoints, checked against outputs of the reference's own code.

The fixtures in tests/fixtures/reference/ were written by scripts/reference_fixtures.py with the reference
implementation (GitHub VLTSeg/VLTSeg, mmsegmentation 1.2.2) in a venv of its own: tiny backbones built from the
reference's own configs, every weight perturbed, saved by mmengine in the published layout, and the reference's
per-class scores for one window and for sliding windows over a larger image (MANIFEST.json says how).
"""
from __future__ import annotations

import dataclasses
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vltseg_ros.checkpoint import CheckpointMeta, load_checkpoint, read_meta, save_checkpoint
from vltseg_ros.config import model_preset
from vltseg_ros.mmseg_checkpoint import ReferenceCheckpointError, import_checkpoint, read_reference_file
from vltseg_ros.model import build_model
from vltseg_ros.predictor import Predictor

FIXTURES = Path(__file__).parent / "fixtures" / "reference"
MANIFEST = json.loads((FIXTURES / "MANIFEST.json").read_text())
SETS = sorted(MANIFEST["sets"])
# The tolerance: a mask logit within ~1e-6 of 0 can flip one bit of Mask2Former's attention mask.
ATOL = 1e-3


def _set(name: str) -> dict:
    return MANIFEST["sets"][name]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """Each fixture set's published-layout checkpoint, imported once."""
    out = {}
    for name in SETS:
        path = tmp_path_factory.mktemp(name) / "imported.safetensors"
        import_checkpoint(str(FIXTURES / _set(name)["checkpoint"]), str(path))
        out[name] = str(path)
    return out


def _reference(name: str) -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / _set(name)["tensors"]))


def _assert_parity(ours: torch.Tensor, reference: torch.Tensor) -> None:
    assert ours.shape == reference.shape
    assert torch.isfinite(ours).all()
    worst = (ours - reference).abs().max().item()
    assert worst <= ATOL, f"max |delta| {worst:.3g} > {ATOL}"
    top2 = reference.topk(2, dim=0).values
    decided = (top2[0] - top2[1]) > ATOL
    assert decided.float().mean() > 0.5  # the check below must have pixels to check
    assert torch.equal(ours.argmax(0)[decided], reference.argmax(0)[decided])


@pytest.mark.parametrize("name", SETS)
def test_one_window_gives_the_reference_scores(imported, name):
    model, meta = load_checkpoint(imported[name])
    ref = _reference(name)
    image = ref["window_image"]  # H x W x 3 uint8 RGB
    with torch.inference_mode():
        batch = model.normalize(image.permute(2, 0, 1)[None].float())
        ours = model(batch)["seg_scores"][0]
    _assert_parity(ours, ref["window_scores"][0])


@pytest.mark.parametrize("name", SETS)
def test_sliding_windows_over_an_image_give_the_reference_scores(imported, name):
    predictor = Predictor.from_checkpoint(imported[name], precision="fp32")
    ref = _reference(name)
    image = ref["slide_image"].numpy()
    height, width = image.shape[:2]
    # The reference was fed the image at its stored size: fit it into its own size, so that nothing resizes it.
    predictor.set_inference(dataclasses.replace(predictor.inference, fit_size=sorted([height, width])))
    ours = predictor.class_scores(image, "RGB")
    _assert_parity(ours, ref["slide_scores"][0])
    labels = predictor.predict([image])[0].label_map
    assert labels.shape == (height, width)


@pytest.mark.parametrize("name", SETS)
def test_metadata_is_complete(imported, name):
    meta = read_meta(imported[name])
    spec = _set(name)
    enc = meta.model.encoder
    assert enc.attn_inner_norm is False and enc.patch_grid == "floor"
    assert enc.pos_embed_grid == spec["crop"] // spec["patch_size"]
    assert enc.arch["embed_dim"] == spec["embed_dim"] and enc.arch["depth"] == spec["depth"]
    assert meta.model.seg_head.input_proj_bias is True
    assert len(meta.model.classes) == 19 and meta.model.classes[0] == "road" and meta.model.palette[0] == [128, 64, 128]
    assert meta.inference.mode == "slide"
    assert (meta.inference.window, meta.inference.stride) == (spec["crop"], spec["stride"])
    assert meta.inference.fit_size == spec["test_fit_size"]
    prov = meta.provenance
    assert prov["source_file"] == spec["checkpoint"]
    assert prov["sha256"] == MANIFEST["files"][spec["checkpoint"]]["sha256"]
    assert prov["iteration"] == spec["iteration"]
    assert prov["assumed"] == []
    assert "model = dict(" in prov["reference_config"]


def test_a_raw_training_checkpoint_imports_to_the_same_network(imported, tmp_path):
    raw = FIXTURES / MANIFEST["raw_training_checkpoint"]["file"]
    with pytest.raises(pickle.UnpicklingError):
        torch.load(raw, weights_only=True)  # what makes the allowlisting unpickler necessary
    out = tmp_path / "raw.safetensors"
    meta = import_checkpoint(str(raw), str(out))
    assert meta.provenance["layout"] == "training run (iter_*.pth)"
    assert meta.provenance["iteration"] == MANIFEST["raw_training_checkpoint"]["iteration"]
    same_as = MANIFEST["raw_training_checkpoint"]["weights_of"]
    ours, theirs = load_file(str(out)), load_file(imported[same_as])
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


# ------------------------------------------------------------------------------------------------ wrong inputs
def _published(name: str = SETS[0]) -> dict:
    return torch.load(FIXTURES / _set(name)["checkpoint"], weights_only=True)


def _import_error(tmp_path, obj=None, raw: bytes | None = None) -> str:
    path = tmp_path / "input.pth"
    if raw is not None:
        path.write_bytes(raw)
    else:
        torch.save(obj, path)
    with pytest.raises(ReferenceCheckpointError) as info:
        import_checkpoint(str(path), str(tmp_path / "out.safetensors"))
    assert not (tmp_path / "out.safetensors").exists()
    return str(info.value)


def test_a_truncated_file_is_named(tmp_path):
    data = (FIXTURES / _set(SETS[0])["checkpoint"]).read_bytes()
    message = _import_error(tmp_path, raw=data[: len(data) // 2])
    assert "truncated or damaged" in message


def test_an_mmseg_checkpoint_of_another_model_is_named(tmp_path):
    state = {"backbone.layers.0.0.projection.weight": torch.zeros(32, 3, 7, 7),
             "decode_head.linear_fuse.conv.weight": torch.zeros(256, 1024, 1, 1)}
    cfg = "model = dict(type='EncoderDecoder', backbone=dict(type='MixVisionTransformer'), " \
          "decode_head=dict(type='SegformerHead'))\n"
    message = _import_error(tmp_path, {"meta": {"cfg": cfg}, "state_dict": state})
    assert "not of VLTSeg" in message and "MixVisionTransformer" in message and "SegformerHead" in message


def test_a_state_dict_of_another_architecture_lists_missing_and_unexpected_keys(tmp_path):
    ckpt = _published()
    state = ckpt["state_dict"]
    state.pop("decode_head.pixel_decoder.mask_feature.weight")
    state["decode_head.extra_branch.weight"] = torch.zeros(3)
    message = _import_error(tmp_path, ckpt)
    assert "missing [seg_head.pixel_decoder.mask_feature.weight]" in message
    assert "unexpected [decode_head.extra_branch.weight]" in message


def test_an_optimizer_only_file_is_named(tmp_path):
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.AdamW([param])
    param.grad = torch.ones(3)
    optimizer.step()
    message = _import_error(tmp_path, {"optimizer": optimizer.state_dict(), "meta": {"iter": 10}})
    assert "optimizer-only" in message


class _Exploit:
    """Unpickling this calls os.system, which would create ``marker``."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("placement", ["beside_the_weights", "instead_of_the_checkpoint"])
def test_a_malicious_pickle_is_refused_without_running_anything(tmp_path, placement):
    marker = tmp_path / "pwned"
    exploit = _Exploit(str(marker))
    obj = {**_published(), "message_hub": exploit} if placement == "beside_the_weights" else exploit
    path = tmp_path / "input.pth"
    torch.save(obj, path)
    # The exploit is live: a plain unpickling runs it.
    subprocess.run([sys.executable, "-c", f"import torch; torch.load({str(path)!r}, weights_only=False)"],
                   capture_output=True, timeout=120)
    assert marker.exists()
    marker.unlink()
    message = _import_error(tmp_path, obj)
    assert "refused" in message and "system" in message
    assert not marker.exists()
    with pytest.raises(ReferenceCheckpointError):
        read_reference_file(str(tmp_path / "input.pth"))
    assert not marker.exists()


# ----------------------------------------------------------------------------------------- our own checkpoints
def test_checkpoints_written_before_the_input_projection_bias_load_unchanged(tmp_path):
    """Metadata without ``seg_head.input_proj_bias`` (every checkpoint before it existed) means no bias."""
    cfg = model_preset("eva02_tiny")
    cfg.seg_head.input_proj_bias = False
    model = build_model(cfg)
    path = tmp_path / "old.safetensors"
    meta = CheckpointMeta(model=cfg)
    text = json.loads(meta.to_json())
    del text["model"]["seg_head"]["input_proj_bias"]
    meta.to_json = lambda: json.dumps(text)  # what an older build wrote
    save_checkpoint(str(path), model, meta)
    loaded, loaded_meta = load_checkpoint(str(path))
    assert loaded_meta.model.seg_head.input_proj_bias is False
    assert "seg_head.pixel_decoder.input_convs.0.0.bias" not in loaded.state_dict()
    assert model_preset("eva02_tiny").seg_head.input_proj_bias is True
    assert "seg_head.pixel_decoder.input_convs.0.0.bias" in build_model(model_preset("eva02_tiny")).state_dict()


def test_every_command_but_bag_play_works_without_rclpy(imported, tmp_path):
    """ROS-free machines (training clusters): rclpy cannot be imported, yet the CLI works, the importer included."""
    blocked = ("import sys; sys.modules['rclpy'] = None; from vltseg_ros.cli import main; "
               "sys.exit(main(sys.argv[1:]))")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}

    def vltseg(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", blocked, *argv], capture_output=True, text=True, env=env,
                              timeout=300)

    out = tmp_path / "imported.safetensors"
    result = vltseg("checkpoint", "import", str(FIXTURES / _set(SETS[0])["checkpoint"]), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout
    for argv in (["checkpoint", "info", str(out)], ["train", "--help"], ["eval", "--help"], ["demo", "--help"],
                 ["synth", "--help"], ["bag", "eval", "--help"], ["bag", "info", "--help"]):
        result = vltseg(*argv)
        assert result.returncode == 0, (argv, result.stderr)
        assert "rclpy" not in result.stderr
    result = vltseg("bag", "play", "some.mcap")
    assert result.returncode == 1 and "bag play needs rclpy" in result.stderr
    assert "Traceback" not in result.stderr


def test_import_refuses_to_overwrite_without_force(imported, tmp_path):
    from vltseg_ros.cli import main

    out = tmp_path / "x.safetensors"
    out.write_bytes(b"keep me")
    source = str(FIXTURES / _set(SETS[0])["checkpoint"])
    assert main(["checkpoint", "import", source, "--out", str(out)]) == 2
    assert out.read_bytes() == b"keep me"
    assert main(["checkpoint", "import", source, "--out", str(out), "--force"]) == 0
    assert read_meta(str(out)).provenance["source_file"] == os.path.basename(source)


def test_an_imported_checkpoint_runs_in_the_node(imported):
    """The ROS user's path: the node loads an imported checkpoint and segments frames with the reference protocol
    (sliding windows), publishing the reference's labels."""
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import Image

    from ros_harness import RELIABLE, RosHarness, image_msg
    from vltseg_ros.node.node import VLTSegNode

    name = SETS[0]
    ref = _reference(name)
    image = ref["slide_image"].numpy()
    ros = RosHarness()
    node = None
    try:
        node = VLTSegNode(context=ros.context, parameter_overrides=[
            Parameter("checkpoint", value=imported[name]), Parameter("device", value="cpu"),
            Parameter("precision", value="fp32")])
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        ros.add_node(node)
        masks = ros.record(Image, "/vltseg/label_mask")
        pub = ros.publisher(Image, "/image", RELIABLE)
        ros.wait_matched(pub)
        assert ros.publish_until(pub, lambda i: image_msg(image, "rgb8", 1_000_000 + i), lambda: masks, 120.0)
        mask = np.frombuffer(bytes(masks[0].data), np.uint8).reshape(masks[0].height, masks[0].step)
        mask = mask[:, : masks[0].width]
        predictor = Predictor.from_checkpoint(imported[name], precision="fp32")
        assert np.array_equal(mask, predictor.predict([image])[0].label_map)
    finally:
        if node is not None:
            node.trigger_shutdown()
            node.destroy_node()
        ros.close()


def test_fine_tuning_starts_from_an_imported_checkpoint(imported, tmp_path, synth_root):
    """GTA_1 -> your data: the run keeps the imported network (compatibility fields included) and trains it."""
    from vltseg_train.config import load_config
    from vltseg_train.train import Trainer

    config = tmp_path / "finetune.yaml"
    config.write_text(f"""
name: finetune
output_dir: {tmp_path / 'run'}
precision: fp32
model: {{preset: eva02_l14, heads: [seg], init_checkpoint: {imported[SETS[0]]}}}
data:
  train: {{name: cityscapes, root: {synth_root}, split: train}}
  crop_size: [64, 64]
  workers: 0
schedule: {{iterations: 2, batch_size: 2, checkpoint_interval: 2, eval_interval: 0, log_interval: 1}}
inference: {{mode: whole, size: [64, 128], fit_size: [64, 128], window: 64, stride: 48}}
""")
    summary = Trainer(load_config(str(config)), device="cpu", resume=None, progress=False).train()
    model, meta = load_checkpoint(summary["final"])
    start, _ = load_checkpoint(imported[SETS[0]])
    assert meta.model.encoder == read_meta(imported[SETS[0]]).model.encoder  # same network as imported
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, start.state_dict()[k])]
    assert "seg_head.query_feat.weight" in changed and "encoder.trunk.pos_embed" in changed


def test_eval_runs_an_imported_checkpoint_with_its_protocol(imported, tmp_path, synth_root):
    from vltseg_ros.cli import main as cli

    out = tmp_path / "report"
    assert cli(["eval", "--checkpoint", imported[SETS[0]], "--data", f"cityscapes:{synth_root}:val:val",
                "--out", str(out), "--limit", "2"]) == 0
    result = json.loads((out / "results.json").read_text())["results"]["val"]
    assert result["images"] == 2 and 0.0 <= result["segmentation"]["mIoU"] <= 1.0
    assert result["inference"]["mode"] == "slide" and result["inference"]["window"] == _set(SETS[0])["crop"]


@pytest.mark.parametrize("crop, stride, scale, protocol", [(512, 426, "(1024, 512)", "synthetic"),
                                                           (1024, 768, "(2048, 1024)", "real")])
def test_the_published_configs_give_the_papers_protocols(crop, stride, scale, protocol):
    """The published files' configs (crop, test_cfg, test Resize) map to the evaluation protocols by name, so
    `vltseg eval` uses each dataset's protocol size for them."""
    from vltseg_ros.config import evaluation_protocol
    from vltseg_ros.mmseg_checkpoint import _inference, parse_config_text

    text = (f"crop_size = ({crop}, {crop})\nstride_size = ({stride}, {stride})\n"
            f"model = dict(test_cfg=dict(mode='slide', crop_size=({crop}, {crop}), stride=({stride}, {stride})))\n"
            f"test_pipeline = [dict(type='LoadImageFromFile'), dict(type='Resize', scale={scale}, keep_ratio=True)]\n"
            "test_dataloader = dict(dataset=dict(type='CityscapesDataset', pipeline=test_pipeline))\n")
    cfg = parse_config_text(text)
    grid = crop // 14
    from vltseg_ros.config import EncoderConfig

    assumed: list[str] = []
    inference = _inference(cfg, EncoderConfig(pos_embed_grid=grid, patch_grid="floor"), assumed)
    assert evaluation_protocol(inference) == protocol and assumed == []
