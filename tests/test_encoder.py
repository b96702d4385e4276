"""CLIP encoders: every registered name at non-square sizes, and pretrained-weight loading in each file format,
checked against open_clip's own forward on a randomly initialised open_clip model."""
from __future__ import annotations

import json

import open_clip
import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models import register_model

from vltseg_ros.model.encoder import ENCODERS, ClipEncoder, PretrainedWeightsError, load_pretrained

TINY = ENCODERS["eva02_tiny"]


@register_model
def vltseg_test_eva02_tiny(pretrained=False, **kwargs):
    """The tiny encoder's architecture under a timm name, so open_clip can wrap it like EVA02-B-16."""
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    return timm.create_model(TINY.timm_name, pretrained=False, **{**TINY.overrides, **kwargs})


def _open_clip_tiny(tmp_path):
    """A random-init open_clip CLIP model whose visual tower is the tiny EVA02 (same code path as EVA02-B-16)."""
    name = "VLTSeg-Test-EVA02-Tiny"
    cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 224, "timm_model_name": "vltseg_test_eva02_tiny",
                       "timm_model_pretrained": False, "timm_pool": "token", "timm_proj": None},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
        "custom_text": True,
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(str(path))
    torch.manual_seed(1)
    model = open_clip.create_model(name, pretrained=None).eval()
    with torch.no_grad():  # random init leaves some weights at exact constants; perturb everything
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def _eva_clip_original_names(trunk_state: dict) -> dict:
    """timm EVA names -> the original EVA-CLIP ``.pt`` names (the inverse of timm's checkpoint filter)."""
    renames = [("mlp.norm", "mlp.ffn_ln"), ("attn.norm", "attn.inner_attn_ln"), ("mlp.fc1_g", "mlp.w1"),
               ("mlp.fc1_x", "mlp.w2"), ("mlp.fc2", "mlp.w3"), ("q_proj.bias", "q_bias"), ("v_proj.bias", "v_bias")]
    out = {}
    for key, value in trunk_state.items():
        for old, new in renames:
            key = key.replace(old, new)
        out["visual." + key] = value
    out["text.token_embedding.weight"] = torch.zeros(10, 4)  # the text tower rides along and must be ignored
    out["logit_scale"] = torch.tensor(4.6)
    return out


def _reference_taps(oc_model, images):
    return oc_model.visual.trunk.forward_intermediates(
        images, indices=TINY.taps, norm=False, output_fmt="NCHW", intermediates_only=True)


@pytest.mark.parametrize("fmt", ["open_clip", "eva_clip", "timm"])
def test_pretrained_formats_reproduce_open_clip(tmp_path, fmt):
    oc = _open_clip_tiny(tmp_path)
    trunk_state = oc.visual.trunk.state_dict()
    if fmt == "open_clip":
        path = tmp_path / "open_clip_model.pt"
        torch.save(oc.state_dict(), path)
    elif fmt == "eva_clip":
        path = tmp_path / "EVA02_CLIP_tiny.pt"
        torch.save({"module": _eva_clip_original_names(trunk_state)}, path)
    else:
        path = tmp_path / "timm_model.safetensors"
        save_file({k: v.contiguous() for k, v in trunk_state.items()}, str(path))

    encoder = ClipEncoder("eva02_tiny").eval()
    load_pretrained(encoder, str(path))
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ours = encoder(images)
        ref = _reference_taps(oc, images)
        pooled_ours = encoder.trunk.forward_head(encoder.trunk.forward_features(images), pre_logits=True)
        pooled_ref = oc.visual.trunk.forward_head(oc.visual.trunk.forward_features(images), pre_logits=True)
    for a, b in zip(ours, ref):
        assert torch.equal(a, b)
    assert torch.equal(pooled_ours, pooled_ref)


def test_non_square_input_matches_open_clip_resized_model(tmp_path):
    """Dynamic size = open_clip's own set_input_size: pos-embed resampled, RoPE grid rescaled."""
    oc = _open_clip_tiny(tmp_path)
    path = tmp_path / "oc.pt"
    torch.save(oc.state_dict(), path)
    encoder = ClipEncoder("eva02_tiny").eval()
    load_pretrained(encoder, str(path))
    oc.visual.trunk.set_input_size(img_size=(160, 288))
    images = torch.randn(1, 3, 160, 288)
    with torch.no_grad():
        ours = encoder(images)
        ref = _reference_taps(oc, images)
    for a, b in zip(ours, ref):
        assert a.shape == (1, 64, 10, 18)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_position_embedding_is_resampled_on_load(tmp_path):
    oc = _open_clip_tiny(tmp_path)
    oc.visual.trunk.set_input_size(img_size=(320, 320))  # a 20x20 grid; the encoder is built for 14x14
    path = tmp_path / "oc320.pt"
    torch.save(oc.state_dict(), path)
    encoder = ClipEncoder("eva02_tiny")
    load_pretrained(encoder, str(path))
    expected = timm.layers.resample_abs_pos_embed(
        oc.visual.trunk.pos_embed, new_size=(14, 14), old_size=(20, 20), num_prefix_tokens=1)
    torch.testing.assert_close(encoder.trunk.pos_embed, expected)
    assert torch.equal(encoder.trunk.blocks[0].attn.q_proj.weight, oc.visual.trunk.blocks[0].attn.q_proj.weight)


def test_pretrained_errors_are_clear(tmp_path):
    encoder = ClipEncoder("eva02_tiny")
    with pytest.raises(PretrainedWeightsError, match="not found"):
        load_pretrained(encoder, str(tmp_path / "missing.pt"))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(PretrainedWeightsError, match="cannot read pretrained weights"):
        load_pretrained(encoder, str(bad))
    wrong = tmp_path / "wrong.safetensors"
    state = ClipEncoder("eva02_tiny").trunk.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("blocks.3.")}
    save_file({k: v.contiguous() for k, v in state.items()}, str(wrong))
    with pytest.raises(PretrainedWeightsError, match=r"missing \['blocks\.3\."):
        load_pretrained(encoder, str(wrong))


def test_open_clip_tag_offline_gives_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(PretrainedWeightsError, match="cannot get open_clip weights EVA02-B-16:merged2b_s8b_b131k"):
        load_pretrained(ClipEncoder("eva02_b16"), "openclip")


@pytest.mark.slow
def test_openai_clip_vit_weights_reproduce_open_clip():
    """OpenAI-CLIP-style ViT (open_clip's native VisionTransformer) -> timm trunk of ``clip_b16``."""
    torch.manual_seed(2)
    oc = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None).eval()
    encoder = ClipEncoder("clip_b16").eval()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/vit_b16.pt"
        torch.save(oc.state_dict(), path)
        load_pretrained(encoder, path)
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ours = encoder(images)
        ref = oc.visual.forward_intermediates(
            images, indices=ENCODERS["clip_b16"].taps, intermediates_only=True, normalize_intermediates=False,
        )["image_intermediates"]
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_every_encoder_at_a_non_square_size(name):
    encoder = ClipEncoder(name).eval()
    p = encoder.patch_size
    with torch.no_grad():
        taps = encoder(torch.randn(1, 3, 3 * p, 5 * p))
    assert len(taps) == 4
    assert all(t.shape == (1, encoder.embed_dim, 3, 5) for t in taps)
    assert encoder.taps == list(ENCODERS[name].taps)
