"""Frame-level domain-shift scores: how far one frame is from what the network was trained on (issue 20).

ROS-free, torch only, no I/O. Every score is a **confidence**: higher means the frame's output is more trustworthy.
Functions take tensors on any device and return tensors on that device (float32, batch first), so the predictor
can compute them beside its forward pass without a host round trip. Nothing here keeps state: calibration
statistics are plain dicts of tensors that ``to_plain`` turns into JSON-able lists (checkpoint metadata) and
``from_plain`` turns back.

Which inputs each family needs (all from one forward pass unless stated):

- **output-based** (``seg_scores`` [B, K, H, W], the per-class scores ``Mask2FormerHead.semantic_scores`` returns,
  which do *not* sum to one): pixel maps ``max_probability_map``, ``entropy_confidence_map``, ``rba_confidence_map``
  pooled by ``pool_mean``, ``pool_quantile``, ``pool_fraction_above`` or ``pool_grid_worst``;
- **feature-based** (encoder taps or the pixel decoder's ``mask_features``, see ``network_outputs``): a frame's
  channel statistics (``channel_statistics``) against a Gaussian fitted on calibration frames (``fit_gaussian`` +
  ``mahalanobis``, or ``fit_diagonal`` + ``diagonal_distance``); per-token distances (``moments`` /
  ``gaussian_from_moments`` + ``token_mahalanobis_map``); class-conditional token distances (``class_moments`` /
  ``class_gaussian_from_moments`` + ``class_mahalanobis_map``);
- **consistency-based**: ``label_agreement`` / ``label_map_miou`` / ``soft_agreement`` between the prediction and
  the prediction of a flipped (``flip_back``) or rescaled input (a second forward pass), and the shift of the
  predicted class frequencies from the calibration mean (``class_histogram`` + ``histogram_distance``);
- **model-free baseline**: ``image_statistics`` (brightness, contrast, ...) of the RGB input against the
  calibration frames' (``fit_diagonal`` + ``diagonal_distance``).

**The default** (``DEFAULT_SCORE``, chosen on the evidence): ``frame_descriptor`` (channel means and stds of the
pixel decoder's ``mask_features``) -> ``fit_frame_score`` (diagonal Gaussian of calibration frames) ->
``frame_score`` (-log1p of the RMS z-score); thresholds from ``out_of_fold_scores`` via ``alarm_thresholds``.

Combining and calibrating: ``fit_normalizer`` / ``standardize`` put scores of different kinds on the in-domain
z-scale so that ``combine`` can average them; ``alarm_thresholds`` gives the warning/error thresholds at chosen
in-domain false-alarm rates. The measured comparison of these candidates is in bench/RESULTS.md ("Domain-shift
monitor") and bench/monitor.py.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-6

__all__ = [
    "network_outputs", "class_probabilities", "max_probability_map", "entropy_confidence_map", "rba_confidence_map",
    "pool_mean", "pool_quantile", "pool_fraction_above", "pool_grid_worst", "channel_statistics", "fit_gaussian",
    "mahalanobis", "fit_diagonal", "diagonal_distance", "moments", "merge_moments", "gaussian_from_moments",
    "token_mahalanobis_map", "class_moments", "class_gaussian_from_moments", "class_mahalanobis_map",
    "flip_back", "label_agreement", "label_map_miou", "soft_agreement", "class_histogram", "soft_class_histogram",
    "histogram_distance", "image_statistics", "fit_normalizer", "standardize", "combine", "alarm_thresholds",
    "frames_for_bound",
    "ALARM_CONFIDENCE", "to_plain", "from_plain", "tokens", "IMAGE_STATISTICS", "DEFAULT_SCORE", "frame_descriptor",
    "fit_frame_score", "frame_score", "out_of_fold_scores",
]


# ------------------------------------------------------------------------------------------------ network outputs
def network_outputs(model: torch.nn.Module, images: Tensor, mask_features: bool = True) -> dict[str, Any]:
    """Run a ``VLTSeg`` network (eval mode, segmentation head) once and return what the scores read.

    ``images``: normalised [B, 3, H, W] (``model.normalize``), any size. Returns
    ``taps`` (4 x [B, C, h, w] encoder tap maps), ``pyramid`` (4 maps, finest first), ``pred_logits`` [B, Q, K+1],
    ``pred_masks`` [B, Q, h4, w4] (mask logits at stride 4), ``mask_features`` [B, D, h4, w4] (the pixel decoder's
    output, captured by a forward hook; absent when ``mask_features`` is False) and ``seg_scores`` [B, K, H, W]
    float32, computed exactly as ``VLTSeg.forward`` computes them in eval mode (so their argmax is the predictor's
    label map in whole-image mode at the network's input size). The caller chooses ``torch.no_grad`` and autocast.
    """
    from .model.encoder import floor_to_multiple, pad_to_multiple

    height, width = images.shape[-2:]
    floor = model.cfg.encoder.patch_grid == "floor"
    padded = floor_to_multiple(images, model.patch_size) if floor else pad_to_multiple(images, model.patch_size)
    taps = model.encoder(padded)
    pyramid = model.pyramid(taps)
    captured: dict[str, Tensor] = {}
    handle = None
    if mask_features:
        handle = model.seg_head.pixel_decoder.register_forward_hook(
            lambda _module, _inputs, output: captured.__setitem__("mask_features", output[0]))
    try:
        pred = model.seg_head(pyramid)
    finally:
        if handle is not None:
            handle.remove()
    masks = F.interpolate(pred["pred_masks"].float(), size=(height, width) if floor else padded.shape[-2:],
                          mode="bilinear", align_corners=False)
    seg_scores = torch.einsum("bqk,bqhw->bkhw", pred["pred_logits"].float().softmax(-1)[..., :-1], masks.sigmoid())
    out = {"taps": list(taps), "pyramid": list(pyramid), "pred_logits": pred["pred_logits"],
           "pred_masks": pred["pred_masks"], "seg_scores": seg_scores[..., :height, :width]}
    out.update(captured)
    return out


# ------------------------------------------------------------------------------------------------ output-based maps
def class_probabilities(seg_scores: Tensor) -> Tensor:
    """[B, K, H, W] Mask2Former class scores -> per-pixel distribution over the K classes (scores / their sum, as
    the predictor's confidence image normalises them)."""
    scores = seg_scores.float().clamp_min(0)
    return scores / scores.sum(1, keepdim=True).clamp_min(EPS)


def max_probability_map(seg_scores: Tensor) -> Tensor:
    """[B, K, H, W] -> [B, H, W] in [1/K, 1]: the winner's normalised probability (the ``~/confidence`` image)."""
    return class_probabilities(seg_scores).amax(1)


def entropy_confidence_map(seg_scores: Tensor) -> Tensor:
    """[B, K, H, W] -> [B, H, W] in [0, 1]: 1 - entropy / log K of the normalised class distribution (1 = certain)."""
    p = class_probabilities(seg_scores)
    entropy = -(p * p.clamp_min(EPS).log()).sum(1)
    return 1.0 - entropy / math.log(seg_scores.shape[1])


def rba_confidence_map(seg_scores: Tensor) -> Tensor:
    """[B, K, H, W] -> [B, H, W] in [0, K]: sum_k tanh(score_k), the negated "rejected by all" outlier score (RbA,
    Nayal et al., ICCV 2023) over Mask2Former's query-class x mask scores. Low where every class rejects the pixel."""
    return torch.tanh(seg_scores.float()).sum(1)


# ------------------------------------------------------------------------------------------------ pooling
def pool_mean(confidence: Tensor) -> Tensor:
    """[B, H, W] -> [B]: spatial mean."""
    return confidence.float().flatten(1).mean(1)


def pool_quantile(confidence: Tensor, q: float) -> Tensor:
    """[B, H, W] -> [B]: the q-quantile (0..1) of the pixel values (a low q looks at the least confident pixels)."""
    flat = confidence.float().flatten(1)
    k = min(flat.shape[1], max(1, int(round(q * (flat.shape[1] - 1))) + 1))
    return flat.kthvalue(k, dim=1).values


def pool_fraction_above(confidence: Tensor, threshold: float) -> Tensor:
    """[B, H, W] -> [B] in [0, 1]: the fraction of pixels whose confidence is at least ``threshold`` (one minus the
    fraction of uncertain pixels)."""
    return (confidence.float() >= threshold).flatten(1).float().mean(1)


def pool_grid_worst(confidence: Tensor, grid: Sequence[int] = (4, 8), worst: int = 4) -> Tensor:
    """[B, H, W] -> [B]: mean confidence of the ``worst`` least confident cells of a ``grid`` (rows, cols) of equal
    cells (adaptive average pooling): a frame whose trouble is local is not averaged away."""
    cells = F.adaptive_avg_pool2d(confidence.float().unsqueeze(1), tuple(grid)).flatten(1)
    return cells.topk(min(worst, cells.shape[1]), dim=1, largest=False).values.mean(1)


# ------------------------------------------------------------------------------------------------ feature-based
def channel_statistics(features: Sequence[Tensor]) -> Tensor:
    """Maps [B, C_i, h_i, w_i] -> [B, sum_i 2 C_i]: per map, each channel's spatial mean, then its spatial standard
    deviation (float32). The frame-level feature descriptor the Gaussians below are fitted on."""
    parts = []
    for feat in features:
        flat = feat.float().flatten(2)
        parts += [flat.mean(2), flat.std(2, unbiased=False)]
    return torch.cat(parts, 1)


def _ledoit_wolf(centred: Tensor) -> tuple[Tensor, float]:
    """Ledoit-Wolf shrunk covariance of centred samples [N, D] (float64) and the shrinkage it chose."""
    n, d = centred.shape
    cov = centred.T @ centred / n
    mu = torch.trace(cov) / d
    delta = ((cov - mu * torch.eye(d, dtype=cov.dtype, device=cov.device)) ** 2).sum() / d
    x2 = centred ** 2
    beta = ((x2.T @ x2) / n - cov ** 2).sum() / (d * n)
    shrink = float((torch.minimum(beta, delta) / delta).clamp(0, 1)) if float(delta) > 0 else 1.0
    eye = torch.eye(d, dtype=cov.dtype, device=cov.device)
    return (1 - shrink) * cov + shrink * mu * eye, shrink


def _precision(cov: Tensor, shrinkage: Optional[float]) -> Tensor:
    d = cov.shape[0]
    eye = torch.eye(d, dtype=cov.dtype, device=cov.device)
    if shrinkage is not None:
        cov = (1 - shrinkage) * cov + shrinkage * (torch.trace(cov) / d) * eye
    cov = cov + eye * (torch.trace(cov) / d * 1e-6 + 1e-12)
    return torch.linalg.inv(cov)


def fit_gaussian(samples: Tensor, shrinkage: Optional[float] = None) -> dict[str, Tensor]:
    """Gaussian of calibration descriptors [N, D] (N >= 2; N < D is fine): ``mean`` [D] and ``precision`` [D, D]
    (inverse covariance, float32). The covariance is shrunk towards a scaled identity by ``shrinkage`` in [0, 1],
    or by the Ledoit-Wolf estimate when None (then ``shrinkage`` is returned as a 0-d tensor too)."""
    x = samples.double()
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"fit_gaussian needs [N>=2, D] samples, got {tuple(samples.shape)}")
    mean = x.mean(0)
    if shrinkage is None:
        cov, shrinkage = _ledoit_wolf(x - mean)
        precision = _precision(cov, None)
    else:
        centred = x - mean
        precision = _precision(centred.T @ centred / x.shape[0], shrinkage)
    return {"mean": mean.float(), "precision": precision.float(), "shrinkage": torch.tensor(float(shrinkage))}


def mahalanobis(x: Tensor, stats: Mapping[str, Tensor]) -> Tensor:
    """[B, D] descriptors -> [B] Mahalanobis distances (>= 0) to a ``fit_gaussian`` result. A distance: the frame
    score is its negation (or -log1p of it)."""
    diff = x.float() - stats["mean"].to(x.device)
    d2 = torch.einsum("bi,ij,bj->b", diff, stats["precision"].to(x.device), diff)
    return d2.clamp_min(0).sqrt()


def fit_diagonal(samples: Tensor) -> dict[str, Tensor]:
    """Diagonal Gaussian of calibration descriptors [N, D]: ``mean`` [D] and ``std`` [D] (floored at 1e-6 and at
    1e-3 of the mean std, so a constant dimension does not explode the distance)."""
    x = samples.float()
    std = x.std(0, unbiased=True) if x.shape[0] > 1 else torch.ones_like(x[0])
    floor = max(float(std.mean()) * 1e-3, EPS)
    return {"mean": x.mean(0), "std": std.clamp_min(floor)}


def diagonal_distance(x: Tensor, stats: Mapping[str, Tensor]) -> Tensor:
    """[B, D] -> [B]: root-mean-square z-score of the descriptor against a ``fit_diagonal`` result (>= 0)."""
    z = (x.float() - stats["mean"].to(x.device)) / stats["std"].to(x.device)
    return z.pow(2).mean(1).sqrt()


def moments(samples: Tensor) -> dict[str, Tensor]:
    """Sufficient statistics of samples [N, D] (float64): ``count``, ``sum`` [D], ``outer`` [D, D]. Merge frames'
    moments with ``merge_moments`` and fit with ``gaussian_from_moments`` (streaming calibration)."""
    x = samples.double()
    return {"count": torch.tensor(float(x.shape[0]), dtype=torch.float64, device=x.device), "sum": x.sum(0),
            "outer": x.T @ x}


def merge_moments(a: Optional[Mapping[str, Tensor]], b: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Element-wise sum of two ``moments`` / ``class_moments`` dicts (``a`` may be None: returns a copy of ``b``)."""
    if a is None:
        return {k: v.clone() for k, v in b.items()}
    return {k: a[k] + b[k].to(a[k].device) for k in a}


def gaussian_from_moments(m: Mapping[str, Tensor], shrinkage: float = 0.01) -> dict[str, Tensor]:
    """``moments`` -> ``mean`` [D] and ``precision`` [D, D] (covariance shrunk by ``shrinkage`` towards a scaled
    identity), float32, for ``token_mahalanobis_map``."""
    n = m["count"]
    mean = m["sum"] / n
    cov = m["outer"] / n - torch.outer(mean, mean)
    return {"mean": mean.float(), "precision": _precision(cov, shrinkage).float()}


def token_mahalanobis_map(feature: Tensor, stats: Mapping[str, Tensor]) -> Tensor:
    """[B, C, h, w] feature map -> [B, h, w] Mahalanobis distance of every token to a ``gaussian_from_moments``
    Gaussian of calibration tokens (>= 0; pool it and negate for a frame score)."""
    x = feature.float().permute(0, 2, 3, 1) - stats["mean"].to(feature.device)
    d2 = ((x @ stats["precision"].to(feature.device)) * x).sum(-1)
    return d2.clamp_min(0).sqrt()


def tokens(feature: Tensor) -> Tensor:
    """[B, C, h, w] -> [B*h*w, C] (for ``moments``)."""
    return feature.permute(0, 2, 3, 1).reshape(-1, feature.shape[1])


def class_moments(feature: Tensor, labels: Tensor, num_classes: int) -> dict[str, Tensor]:
    """Class-conditional sufficient statistics of a [B, C, h, w] feature map whose tokens carry ``labels``
    [B, H, W] (class ids; others, e.g. 255, are skipped; resized to h x w by nearest neighbour): ``count`` [K],
    ``sum`` [K, C], ``outer`` [C, C] (float64)."""
    if labels.shape[-2:] != feature.shape[-2:]:
        labels = F.interpolate(labels[:, None].float(), size=feature.shape[-2:], mode="nearest")[:, 0]
    lab = labels.reshape(-1).long()
    x = tokens(feature).double()
    keep = (lab >= 0) & (lab < num_classes)
    x, lab = x[keep], lab[keep]
    one_hot = F.one_hot(lab, num_classes).double()
    return {"count": one_hot.sum(0), "sum": one_hot.T @ x, "outer": x.T @ x}


def class_gaussian_from_moments(m: Mapping[str, Tensor], shrinkage: float = 0.01,
                                min_count: int = 50) -> dict[str, Tensor]:
    """``class_moments`` -> ``means`` [K', C] of the classes seen at least ``min_count`` times and the shared
    (tied) ``precision`` [C, C] of the within-class covariance (Lee et al., NeurIPS 2018), float32."""
    count, sums = m["count"], m["sum"]
    seen = count >= min_count
    if not bool(seen.any()):
        raise ValueError("no class has enough calibration tokens")
    means = sums[seen] / count[seen, None]
    total = count[seen].sum()
    within = (m["outer"] - sum(torch.outer(s, s) / c for s, c in zip(sums[seen], count[seen]))) / total
    return {"means": means.float(), "precision": _precision(within, shrinkage).float(),
            "classes": seen.nonzero()[:, 0]}


def class_mahalanobis_map(feature: Tensor, stats: Mapping[str, Tensor]) -> Tensor:
    """[B, C, h, w] -> [B, h, w]: every token's Mahalanobis distance to the nearest class mean of a
    ``class_gaussian_from_moments`` fit (tied covariance; >= 0)."""
    x = feature.float().permute(0, 2, 3, 1)
    means = stats["means"].to(feature.device)
    precision = stats["precision"].to(feature.device)
    # (x - m)^T P (x - m) = x^T P x - 2 x^T P m + m^T P m, for every class mean m at once.
    xp = x @ precision
    d2 = (xp * x).sum(-1, keepdim=True) - 2 * xp @ means.T + ((means @ precision) * means).sum(-1)
    return d2.amin(-1).clamp_min(0).sqrt()


# ------------------------------------------------------------------------------------------------ consistency-based
def flip_back(x: Tensor) -> Tensor:
    """Undo a horizontal flip of the input on an output map (any [..., W] tensor): flip the last axis."""
    return x.flip(-1)


def label_agreement(a: Tensor, b: Tensor) -> Tensor:
    """[B, H, W] label maps -> [B] in [0, 1]: the fraction of pixels where both maps give the same class."""
    return (a == b).flatten(1).float().mean(1)


def label_map_miou(a: Tensor, b: Tensor, num_classes: int) -> Tensor:
    """[B, H, W] label maps -> [B] in [0, 1]: mean IoU of map ``a`` against map ``b`` over the classes present in
    either (symmetric; 1 = identical). Weighs small classes like the frame mIoU the score should track."""
    k = num_classes
    a, b = a.long().flatten(1), b.long().flatten(1)
    valid = (a >= 0) & (a < k) & (b >= 0) & (b < k)
    pair = torch.where(valid, a * k + b, torch.full_like(a, k * k))
    conf = torch.zeros(a.shape[0], k * k + 1, device=a.device)
    conf.scatter_add_(1, pair, torch.ones_like(pair, dtype=conf.dtype))
    conf = conf[:, :k * k].view(-1, k, k)
    inter = conf.diagonal(dim1=1, dim2=2)
    union = conf.sum(2) + conf.sum(1) - inter
    present = union > 0
    iou = torch.where(present, inter / union.clamp_min(1), torch.zeros_like(inter))
    return iou.sum(1) / present.sum(1).clamp_min(1)


def soft_agreement(p: Tensor, q: Tensor) -> Tensor:
    """Two [B, K, H, W] class distributions (``class_probabilities``) -> [B] in [0, 1]: mean over pixels of
    sum_k min(p_k, q_k) (1 - total variation distance; 1 = identical)."""
    return torch.minimum(p.float(), q.float()).sum(1).flatten(1).mean(1)


def class_histogram(labels: Tensor, num_classes: int) -> Tensor:
    """[B, H, W] predicted label maps -> [B, K] class frequencies (fractions of the pixels with a class id in
    [0, K); a frame with none gives zeros)."""
    lab = labels.long().flatten(1)
    valid = (lab >= 0) & (lab < num_classes)
    hist = torch.zeros(lab.shape[0], num_classes + 1, device=labels.device)
    index = torch.where(valid, lab, torch.full_like(lab, num_classes))
    hist.scatter_add_(1, index, torch.ones(index.shape, device=labels.device))
    return hist[:, :num_classes] / lab.shape[1]


def soft_class_histogram(seg_scores: Tensor) -> Tensor:
    """[B, K, H, W] -> [B, K]: the frame's mean normalised class distribution (sums to 1)."""
    return class_probabilities(seg_scores).mean((2, 3))


def histogram_distance(hist: Tensor, reference: Tensor, kind: str = "skl", eps: float = 1e-3) -> Tensor:
    """[B, K] class frequencies vs a [K] reference (e.g. the calibration frames' mean histogram) -> [B] >= 0:
    ``skl`` symmetric KL divergence (both smoothed by ``eps`` and renormalised), ``l1`` L1 distance,
    ``hellinger`` Hellinger distance."""
    ref = reference.to(hist.device).float().expand_as(hist)
    h = hist.float()
    if kind == "l1":
        return (h - ref).abs().sum(1)
    p = (h + eps) / (h + eps).sum(1, keepdim=True)
    r = (ref + eps) / (ref + eps).sum(1, keepdim=True)
    if kind == "skl":
        return ((p - r) * (p.log() - r.log())).sum(1)
    if kind == "hellinger":
        return ((p.sqrt() - r.sqrt()) ** 2).sum(1).clamp_min(0).sqrt() / math.sqrt(2)
    raise ValueError(f"kind must be 'skl', 'l1' or 'hellinger', got {kind!r}")


# ------------------------------------------------------------------------------------------------ model-free baseline
IMAGE_STATISTICS = ("brightness", "contrast", "dark_fraction", "bright_fraction", "sharpness", "saturation")


def image_statistics(images: Tensor) -> Tensor:
    """[B, 3, H, W] RGB on the 0-255 scale (before normalisation) -> [B, 6] model-free statistics, in the order of
    ``IMAGE_STATISTICS``: mean luma (0-1), RMS contrast (luma std), fraction of pixels under luma 0.1, fraction over
    0.9, mean absolute luma gradient (sharpness) and mean saturation (max - min of RGB)."""
    rgb = images.float() / 255.0
    luma = 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]
    flat = luma.flatten(1)
    grad = (luma[:, :, 1:] - luma[:, :, :-1]).abs().flatten(1).mean(1) + \
        (luma[:, 1:] - luma[:, :-1]).abs().flatten(1).mean(1)
    saturation = (rgb.amax(1) - rgb.amin(1)).flatten(1).mean(1)
    return torch.stack([flat.mean(1), flat.std(1, unbiased=False), (flat < 0.1).float().mean(1),
                        (flat > 0.9).float().mean(1), grad, saturation], 1)


# ------------------------------------------------------------------------------------------------ combining, alarms
def fit_normalizer(calibration_scores: Tensor) -> dict[str, Tensor]:
    """[N] in-domain scores of one candidate -> its ``mean`` and ``std`` (for ``standardize``)."""
    x = calibration_scores.float()
    return {"mean": x.mean(), "std": x.std().clamp_min(EPS)}


def standardize(scores: Tensor, normalizer: Mapping[str, Tensor]) -> Tensor:
    """[B] scores -> [B] in-domain z-scores (0 = the calibration mean, -1 = one calibration std worse)."""
    return (scores.float() - normalizer["mean"].to(scores.device)) / normalizer["std"].to(scores.device)


def combine(z_scores: Sequence[Tensor], how: str = "mean") -> Tensor:
    """Combine standardised scores (each [B]) of several candidates: ``mean`` (an average of z-scores) or ``min``
    (the most alarming one)."""
    stacked = torch.stack([z.float() for z in z_scores], 0)
    if how == "mean":
        return stacked.mean(0)
    if how == "min":
        return stacked.amin(0)
    raise ValueError(f"how must be 'mean' or 'min', got {how!r}")


ALARM_CONFIDENCE = 0.9
"""How sure the default thresholds are that a new in-domain frame falls below them no more often than the rate."""


def _order_statistic_rank(n: int, rate: float, confidence: float) -> int:
    """The largest k (1-based) for which the k-th smallest of n in-domain scores, taken as the threshold, keeps the
    in-domain false-alarm rate at or below ``rate`` with probability ``confidence``; 0 when even the smallest cannot.
    The share of in-domain frames below the k-th smallest of n is Beta(k, n + 1 - k) distributed, so
    P(share > rate) = P(Binomial(n, rate) <= k - 1) (a one-sided distribution-free tolerance bound)."""
    import numpy as np
    from scipy.stats import binom

    # The binomial CDF rises with k: count the ranks whose CDF stays within 1 - confidence.
    return int((binom.cdf(np.arange(n), n, rate) <= 1.0 - confidence).sum())


def frames_for_bound(rate: float, confidence: float = ALARM_CONFIDENCE) -> int:
    """The fewest calibration frames for which even the smallest score holds ``rate`` with ``confidence``:
    (1 - rate) ** n <= 1 - confidence (45 for 5 %, 230 for 1 % at 90 %)."""
    return math.ceil(math.log(1.0 - confidence) / math.log(1.0 - rate) - 1e-9)


def _threshold(sorted_scores: Tensor, rate: float, confidence: float) -> tuple[float, float, str]:
    """(threshold, its expected in-domain false-alarm rate, how it was set) for one rate."""
    n = sorted_scores.numel()
    k = _order_statistic_rank(n, rate, confidence)
    if k:
        return float(sorted_scores[k - 1]), k / (n + 1), f"order statistic {k} of {n}"
    # Too few frames for the guarantee: a normal fit of the scores' lower tail, never above the lowest score.
    z = -float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(rate)))
    normal = float(sorted_scores.mean() - z * sorted_scores.std()) if n > 1 else float(sorted_scores[0])
    return min(float(sorted_scores[0]), normal), min(rate, 1 / (n + 1)), "normal tail (too few frames)"


