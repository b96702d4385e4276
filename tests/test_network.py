"""The VLTSeg network: shapes for every encoder with both heads, one encoder pass, and a tiny model that
overfits one batch for segmentation and detection."""
from __future__ import annotations

import pytest
import torch

from vltseg_ros.config import model_preset
from vltseg_ros.model import ENCODERS, build_model
from vltseg_ros.model.detection import unpad_detections


def _targets():
    """Two 64x128 images: block-structured trainIds (with ignore pixels) and two boxes each."""
    seg = torch.full((2, 64, 128), 255, dtype=torch.int64)
    seg[0, :32, :] = 10
    seg[0, 32:, :64] = 0
    seg[0, 32:, 64:] = 13
    seg[1, :, :50] = 2
    seg[1, :, 50:120] = 8
    det = [
        {"boxes": torch.tensor([[10.0, 5.0, 50.0, 40.0], [70.0, 30.0, 120.0, 60.0]]), "labels": torch.tensor([2, 0])},
        {"boxes": torch.tensor([[0.0, 0.0, 30.0, 30.0], [60.0, 20.0, 100.0, 62.0]]), "labels": torch.tensor([4, 2])},
    ]
    return seg, det


def _images(seg):
    # The images carry the answer (a colour per class), so a working model can fit them quickly.
    torch.manual_seed(3)
    colours = torch.randn(256, 3)
    return colours[seg].permute(0, 3, 1, 2).contiguous() + 0.1 * torch.randn(seg.shape[0], 3, *seg.shape[1:])


SEG_TERMS = ("loss_ce", "loss_mask", "loss_dice")
DET_TERMS = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg")


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    model = build_model(model_preset("eva02_tiny", ("seg", "det"))).train()
    seg, det = _targets()
    images = _images(seg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    history = []
    for _ in range(40):
        losses = model(images, seg_targets=seg, det_targets=det)
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})

    def seg_loss(h):
        return sum(v for k, v in h.items() if k.startswith(SEG_TERMS))

    def det_loss(h):
        return sum(h[k] for k in DET_TERMS)

    first, last = history[0], history[-3:]
    assert sum(seg_loss(h) for h in last) / 3 < 0.5 * seg_loss(first)
    assert sum(det_loss(h) for h in last) / 3 < 0.5 * det_loss(first)
    assert all(torch.isfinite(torch.tensor(list(h.values()))).all() for h in history)

    model.eval()
    with torch.no_grad():
        out = model(images)
    predicted = out["seg_scores"].argmax(1)
    valid = seg != 255
    assert (predicted[valid] == seg[valid]).float().mean() > 0.9


def test_one_encoder_pass_serves_both_heads(tiny_model):
    calls = []
    handle = tiny_model.encoder.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        out = tiny_model(torch.randn(1, 3, 64, 96))
    handle.remove()
    assert len(calls) == 1
    assert set(out) == {"seg_scores", "frame_descriptor", "detections"}
    assert out["frame_descriptor"].shape == (1, 2 * tiny_model.cfg.seg_head.hidden_dim)


def test_inputs_not_multiple_of_patch_are_padded_and_cropped(tiny_model):
    with torch.no_grad():
        out = tiny_model(torch.randn(2, 3, 70, 101))
    assert out["seg_scores"].shape == (2, 19, 70, 101)
    for det in unpad_detections(out["detections"]):
        assert det["boxes"].shape[1] == 4
        if len(det["boxes"]):
            assert float(det["boxes"][:, 2].max()) <= 101 and float(det["boxes"][:, 3].max()) <= 70
            assert int(det["labels"].min()) >= 0 and int(det["labels"].max()) < 8


def test_parameter_groups_cover_every_parameter(tiny_model):
    groups = tiny_model.parameter_groups()
    names = {n for n, _ in tiny_model.named_parameters()}
    assert set(groups["encoder"]) | set(groups["head"]) == names
    assert not set(groups["encoder"]) & set(groups["head"])
    no_decay = set(groups["no_decay"])
    assert "encoder.trunk.pos_embed" in no_decay and "encoder.trunk.cls_token" in no_decay
    assert any(n.startswith("seg_head.") and "query_feat" in n for n in no_decay)
    assert "encoder.trunk.blocks.0.attn.q_proj.weight" not in no_decay


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_full_network_shapes_for_every_encoder(name):
    torch.manual_seed(0)
    model = build_model(model_preset(name, ("seg", "det"))).eval()
    p = model.patch_size
    height, width = 4 * p, 6 * p  # non-square
    with torch.no_grad():
        out = model(torch.randn(1, 3, height, width))
    assert out["seg_scores"].shape == (1, 19, height, width)
    assert torch.isfinite(out["seg_scores"]).all()
    det = out["detections"]
    assert det["boxes"].shape == (1, model.cfg.det_head.box_detections_per_img, 4) and det["count"].shape == (1,)


def test_semantic_scores_upsample_mask_logits_before_the_sigmoid():
    """Mask2Former's inference order: mask logits bilinearly upsampled to the input size, then sigmoid and the
    class-probability product (upsampling the product instead gives other scores)."""
    torch.manual_seed(0)
    model = build_model(model_preset("eva02_tiny", ("seg",))).eval()
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        scores = model(images)["seg_scores"]
        pred = model.seg_head(model.features(images))
    masks = torch.nn.functional.interpolate(pred["pred_masks"], size=(64, 96), mode="bilinear", align_corners=False)
    expected = torch.einsum("bqk,bqhw->bkhw", pred["pred_logits"].softmax(-1)[..., :-1], masks.sigmoid())
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-6)
