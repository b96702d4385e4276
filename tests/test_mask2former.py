"""CPU tests for the plain-PyTorch Mask2Former head and loss (tiny configs, random init)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vltseg_ros.model.mask2former import (
    Mask2FormerHead,
    Mask2FormerLoss,
    MSDeformAttn,
    get_uncertain_point_coords_with_randomness,
    ms_deform_attn_core_pytorch,
    point_sample,
)

IN_CHANNELS = (16, 24, 32, 40)
NUM_CLASSES = 5
TINY = dict(hidden_dim=32, num_queries=10, pixel_decoder_layers=2, decoder_layers=3, num_heads=4,
            decoder_ffn_dim=64, pixel_decoder_ffn_dim=64)


def _head(**overrides) -> Mask2FormerHead:
    return Mask2FormerHead(IN_CHANNELS, NUM_CLASSES, **{**TINY, **overrides})


def _features(sizes, batch: int = 2, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, h, w, generator=g) for c, (h, w) in zip(IN_CHANNELS, sizes)]


ODD_SIZES = [(37, 50), (18, 25), (9, 12), (4, 6)]


def test_output_shapes_odd_non_square() -> None:
    torch.manual_seed(0)
    head = _head()
    out = head(_features(ODD_SIZES))
    assert out["pred_logits"].shape == (2, 10, NUM_CLASSES + 1)
    assert out["pred_masks"].shape == (2, 10, 37, 50)
    assert len(out["aux_outputs"]) == TINY["decoder_layers"]
    for aux in out["aux_outputs"]:
        assert aux["pred_logits"].shape == (2, 10, NUM_CLASSES + 1)
        assert aux["pred_masks"].shape == (2, 10, 37, 50)
    assert torch.isfinite(out["pred_masks"]).all() and torch.isfinite(out["pred_logits"]).all()


def test_autocast_bf16_forward() -> None:
    torch.manual_seed(0)
    head = _head()
    feats = _features([(16, 16), (8, 8), (4, 4), (2, 2)])
    ref = head(feats)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(feats)
    assert out["pred_masks"].shape == ref["pred_masks"].shape
    assert torch.isfinite(out["pred_masks"].float()).all()
    # bf16 forward stays close to the fp32 one (loose: bf16 has ~3 significant digits).
    assert (out["pred_logits"].float() - ref["pred_logits"]).abs().max() < 0.25


def test_semantic_scores_matches_definition() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 7, NUM_CLASSES + 1, generator=g)
    masks = torch.randn(2, 7, 5, 9, generator=g)
    scores = Mask2FormerHead.semantic_scores(logits, masks)
    assert scores.shape == (2, NUM_CLASSES, 5, 9)
    probs = logits.softmax(-1)[..., :-1]
    expected = torch.zeros(2, NUM_CLASSES, 5, 9)
    for q in range(7):
        expected += probs[:, q, :, None, None] * masks[:, q, None].sigmoid()
    torch.testing.assert_close(scores, expected)


def _bilinear_zero_pad(img: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """Reference bilinear sample of img [C, H, W] at normalised (x, y) in [0, 1], align_corners=False semantics:
    pixel i's centre is at (i + 0.5) / W, so the continuous pixel coordinate is x * W - 0.5; out-of-range
    neighbours contribute zero (padding_mode='zeros')."""
    _, h, w = img.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(img.shape[0], dtype=img.dtype)
    for dy in (0, 1):
        for dx in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            wgt = (1 - abs(px - xi)) * (1 - abs(py - yi))
            if 0 <= xi < w and 0 <= yi < h:
                out += wgt * img[:, yi, xi]
    return out


def test_ms_deform_attn_core_matches_naive() -> None:
    g = torch.Generator().manual_seed(2)
    shapes = [(3, 5), (2, 3)]
    bsz, n_heads, head_dim, n_q, n_points = 2, 2, 3, 4, 2
    n_levels = len(shapes)
    value = torch.randn(bsz, sum(h * w for h, w in shapes), n_heads, head_dim, generator=g, dtype=torch.float64)
    # Range slightly beyond [0, 1] so zero padding at the borders is exercised too.
    loc = torch.rand(bsz, n_q, n_heads, n_levels, n_points, 2, generator=g, dtype=torch.float64) * 1.2 - 0.1
    attn = torch.rand(bsz, n_q, n_heads, n_levels, n_points, generator=g, dtype=torch.float64)
    out = ms_deform_attn_core_pytorch(value, shapes, loc, attn)
    assert out.shape == (bsz, n_q, n_heads * head_dim)

    starts = [0, shapes[0][0] * shapes[0][1]]
    expected = torch.zeros_like(out)
    for b in range(bsz):
        for q in range(n_q):
            for m in range(n_heads):
                acc = torch.zeros(head_dim, dtype=torch.float64)
                for lvl, (h, w) in enumerate(shapes):
                    img = value[b, starts[lvl]:starts[lvl] + h * w, m].T.reshape(head_dim, h, w)
                    for p in range(n_points):
                        x, y = loc[b, q, m, lvl, p].tolist()
                        acc += attn[b, q, m, lvl, p] * _bilinear_zero_pad(img, x, y)
                expected[b, q, m * head_dim:(m + 1) * head_dim] = acc
    torch.testing.assert_close(out, expected)


def test_ms_deform_attn_module_shapes() -> None:
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=3)
    shapes = [(4, 6), (2, 3)]
    n_v = sum(h * w for h, w in shapes)
    out = attn(torch.randn(2, 5, 16), torch.rand(2, 5, 2, 2), torch.randn(2, n_v, 16), shapes)
    assert out.shape == (2, 5, 16)


def test_point_sampling_helpers() -> None:
    torch.manual_seed(0)
    img = torch.arange(12, dtype=torch.float32).view(1, 1, 3, 4)
    centre = torch.tensor([[[(2 + 0.5) / 4, (1 + 0.5) / 3]]])  # centre of pixel (row 1, col 2)
    assert point_sample(img, centre).item() == pytest.approx(6.0)
    logits = torch.randn(3, 1, 8, 8)
    coords = get_uncertain_point_coords_with_randomness(logits, lambda x: -x.abs(), 20, 3.0, 0.75)
    assert coords.shape == (3, 20, 2) and (coords >= 0).all() and (coords <= 1).all()


def _target(pred_hw: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """[2, 4h, 4w]: image 0 has classes {0, 2, 4} in blocks (plus some ignore), image 1 is all ignore."""
    h, w = 4 * pred_hw[0], 4 * pred_hw[1]
    t = torch.full((2, h, w), 255, dtype=torch.int64)
    t[0, : h // 2, :] = 0
    t[0, h // 2:, : w // 2] = 2
    t[0, h // 2:, w // 2:] = 4
    t[0, :3, :3] = 255
    return t


def test_loss_keys_finite_backward() -> None:
    torch.manual_seed(0)
    head = _head()
    out = head(_features([(12, 10), (6, 5), (3, 3), (2, 2)]))
    criterion = Mask2FormerLoss(NUM_CLASSES, num_points=512)
    losses = criterion(out, _target((12, 10)))
    expected = {f"loss_{n}{s}" for n in ("ce", "mask", "dice") for s in ["", "_0", "_1", "_2"]}
    assert set(losses) == expected
    for k, v in losses.items():
        assert v.dim() == 0 and torch.isfinite(v), k
    sum(losses.values()).backward()
    for emb in (head.query_feat.weight, head.query_embed.weight):
        assert emb.grad is not None and torch.isfinite(emb.grad).all() and emb.grad.abs().sum() > 0


def test_loss_all_ignore_batch() -> None:
    torch.manual_seed(0)
    head = _head()
    out = head(_features([(8, 8), (4, 4), (2, 2), (1, 1)]))
    losses = Mask2FormerLoss(NUM_CLASSES, num_points=64)(out, torch.full((2, 32, 32), 255, dtype=torch.int64))
    assert losses["loss_mask"].item() == 0.0 and losses["loss_dice"].item() == 0.0
    assert losses["loss_ce"].item() > 0
    sum(losses.values()).backward()
    assert head.query_feat.weight.grad is not None


def test_overfit_single_batch() -> None:
    torch.manual_seed(0)
    head = _head()
    feats = _features([(8, 8), (4, 4), (2, 2), (1, 1)], batch=2, seed=3)
    # Fixed random segmentation target: a coarse random class map (blocks of 8x8 px) so masks are learnable.
    g = torch.Generator().manual_seed(4)
    coarse = torch.randint(0, NUM_CLASSES, (2, 1, 4, 4), generator=g).float()
    target = F.interpolate(coarse, size=(32, 32), mode="nearest").squeeze(1).long()
    criterion = Mask2FormerLoss(NUM_CLASSES, num_points=512)
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    history = []
    for _ in range(60):
        total = sum(criterion(head(feats), target).values())
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append(total.item())
    initial = history[0]
    final = sum(history[-5:]) / 5  # average the last steps: point sampling makes single values noisy
    assert final < 0.5 * initial, f"loss did not halve: {initial:.3f} -> {final:.3f}"