def alarm_thresholds(calibration_scores: Tensor, warn_rate: float = 0.05, error_rate: float = 0.01,
                     confidence: float = ALARM_CONFIDENCE) -> dict[str, Any]:
    """In-domain (out-of-fold) scores [N] -> ``warn`` and ``error`` thresholds: a frame scoring below ``warn``
    raises a warning.

    Each threshold is the largest order statistic of the N scores that keeps the in-domain false-alarm rate at or
    below ``warn_rate`` (``error_rate``) with probability ``confidence`` (90 %): a distribution-free bound.
    An empirical 5 % quantile of N frames is exceeded about half the time, and by much with few frames: 40
    calibration frames gave 10-22 % false alarms on new in-domain frames (bench/RESULTS.md).

    The expected rate is lower than the bound, and approaches it as N grows: for 5 % it is 2 % at N = 100, 3 % at
    200 and 4 % at 1000.

    The bound needs N >= ``frames_for_bound(rate, confidence)`` (45 for 5 % and 230 for 1 % at 90 %), recorded as
    ``warn_frames_needed`` / ``error_frames_needed``. With fewer frames the threshold falls back to a normal fit of
    the scores' lower tail, never above the lowest score; ``warn_rule`` / ``error_rule`` say which rule set each
    threshold.
    """
    x = calibration_scores.double().flatten().sort().values
    warn, warn_expected, warn_rule = _threshold(x, warn_rate, confidence)
    error, error_expected, error_rule = _threshold(x, error_rate, confidence)
    return {"warn": warn, "error": min(error, warn), "warn_rate": warn_rate, "error_rate": error_rate,
            "confidence": confidence, "warn_rule": warn_rule, "error_rule": error_rule,
            "expected_warn_rate": warn_expected, "expected_error_rate": error_expected, "count": int(x.numel()),
            "warn_frames_needed": frames_for_bound(warn_rate, confidence),
            "error_frames_needed": frames_for_bound(error_rate, confidence)}


