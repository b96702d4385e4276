"""The detection head's fixed-shape inference path: equal to torchvision's own test-time path, exact RoI scales for
patch-14 pyramids, and one graph for torch.compile (no breaks, no data-dependent shapes)."""
from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torchvision.ops import batched_nms

from vltseg_ros.config import ConfigError, model_preset, validate_model_config
from vltseg_ros.model import ENCODERS, build_model
from vltseg_ros.model.detection import exact_scale_roi_align, nms_keep, unpad_detections
from vltseg_ros.model.encoder import EncoderSpec, pad_to_multiple


def _clustered_boxes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dense jittered clusters (long suppression chains, like RPN proposals), sorted by descending score."""
    g = torch.Generator().manual_seed(seed)
    centres, sizes = torch.rand(15, 2, generator=g) * 600, torch.rand(15, 2, generator=g) * 120 + 20
    which = torch.randint(0, 15, (n,), generator=g)
    centre = centres[which] + torch.randn(n, 2, generator=g) * sizes[which] * 0.15
    size = sizes[which] * (1 + 0.15 * torch.randn(n, 2, generator=g)).clamp(min=0.3)
    boxes = torch.cat([centre - size / 2, centre + size / 2], 1)
    scores = torch.rand(n, generator=g)
    order = scores.argsort(descending=True)
    return boxes[order], scores[order], torch.randint(0, 3, (n,), generator=g)[order]


@pytest.mark.parametrize("threshold", [0.5, 0.7])
def test_nms_keep_is_greedy_nms(threshold):
    boxes, scores, groups = _clustered_boxes(800, seed=int(threshold * 10))
    valid = torch.rand(800, generator=torch.Generator().manual_seed(1)) > 0.1
    expected = torch.zeros(800, dtype=torch.bool)
    index = valid.nonzero().flatten()
    expected[index[batched_nms(boxes[index], scores[index], groups[index], threshold)]] = True
    assert torch.equal(nms_keep(boxes, valid, threshold, groups=groups), expected)  # to the fixed point
    assert torch.equal(nms_keep(boxes, valid, threshold, groups=groups, unroll=16), expected)
    assert not torch.equal(nms_keep(boxes, valid, threshold, groups=groups, unroll=1), expected)  # Fast NMS
    batched = nms_keep(torch.stack([boxes, boxes.flip(0)]), torch.stack([valid, valid.flip(0)]), threshold,
                       groups=torch.stack([groups, groups.flip(0)]))
    assert torch.equal(batched[0], expected)


@pytest.fixture
def tiny_patch14(monkeypatch):
    """A tiny EVA02 with patch 14 (the L/14 encoders' 3.5/7/14/28 pyramid strides)."""
    spec = ENCODERS["eva02_tiny"]
    monkeypatch.setitem(ENCODERS, "eva02_tiny14", EncoderSpec("eva02_large_patch14_clip_224", spec.taps,
                                                             overrides=dict(spec.overrides)))
    return "eva02_tiny14"


def _confident_det_model(name: str):
    torch.manual_seed(0)
    model = build_model(model_preset(name, ("det",))).eval()
    with torch.no_grad():  # peaky class scores and spread boxes: distinct detections, fewer than the cap
        model.det_head.roi_heads.box_predictor.cls_score.weight.mul_(20)
        model.det_head.roi_heads.box_predictor.bbox_pred.weight.mul_(20)
    model.det_head.roi_heads.score_thresh = 0.8
    return model


@pytest.mark.parametrize("patch", [16, 14])
def test_fixed_shape_inference_equals_torchvision(patch, tiny_patch14):
    model = _confident_det_model("eva02_tiny" if patch == 16 else tiny_patch14)
    assert model.patch_size == patch
    height, width = 8 * patch, 16 * patch
    sizes = [(height, width), (height - 20, width - 37)]  # the second image is padded
    with torch.no_grad():
        pyramid = model.features(pad_to_multiple(torch.randn(2, 3, height, width), patch))
        expected = unpad_detections(model.det_head(pyramid, (height, width), sizes))  # eager: torchvision's path
        model.det_head.fixed_shape = True
        padded = model.det_head(pyramid, (height, width), sizes)
    got = unpad_detections(padded)
    assert padded["boxes"].shape == (2, 100, 4)
    for ref, det, (h, w) in zip(expected, got, sizes):
        assert 0 < len(det["boxes"]) == len(ref["boxes"]) < 100
        torch.testing.assert_close(det["boxes"], ref["boxes"], rtol=0, atol=1e-3)
        torch.testing.assert_close(det["scores"], ref["scores"], rtol=0, atol=1e-5)
        assert torch.equal(det["labels"], ref["labels"])
        assert float(det["boxes"][:, 2].max()) <= w and float(det["boxes"][:, 3].max()) <= h
    for key in ("boxes", "scores", "labels"):  # padding rows are zeros
        assert not padded[key][1, int(padded["count"][1]):].any()


def test_roi_pooling_uses_exact_patch14_strides():
    names = ["0", "1", "2", "3"]
    strides = [3.5, 7.0, 14.0, 28.0]
    pool = exact_scale_roi_align(names, strides)
    grid = (16, 32)  # patch grid of a 224x448 input
    features = OrderedDict()
    for name, stride in zip(names, strides):
        size = (int(grid[0] * 14 / stride), int(grid[1] * 14 / stride))
        x_centres = (torch.arange(size[1], dtype=torch.float32) + 0.5) * stride  # each cell holds its x in pixels
        features[name] = x_centres.expand(1, 1, *size).contiguous()
    for box in ([300.0, 40.0, 330.0, 70.0], [150.0, 20.0, 420.0, 200.0]):  # levels 2 and 4 by the FPN rule
        pooled = pool(features, [torch.tensor([box])], [(224, 448)])
        centre = (box[0] + box[2]) / 2
        assert abs(float(pooled.mean()) - centre) < 14, (box, float(pooled.mean()))


def test_patch8_encoder_with_its_pyramid_keeps_strides_4_to_32():
    """A patch-8 tiny encoder (model.encoder.patch_size) with pyramid scales 2/1/0.5/0.25: the heads see the same
    4/8/16/32 strides as with patch 16, and the RoI pooler and anchors use them."""
    cfg = model_preset("eva02_tiny", ("seg", "det"))
    cfg.encoder.patch_size = 8
    cfg.pyramid.scales = [2.0, 1.0, 0.5, 0.25]
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    assert model.patch_size == 8
    assert model.det_head.roi_heads.box_roi_pool.scales == [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    with torch.no_grad():
        levels = model.features(torch.randn(1, 3, 64, 128))
        out = model(torch.randn(2, 3, 64, 128))
    assert [tuple(x.shape[-2:]) for x in levels] == [(16, 32), (8, 16), (4, 8), (2, 4)]
    assert out["seg_scores"].shape == (2, 19, 64, 128)
    model.train()
    losses = model(torch.randn(2, 3, 64, 128), torch.randint(0, 19, (2, 64, 128)),
                   [{"boxes": torch.tensor([[4.0, 8.0, 40.0, 60.0]]), "labels": torch.tensor([2])}] * 2)
    total = sum(losses.values())
    total.backward()
    assert torch.isfinite(total) and model.encoder.trunk.patch_embed.proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("scales", [[4, 2, 1], [4, 2, 3, 0.5], [2, 4, 1, 0.5], [32, 16, 8, 4]])
def test_pyramid_scales_are_validated(scales):
    cfg = model_preset("eva02_tiny", ("seg",))
    cfg.pyramid.scales = scales
    with pytest.raises(ConfigError, match="pyramid.scales"):
        validate_model_config(cfg)


def test_eval_network_compiles_to_one_graph():
    """fullgraph=True fails on any graph break, host sync or data-dependent shape: the property that lets
    ``compile_mode: reduce-overhead`` put the whole network in one CUDA graph."""
    torch.manual_seed(0)
    model = build_model(model_preset("eva02_tiny", ("seg", "det"))).eval()
    images = torch.randn(2, 3, 64, 128)
    with torch.no_grad():
        eager = model(images)
        compiled = torch.compile(model, backend="eager", fullgraph=True, dynamic=False)(images)
    torch.testing.assert_close(compiled["seg_scores"], eager["seg_scores"])
    for key in ("boxes", "scores", "labels", "count"):
        torch.testing.assert_close(compiled["detections"][key], eager["detections"][key])


def test_boxes_decode_in_float32_under_bf16_autocast():
    """torchvision decodes in the deltas' dtype: bf16 under autocast, i.e. 8 px steps at x in [1024, 2048)."""
    from torchvision.models.detection._utils import BoxCoder

    torch.manual_seed(0)
    head = build_model(model_preset("eva02_tiny", ("det",))).det_head
    anchors = torch.tensor([[1501.3, 601.7, 1540.2, 650.9], [1900.6, 10.2, 2030.8, 90.4]])
    deltas = torch.zeros(2, 4, dtype=torch.bfloat16)
    for coder in (head.rpn.box_coder, head.roi_heads.box_coder):
        decoded = coder.decode_single(deltas, anchors)
        assert decoded.dtype == torch.float32
        torch.testing.assert_close(decoded, anchors, rtol=0, atol=1e-3)
    assert (BoxCoder((1.0, 1.0, 1.0, 1.0)).decode_single(deltas, anchors).float() - anchors).abs().max() > 0.5


@pytest.mark.parametrize("field, value, message", [
    ("nms_unroll", 0, "nms_unroll: need at least 1"),
    ("box_nms_candidates", 50, "box_nms_candidates .50. must be at least box_detections_per_img .100."),
])
def test_bad_fixed_shape_settings_are_named(field, value, message):
    from vltseg_ros.config import ConfigError, validate_model_config

    cfg = model_preset("eva02_tiny", ("det",))
    setattr(cfg.det_head, field, value)
    with pytest.raises(ConfigError, match=message):
        validate_model_config(cfg)


def test_fixed_shape_pooling_keeps_float32_rois_for_bf16_features():
    """Under bf16 autocast the FPN maps are bf16; the RoIs must not be cast to them (8 px steps at x >= 1024)."""
    torch.manual_seed(0)
    head = build_model(model_preset("eva02_tiny", ("det",))).det_head.eval()
    sizes = {"0": (64, 512), "1": (32, 256), "2": (16, 128), "3": (8, 64)}  # a 256x2048 input, strides 4..32
    bf16 = OrderedDict((k, torch.randn(1, 8, *hw).to(torch.bfloat16)) for k, hw in sizes.items())
    boxes = torch.tensor([[[1501.3, 60.2, 1561.7, 120.9], [1203.9, 10.6, 1405.1, 200.3], [1027.5, 5.5, 1100.1, 70.7]]])
    with torch.no_grad():
        got = head._pool(bf16, boxes)
        expected = head._pool(OrderedDict((k, v.float()) for k, v in bf16.items()), boxes)
    torch.testing.assert_close(got.float(), expected, rtol=0, atol=1e-5)


def _both_paths(model, images, sizes):
    height, width = images.shape[-2:]
    with torch.no_grad():
        pyramid = model.features(images)
        model.det_head.fixed_shape = False
        reference = model.det_head(pyramid, (height, width), sizes)
        model.det_head.fixed_shape = True
        fixed = model.det_head(pyramid, (height, width), sizes)
    model.det_head.fixed_shape = None
    return reference, fixed


def _assert_same_detections(reference, fixed):
    assert torch.equal(reference["count"], fixed["count"])
    for ref, det in zip(unpad_detections(reference), unpad_detections(fixed)):
        torch.testing.assert_close(det["boxes"], ref["boxes"], rtol=0, atol=1e-3)
        torch.testing.assert_close(det["scores"], ref["scores"], rtol=0, atol=1e-5)
        assert torch.equal(det["labels"], ref["labels"])
    assert not torch.signbit(fixed["scores"]).any()  # padding is +0.0, as in the torchvision path's layout


def test_saturated_scores_tie_break_like_torchvision():
    """A confident model's softmax reaches exactly 1.0: NMS keeps the lower index among equal scores."""
    model = _confident_det_model("eva02_tiny")
    with torch.no_grad():
        model.det_head.roi_heads.box_predictor.cls_score.weight.mul_(50)
    images = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    reference, fixed = _both_paths(model, images, [(64, 96), (48, 70)])
    assert int((unpad_detections(reference)[0]["scores"] == 1).sum()) > 10  # the case under test: many ties
    _assert_same_detections(reference, fixed)


def test_both_paths_agree_under_bf16_autocast():
    """RPN and box-predictor outputs are float32, so bf16 autocast changes neither path's scores or order."""
    model = _confident_det_model("eva02_tiny")
    images = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference, fixed = _both_paths(model, images, [(64, 96), (48, 70)])
    assert int(reference["count"].sum()) > 0
    _assert_same_detections(reference, fixed)


def test_loss_weight_scales_every_detection_loss():
    """``loss_weight`` balances the detection losses against Mask2Former's, which share the encoder's gradient."""
    images = torch.randn(2, 3, 64, 96)
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [40.0, 10.0, 90.0, 60.0]]),
                "labels": torch.tensor([0, 2])}] * 2
    losses = []
    for weight in (1.0, 3.0):
        cfg = model_preset("eva02_tiny", ("det",))
        cfg.det_head.loss_weight = weight
        torch.manual_seed(0)
        model = build_model(cfg).train()
        torch.manual_seed(1)  # the same RPN and RoI samples
        losses.append(model(images, det_targets=targets))
    assert set(losses[0]) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
    for key, value in losses[0].items():
        torch.testing.assert_close(losses[1][key], 3.0 * value)


def test_pyramid_levels_have_norms_of_their_own():
    """Two upsampling levels (scales 8 and 4) each get their own norm layers of the configured kind; the default
    scales keep the state-dict layout older checkpoints were saved with."""
    from vltseg_ros.model.pyramid import SimpleFeaturePyramid

    pyramid = SimpleFeaturePyramid(32, "batch", scales=[8, 4, 2, 1])
    norms = [m for m in pyramid.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 3 and len({id(m) for m in norms}) == 3
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in pyramid.modules())
    assert [tuple(x.shape[-2:]) for x in pyramid([torch.randn(1, 32, 4, 4)] * 4)] == [(32, 32), (16, 16), (8, 8),
                                                                                     (4, 4)]
    assert sorted(SimpleFeaturePyramid(32).state_dict()) == [
        "levels.0.0.bias", "levels.0.0.weight", "levels.0.1.bias", "levels.0.1.num_batches_tracked",
        "levels.0.1.running_mean", "levels.0.1.running_var", "levels.0.1.weight", "levels.0.3.bias",
        "levels.0.3.weight", "levels.1.bias", "levels.1.weight"]
