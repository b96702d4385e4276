"""vltseg_ros.monitor: the frame-level domain-shift scores on tiny random inputs (shapes, ranges, monotonicity)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from vltseg_ros import monitor as M


def _scores(b=2, k=5, h=8, w=12, seed=0, sharpness=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, k, h, w, generator=g) * sharpness).softmax(1) * 0.9


def test_output_maps_shapes_and_ranges():
    s = _scores()
    p = M.class_probabilities(s)
    assert p.shape == s.shape and torch.allclose(p.sum(1), torch.ones(2, 8, 12), atol=1e-5)
    mp, ent, rba = M.max_probability_map(s), M.entropy_confidence_map(s), M.rba_confidence_map(s)
    for m in (mp, ent, rba):
        assert m.shape == (2, 8, 12) and m.dtype == torch.float32
    assert float(mp.min()) >= 1 / 5 - 1e-6 and float(mp.max()) <= 1 + 1e-6
    assert float(ent.min()) >= -1e-5 and float(ent.max()) <= 1 + 1e-5
    assert float(rba.min()) >= 0 and float(rba.max()) <= 5


def test_flatter_scores_lower_confidence():
    sharp, flat = _scores(sharpness=5.0), _scores(sharpness=0.2)
    assert (M.pool_mean(M.max_probability_map(flat)) < M.pool_mean(M.max_probability_map(sharp))).all()
    assert (M.pool_mean(M.entropy_confidence_map(flat)) < M.pool_mean(M.entropy_confidence_map(sharp))).all()
    uniform = torch.full((1, 4, 3, 3), 0.25)
    assert torch.allclose(M.max_probability_map(uniform), torch.full((1, 3, 3), 0.25))
    assert torch.allclose(M.entropy_confidence_map(uniform), torch.zeros(1, 3, 3), atol=1e-5)


def test_rba_rejects_pixels_every_class_rejects():
    s = torch.zeros(1, 3, 2, 2)
    s[0, 1, 0, 0] = 1.0  # one pixel claimed by a class; the others by none
    m = M.rba_confidence_map(s)
    assert m[0, 0, 0] == pytest.approx(math.tanh(1.0)) and float(m[0].flatten()[1:].abs().max()) == 0
    # Scaling every score down (all classes reject more) lowers RbA confidence, although max-prob is unchanged.
    s2 = _scores(1)
    assert M.pool_mean(M.rba_confidence_map(s2 * 0.3)) < M.pool_mean(M.rba_confidence_map(s2))
    assert torch.allclose(M.max_probability_map(s2 * 0.3), M.max_probability_map(s2), atol=1e-6)


def test_pooling():
    m = torch.linspace(0, 1, 100).view(1, 10, 10).repeat(2, 1, 1)
    m[1] = 1.0
    assert torch.allclose(M.pool_mean(m), torch.tensor([0.5, 1.0]))
    q = M.pool_quantile(m, 0.1)
    assert q[0] == pytest.approx(float(torch.linspace(0, 1, 100)[10]), abs=0.011) and q[1] == 1.0
    assert M.pool_fraction_above(m, 0.5)[0] == pytest.approx(0.5) and M.pool_fraction_above(m, 0.5)[1] == 1.0
    # One bad corner cell: the grid pooling sees it, the mean barely does.
    c = torch.ones(1, 16, 32)
    c[0, :4, :4] = 0.0
    grid = M.pool_grid_worst(c, (4, 8), 1)
    assert float(grid) == pytest.approx(0.0) and float(M.pool_mean(c)) > 0.95


def test_channel_statistics():
    f = [torch.randn(3, 4, 5, 6), torch.randn(3, 2, 3, 3)]
    d = M.channel_statistics(f)
    assert d.shape == (3, 2 * 4 + 2 * 2)
    assert torch.allclose(d[:, :4], f[0].mean((2, 3)), atol=1e-6)
    assert torch.allclose(d[:, 4:8], f[0].flatten(2).std(2, unbiased=False), atol=1e-6)


@pytest.mark.parametrize("shrinkage", [None, 0.1])
def test_mahalanobis_smallest_at_the_calibration_mean(shrinkage):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(20, 6, generator=g) * torch.tensor([1.0, 2, 3, 0.5, 1, 1]) + 3
    st = M.fit_gaussian(x, shrinkage)
    assert st["mean"].shape == (6,) and st["precision"].shape == (6, 6)
    probes = torch.cat([st["mean"][None], x[:5], st["mean"][None] + 5])
    d = M.mahalanobis(probes, st)
    assert d.shape == (7,) and float(d[0]) == pytest.approx(0.0, abs=1e-3)
    assert (d[1:] > d[0]).all() and d[-1] == d.max()
    diag = M.fit_diagonal(x)
    dd = M.diagonal_distance(probes, diag)
    assert float(dd[0]) == pytest.approx(0.0, abs=1e-5) and (dd[1:] > dd[0]).all()


def test_fit_gaussian_with_fewer_samples_than_dimensions_is_finite():
    x = torch.randn(5, 40)
    st = M.fit_gaussian(x)
    d = M.mahalanobis(torch.randn(3, 40), st)
    assert torch.isfinite(d).all() and 0 <= float(st["shrinkage"]) <= 1


def test_streaming_moments_equal_one_fit():
    x = torch.randn(300, 4) * torch.tensor([1.0, 3, 0.2, 1]) + 1
    whole = M.gaussian_from_moments(M.moments(x), 0.0)
    parts = None
    for chunk in x.split(70):
        parts = M.merge_moments(parts, M.moments(chunk))
    split = M.gaussian_from_moments(parts, 0.0)
    assert torch.allclose(whole["mean"], x.mean(0), atol=1e-5)
    assert torch.allclose(whole["precision"], split["precision"], atol=1e-4)
    assert torch.allclose(whole["precision"], torch.linalg.inv(torch.cov(x.T, correction=0)), rtol=1e-3, atol=1e-3)


def test_token_distance_map():
    feat = torch.randn(2, 4, 6, 7)
    st = M.gaussian_from_moments(M.moments(M.tokens(feat)), 0.01)
    d = M.token_mahalanobis_map(feat, st)
    assert d.shape == (2, 6, 7) and (d >= 0).all()
    shifted = M.token_mahalanobis_map(feat + 10, st)
    assert (shifted > d).all()
    at_mean = M.token_mahalanobis_map(st["mean"].view(1, 4, 1, 1), st)
    assert float(at_mean) == pytest.approx(0.0, abs=1e-3)


def test_class_conditional_distance():
    means = torch.tensor([[5.0, 0, 0], [0, 5.0, 0]])
    labels = torch.randint(0, 2, (2, 8, 8))
    feat = means[labels].permute(0, 3, 1, 2) + 0.1 * torch.randn(2, 3, 8, 8)
    labels[0, 0, 0] = 255  # ignored
    st = M.class_gaussian_from_moments(M.class_moments(feat, labels, 3), 0.01, min_count=1)
    assert st["means"].shape == (2, 3) and st["classes"].tolist() == [0, 1]
    assert torch.allclose(st["means"], means, atol=0.1)
    d = M.class_mahalanobis_map(feat, st)
    assert d.shape == (2, 8, 8)
    between = M.class_mahalanobis_map(torch.tensor([2.5, 2.5, 0]).view(1, 3, 1, 1), st)
    assert float(between) > float(d.max())


def test_flip_consistency_of_a_symmetric_input_is_one():
    labels = torch.randint(0, 4, (2, 6, 5))
    symmetric = torch.cat([labels, labels.flip(-1)], -1)
    assert torch.equal(M.label_agreement(symmetric, M.flip_back(symmetric)), torch.ones(2))
    assert torch.allclose(M.label_map_miou(symmetric, M.flip_back(symmetric), 4), torch.ones(2))
    p = M.class_probabilities(_scores(2, 4, 6, 10))
    p_sym = torch.cat([p, p.flip(-1)], -1)
    assert torch.allclose(M.soft_agreement(p_sym, M.flip_back(p_sym)), torch.ones(2), atol=1e-5)
    # An asymmetric map disagrees with its flip.
    a = torch.zeros(1, 4, 4, dtype=torch.long)
    a[..., :2] = 1
    assert float(M.label_agreement(a, M.flip_back(a))) == 0.0 and float(M.label_map_miou(a, M.flip_back(a), 2)) == 0


def test_label_map_miou_counts_classes_in_either():
    a = torch.tensor([[[0, 0, 1, 1]]])
    b = torch.tensor([[[0, 0, 1, 2]]])
    # class 0: 2/2, class 1: 1/2, class 2: 0/1 -> mean 0.5
    assert float(M.label_map_miou(a, b, 3)) == pytest.approx(0.5)
    assert float(M.label_agreement(a, b)) == pytest.approx(0.75)


def test_histograms():
    labels = torch.tensor([[[0, 0, 1, 255]]])
    h = M.class_histogram(labels, 3)
    assert torch.allclose(h, torch.tensor([[0.5, 0.25, 0.0]]))
    ref = torch.tensor([0.5, 0.25, 0.25])
    for kind in ("skl", "l1", "hellinger"):
        d_same = M.histogram_distance(ref[None], ref, kind)
        d_other = M.histogram_distance(torch.tensor([[0.0, 0.0, 1.0]]), ref, kind)
        assert float(d_same) == pytest.approx(0.0, abs=1e-6) and float(d_other) > 0.1
    with pytest.raises(ValueError):
        M.histogram_distance(h, ref, "nope")
    soft = M.soft_class_histogram(_scores(2, 4))
    assert soft.shape == (2, 4) and torch.allclose(soft.sum(1), torch.ones(2), atol=1e-5)


def test_image_statistics_track_brightness_and_contrast():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(1, 3, 16, 16, generator=g) * 255
    dark = img * 0.2
    flat = img.mean() + 0.2 * (img - img.mean())
    s, sd, sf = M.image_statistics(img), M.image_statistics(dark), M.image_statistics(flat)
    assert s.shape == (1, len(M.IMAGE_STATISTICS))
    assert sd[0, 0] < s[0, 0] and sf[0, 1] < s[0, 1] and sd[0, 2] > s[0, 2] and sf[0, 4] < s[0, 4]
    st = M.fit_diagonal(torch.cat([M.image_statistics(img + n) for n in (-5.0, 0.0, 5.0, 10.0)]))
    assert float(M.diagonal_distance(sd, st)) > float(M.diagonal_distance(s, st))


def test_standardize_combine_and_thresholds():
    cal = torch.arange(100.0)
    norm = M.fit_normalizer(cal)
    z = M.standardize(torch.tensor([norm["mean"].item(), 0.0]), norm)
    assert float(z[0]) == pytest.approx(0.0) and float(z[1]) < -1.5
    both = M.combine([torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.0])])
    assert torch.allclose(both, torch.tensor([2.0, -1.0]))
    assert torch.allclose(M.combine([torch.tensor([1.0]), torch.tensor([-4.0])], "min"), torch.tensor([-4.0]))
    th = M.alarm_thresholds(cal, 0.05, 0.01)
    # 100 frames: the 2nd smallest holds 5 % with 90 % confidence (P(Binomial(100, 0.05) <= 1) = 0.037, <= 2: 0.118);
    # 1 % would need 230 frames, so the error threshold is the normal tail fit, below the smallest score.
    assert th["warn"] == 1.0 and th["warn_rule"] == "order statistic 2 of 100" and th["count"] == 100
    assert th["error"] == pytest.approx(49.5 - 2.32635 * float(cal.std()), abs=1e-4) and "too few" in th["error_rule"]
    assert th["expected_warn_rate"] == pytest.approx(2 / 101) and th["confidence"] == M.ALARM_CONFIDENCE
    assert (th["warn_frames_needed"], th["error_frames_needed"]) == (45, 230)


def test_alarm_thresholds_hold_the_false_alarm_rate_with_their_confidence():
    """The in-domain false-alarm rate a threshold gives new frames: with N(0, 1) scores, the share below the
    threshold t is Phi(t). Over many calibration sets, the warning threshold exceeds 5 % in at most about 10 % of them.
    An empirical 5 % quantile of 100 frames exceeds it in about half."""
    gen = torch.Generator().manual_seed(0)
    normal = torch.distributions.Normal(0.0, 1.0)
    for n in (60, 100, 400):
        rates = torch.tensor([float(normal.cdf(torch.tensor(M.alarm_thresholds(torch.randn(n, generator=gen))["warn"])))
                              for _ in range(1000)])
        assert float((rates > 0.05).float().mean()) <= 0.12, n
        assert 0.01 < float(rates.mean()) < 0.05, n
    scores = torch.randn(20, generator=gen)
    few = M.alarm_thresholds(scores)
    assert "too few" in few["warn_rule"] and few["error"] <= few["warn"] <= float(scores.min())


def test_statistics_round_trip_through_json():
    st = M.fit_gaussian(torch.randn(10, 3))
    plain = json.loads(json.dumps(M.to_plain({"taps": st, "n": 10})))
    back = M.from_plain(plain)
    assert torch.allclose(back["taps"]["precision"], st["precision"]) and float(back["n"]) == 10
    x = torch.randn(4, 3)
    assert torch.allclose(M.mahalanobis(x, back["taps"]), M.mahalanobis(x, st))


def test_network_outputs_match_the_network_and_default_score():
    from vltseg_ros.config import model_preset
    from vltseg_ros.model import build_model

    torch.manual_seed(0)
    model = build_model(model_preset("eva02_tiny", heads=["seg"])).eval()
    images = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        out = M.network_outputs(model, images)
        ref = model(images)["seg_scores"]
    assert torch.allclose(out["seg_scores"], ref, atol=1e-5)
    assert len(out["taps"]) == 4 and out["mask_features"].shape[0] == 2
    assert out["pred_logits"].shape[:2] == out["pred_masks"].shape[:2]
    desc = M.frame_descriptor(out)
    assert desc.shape == (2, 2 * out["mask_features"].shape[1])
    stats = M.fit_frame_score(torch.cat([desc, desc + 0.01 * torch.randn_like(desc)]))
    score = M.frame_score(desc, stats)
    assert score.shape == (2,) and torch.isfinite(score).all() and (score <= 0).all()
    assert (M.frame_score(desc * 3 + 1, stats) < score).all()


def test_out_of_fold_scores_are_lower_than_in_sample():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 16, generator=g)
    oof = M.out_of_fold_scores(x, folds=5)
    in_sample = M.frame_score(x, M.fit_frame_score(x))
    assert oof.shape == (40,) and torch.isfinite(oof).all()
    # A frame looks more in-domain against statistics that include it.
    assert float(oof.mean()) < float(in_sample.mean())
    held = torch.arange(40) % 5 == 2
    assert torch.allclose(oof[held], M.frame_score(x[held], M.fit_frame_score(x[~held])))
    with pytest.raises(ValueError):
        M.out_of_fold_scores(x[:6], folds=5)