# ------------------------------------------------------------------------------------------------ serialisation
def to_plain(stats: Any) -> Any:
    """Calibration statistics (dicts / lists of tensors and numbers) -> JSON-able lists and floats."""
    if isinstance(stats, Tensor):
        return stats.detach().cpu().tolist()
    if isinstance(stats, Mapping):
        return {k: to_plain(v) for k, v in stats.items()}
    if isinstance(stats, (list, tuple)):
        return [to_plain(v) for v in stats]
    return stats


def from_plain(plain: Any, device: str | torch.device = "cpu") -> Any:
    """Inverse of ``to_plain`` for dicts of number lists: every list of numbers becomes a float32 tensor (integer
    lists named ``classes`` stay int64)."""
    if isinstance(plain, Mapping):
        return {k: (torch.tensor(v, dtype=torch.int64, device=device) if k == "classes"
                    else from_plain(v, device)) for k, v in plain.items()}
    if isinstance(plain, (list, int, float)) and not isinstance(plain, bool):
        return torch.tensor(plain, dtype=torch.float32, device=device)
    return plain


# ------------------------------------------------------------------------------------------------ the default score
DEFAULT_SCORE = "feature_shift"
"""The default frame score, chosen on the evidence in bench/RESULTS.md ("Domain-shift monitor"): the shift of the
pixel decoder's feature statistics from the source's (``frame_descriptor`` + ``fit_frame_score`` +
``frame_score``)."""


def frame_descriptor(outputs: Mapping[str, Any]) -> Tensor:
    """The default score's per-frame descriptor [B, 2D] from ``network_outputs``: every channel's spatial mean and
    standard deviation of the pixel decoder's ``mask_features`` (D = the head's hidden width, 64 in the tiny model,
    256 in the paper's)."""
    return channel_statistics([outputs["mask_features"]])


def fit_frame_score(descriptors: Tensor) -> dict[str, Tensor]:
    """Calibration of the default score from in-domain descriptors [N, 2D]: a diagonal Gaussian (``mean`` and
    ``std``, [2D] each) by ``fit_diagonal``."""
    return fit_diagonal(descriptors)


def frame_score(descriptors: Tensor, stats: Mapping[str, Tensor]) -> Tensor:
    """The default frame score [B] (<= 0, higher = more trustworthy): -log(1 + RMS z-score of the descriptor
    against the calibration Gaussian), i.e. -log1p(``diagonal_distance``)."""
    return -torch.log1p(diagonal_distance(descriptors, stats))


def out_of_fold_scores(descriptors: Tensor, folds: int = 5, fit=fit_frame_score, score=frame_score) -> Tensor:
    """In-domain calibration descriptors [N, D] -> [N] scores, each computed with statistics fitted on the other
    folds (frame i is in fold i % ``folds``). Set alarm thresholds on these, not on in-sample scores: a frame scored
    against statistics that include it looks more in-domain than a new one (with 60 calibration frames the in-sample
    5th percentile gave twice the false alarms; bench/RESULTS.md)."""
    n = descriptors.shape[0]
    if n < 2 * folds:
        raise ValueError(f"out_of_fold_scores needs at least {2 * folds} frames for {folds} folds, got {n}")
    fold = torch.arange(n, device=descriptors.device) % folds
    out = torch.empty(n, device=descriptors.device)
    for f in range(folds):
        held = fold == f
        out[held] = score(descriptors[held], fit(descriptors[~held]))
    return out


BASELINE_SCORE = "image_baseline"
"""The model-free baseline reported beside the model's score: the shift of the input's brightness and contrast
from the source's (``baseline_descriptor``; calibrated and scored like the default, ``fit_frame_score`` and
``frame_score``)."""


def baseline_descriptor(images: Tensor) -> Tensor:
    """[B, 3, H, W] RGB on the 0-255 scale -> [B, 2]: mean luma and RMS contrast (``image_statistics``' first two),
    the baseline's descriptor. Fog and night show in exactly these."""
    return image_statistics(images)[:, :2]


def calibrate(descriptors: Mapping[str, Tensor], source: Mapping[str, Any], warn_rate: float = 0.05,
              error_rate: float = 0.01, folds: int = 5, confidence: float = ALARM_CONFIDENCE) -> dict[str, Any]:
    """The checkpoint metadata's ``monitor`` section from in-domain (held-out source) frames.

    ``descriptors``: per score name, [N, D] descriptors of N calibration frames (``Prediction.frame_descriptors``);
    ``source``: what the frames were (dataset, split, ...; stored as ``calibration``). Per score: the statistics
    fitted on all N frames, alarm thresholds that hold the ``warn_rate`` / ``error_rate`` false-alarm rates with
    ``confidence`` (``alarm_thresholds``), set on out-of-fold scores (what a new in-domain frame scores;
    ``out_of_fold_scores``), and that in-domain score distribution.
    """
    scores: dict[str, Any] = {}
    frames = None
    for name, desc in descriptors.items():
        desc = desc.float()
        frames = int(desc.shape[0])
        held_out = out_of_fold_scores(desc, folds)
        quantiles = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9)
        q = torch.quantile(held_out.double(), torch.tensor(quantiles, dtype=torch.float64))
        scores[name] = {
            "stats": to_plain(fit_frame_score(desc)),
            "thresholds": alarm_thresholds(held_out, warn_rate, error_rate, confidence),
            "distribution": {"mean": float(held_out.mean()), "std": float(held_out.std()),
                             "quantiles": {f"p{round(100 * k):02d}": float(v) for k, v in zip(quantiles, q)},
                             "out_of_fold_scores": [round(float(v), 6) for v in held_out.sort().values]},
        }
    return {"default": DEFAULT_SCORE, "scores": scores,
            "calibration": {**dict(source), "frames": frames, "folds": folds}}
