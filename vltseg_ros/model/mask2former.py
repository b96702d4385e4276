"""Mask2Former semantic-segmentation head and loss in plain PyTorch.

Mirrors mmdet-3.x ``Mask2FormerHead`` + ``MSDeformAttnPixelDecoder`` as configured by VLTSeg
(docs/design.md#method): a multi-scale deformable-attention pixel decoder over the three coarsest
pyramid levels, an FPN step for the finest level, a masked-attention transformer decoder with
deep supervision, and the point-sampled Hungarian-matched set loss. No CUDA extensions or mmcv:
deformable attention uses the ``grid_sample`` formulation from Deformable-DETR.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

__all__ = [
    "ms_deform_attn_core_pytorch",
    "MSDeformAttn",
    "SinePositionalEncoding",
    "MSDeformAttnPixelDecoder",
    "Mask2FormerHead",
    "point_sample",
    "get_uncertain_point_coords_with_randomness",
    "HungarianMatcher",
    "Mask2FormerLoss",
]


# ---------------------------------------------------------------------------------------------
# Multi-scale deformable attention
# ---------------------------------------------------------------------------------------------
def ms_deform_attn_core_pytorch(value: Tensor, spatial_shapes: Sequence[tuple[int, int]],
                                sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    """Deformable-DETR MSDeformAttn core: bilinear samples (align_corners=False, zero padding) weighted and summed.

    value: [B, sum(H*W), n_heads, head_dim]; sampling_locations: [B, Lq, n_heads, n_levels, n_points, 2] as
    normalised (x, y) in [0, 1] (0 = left/top edge of the map, 1 = right/bottom edge, pixel centres at (i+0.5)/W);
    attention_weights: [B, Lq, n_heads, n_levels, n_points]. Returns [B, Lq, n_heads*head_dim].
    """
    bsz, _, n_heads, head_dim = value.shape
    _, n_queries, _, n_levels, n_points, _ = sampling_locations.shape
    value_list = value.split([h * w for h, w in spatial_shapes], dim=1)
    sampling_grids = 2 * sampling_locations - 1  # grid_sample expects [-1, 1]
    sampled = []
    for lvl, (h, w) in enumerate(spatial_shapes):
        # [B, h*w, nh, dh] -> [B*nh, dh, h, w]
        value_l = value_list[lvl].flatten(2).transpose(1, 2).reshape(bsz * n_heads, head_dim, h, w)
        # [B, Lq, nh, P, 2] -> [B*nh, Lq, P, 2]
        grid_l = sampling_grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1).to(value_l.dtype)
        sampled.append(F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False))
    # [B*nh, dh, Lq, L*P] * [B*nh, 1, Lq, L*P]
    weights = attention_weights.transpose(1, 2).reshape(bsz * n_heads, 1, n_queries, n_levels * n_points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights.to(value.dtype)).sum(-1)
    return out.view(bsz, n_heads * head_dim, n_queries).transpose(1, 2).contiguous()


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention module (Deformable-DETR), pure PyTorch."""

    def __init__(self, d_model: int = 256, n_levels: int = 3, n_heads: int = 8, n_points: int = 4) -> None:
        """Build the offset/weight/value/output projections."""
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model {d_model} must be divisible by n_heads {n_heads}")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable-DETR init: zero offset weights, offset biases on a per-head ring of growing radius."""
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.n_heads, 1, 1, 2)
        grid = grid.repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(self, query: Tensor, reference_points: Tensor, value: Tensor,
                spatial_shapes: Sequence[tuple[int, int]]) -> Tensor:
        """query [B, Lq, C] (position already added), reference_points [B, Lq, n_levels, 2], value [B, Lv, C]."""
        bsz, n_q, _ = query.shape
        n_v = value.shape[1]
        v = self.value_proj(value).view(bsz, n_v, self.n_heads, self.d_model // self.n_heads)
        # Sampling positions are computed in fp32 (as the original CUDA op does): bf16 has only ~1/256 relative
        # precision, i.e. sub-pixel positions would be quantised on large maps.
        offsets = self.sampling_offsets(query).float().view(bsz, n_q, self.n_heads, self.n_levels, self.n_points, 2)
        attn = self.attention_weights(query).float().view(bsz, n_q, self.n_heads, self.n_levels * self.n_points)
        attn = attn.softmax(-1).view(bsz, n_q, self.n_heads, self.n_levels, self.n_points)
        normalizer = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=torch.float32, device=query.device)
        locations = (reference_points.float()[:, :, None, :, None, :]
                     + offsets / normalizer[None, None, None, :, None, :])
        out = ms_deform_attn_core_pytorch(v.float(), spatial_shapes, locations, attn)
        return self.output_proj(out)


class SinePositionalEncoding(nn.Module):
    """DETR sine positional encoding for an unpadded map (normalize=True, scale 2*pi, no offset)."""

    def __init__(self, num_feats: int = 128, temperature: float = 10000.0, scale: float = 2 * math.pi,
                 eps: float = 1e-6) -> None:
        """num_feats channels per axis; output has 2*num_feats channels (y first, then x)."""
        super().__init__()
        self.num_feats, self.temperature, self.scale, self.eps = num_feats, temperature, scale, eps

    def forward(self, h: int, w: int, device: torch.device | None = None) -> Tensor:
        """Return the [1, 2*num_feats, h, w] fp32 encoding."""
        y_embed = torch.arange(1, h + 1, dtype=torch.float32, device=device).view(h, 1).expand(h, w)
        x_embed = torch.arange(1, w + 1, dtype=torch.float32, device=device).view(1, w).expand(h, w)
        y_embed = y_embed / (h + self.eps) * self.scale
        x_embed = x_embed / (w + self.eps) * self.scale
        dim_t = torch.arange(self.num_feats, dtype=torch.float32, device=device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_feats)
        pos_x = x_embed[..., None] / dim_t
        pos_y = y_embed[..., None] / dim_t
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=-1).flatten(-2)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=-1).flatten(-2)
        return torch.cat((pos_y, pos_x), dim=-1).permute(2, 0, 1).unsqueeze(0)


def _caffe2_xavier_(conv: nn.Conv2d) -> None:
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.constant_(conv.bias, 0.0)


def _conv_gn(in_ch: int, out_ch: int, kernel: int, relu: bool = False, bias: bool = False) -> nn.Sequential:
    # No bias by default because GroupNorm follows (mmcv ConvModule bias='auto'); mmdet's Mask2Former asks for one
    # in the input projections (bias=True), where GroupNorm does not cancel it (it normalises groups of channels).
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=bias),
                               nn.GroupNorm(32, out_ch)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class _DeformEncoderLayer(nn.Module):
    """Deformable-DETR encoder layer: MSDeformAttn self-attention + FFN, post-norm, no dropout."""

    def __init__(self, d_model: int, n_levels: int, n_heads: int, n_points: int, ffn_dim: int) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, ffn_dim), nn.ReLU(inplace=True), nn.Linear(ffn_dim, d_model))
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src: Tensor, pos: Tensor, reference_points: Tensor,
                spatial_shapes: Sequence[tuple[int, int]]) -> Tensor:
        src = self.norm1(src + self.self_attn(src + pos, reference_points, src, spatial_shapes))
        return self.norm2(src + self.ffn(src))


class MSDeformAttnPixelDecoder(nn.Module):
    """Mask2Former pixel decoder: deformable encoder over the 3 coarsest levels + FPN step for the finest."""

    def __init__(self, in_channels: Sequence[int], hidden_dim: int = 256, num_layers: int = 6, num_heads: int = 8,
                 num_points: int = 4, ffn_dim: int = 1024, input_proj_bias: bool = True) -> None:
        """in_channels: channels of the 4 input maps, finest first; input_proj_bias: mmdet's conv bias in the
        input projections (False: the layout of checkpoints written before it existed)."""
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"expected 4 input levels, got {len(in_channels)}")
        self.num_enc_levels = 3
        # input_convs[i] projects encoder level i, coarsest first (features[3], features[2], features[1]).
        self.input_convs = nn.ModuleList([_conv_gn(in_channels[3 - i], hidden_dim, 1, bias=input_proj_bias)
                                          for i in range(self.num_enc_levels)])
        self.level_encoding = nn.Embedding(self.num_enc_levels, hidden_dim)
        self.pos_enc = SinePositionalEncoding(hidden_dim // 2)
        self.layers = nn.ModuleList([_DeformEncoderLayer(hidden_dim, self.num_enc_levels, num_heads, num_points, ffn_dim)
                                     for _ in range(num_layers)])
        self.lateral_conv = _conv_gn(in_channels[0], hidden_dim, 1)
        self.output_conv = _conv_gn(hidden_dim, hidden_dim, 3, relu=True)
        self.mask_feature = nn.Conv2d(hidden_dim, hidden_dim, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """mmdet MSDeformAttnPixelDecoder.init_weights."""
        for conv in self.input_convs:
            nn.init.xavier_uniform_(conv[0].weight)
            if conv[0].bias is not None:
                nn.init.zeros_(conv[0].bias)
        _caffe2_xavier_(self.lateral_conv[0])
        _caffe2_xavier_(self.output_conv[0])
        _caffe2_xavier_(self.mask_feature)
        nn.init.normal_(self.level_encoding.weight, 0.0, 1.0)
        for p in self.layers.parameters():
            if p.dim() > 1:
                nn.init.xavier_normal_(p)
        for m in self.layers.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()

    @staticmethod
    def _reference_points(spatial_shapes: Sequence[tuple[int, int]], n_levels: int, device: torch.device) -> Tensor:
        # Pixel centres normalised per level; valid ratios are all 1 (no padding), so the same point is used on
        # every level: [1, sum(HW), n_levels, 2] as (x, y).
        refs = []
        for h, w in spatial_shapes:
            ys, xs = torch.meshgrid(torch.linspace(0.5, h - 0.5, h, dtype=torch.float32, device=device) / h,
                                    torch.linspace(0.5, w - 0.5, w, dtype=torch.float32, device=device) / w,
                                    indexing="ij")
            refs.append(torch.stack((xs.reshape(-1), ys.reshape(-1)), -1))
        return torch.cat(refs, 0)[None, :, None, :].expand(-1, -1, n_levels, -1)

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """Return (mask_features [B, C, H_0, W_0], 3 encoder output maps coarsest first)."""
        bsz = features[0].shape[0]
        srcs, poss, shapes = [], [], []
        for i in range(self.num_enc_levels):
            feat = features[3 - i]
            h, w = feat.shape[-2:]
            shapes.append((int(h), int(w)))
            srcs.append(self.input_convs[i](feat).flatten(2).transpose(1, 2))
            pos = self.pos_enc(h, w, feat.device).flatten(2).transpose(1, 2) + self.level_encoding.weight[i]
            poss.append(pos.expand(bsz, -1, -1))
        src = torch.cat(srcs, 1)
        pos = torch.cat(poss, 1)
        ref = self._reference_points(shapes, self.num_enc_levels, src.device).expand(bsz, -1, -1, -1)
        for layer in self.layers:
            src = layer(src, pos, ref, shapes)
        outs = [s.transpose(1, 2).reshape(bsz, -1, h, w)
                for s, (h, w) in zip(src.split([h * w for h, w in shapes], 1), shapes)]
        lateral = self.lateral_conv(features[0])
        # Interpolate to the lateral's size (not x2): pyramid sizes need not be exact halves (e.g. 37 vs 18).
        y = lateral + F.interpolate(outs[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
        y = self.output_conv(y)
        return self.mask_feature(y), outs


# ---------------------------------------------------------------------------------------------
# Masked-attention transformer decoder + head
# ---------------------------------------------------------------------------------------------
class _MaskedDecoderLayer(nn.Module):
    """Mask2Former decoder layer: masked cross-attention -> self-attention -> FFN, post-norm, no dropout."""

    def __init__(self, d_model: int, n_heads: int, ffn_dim: int) -> None:
        super().__init__()
        self.cross_attn = nn.MultiheadAttention(d_model, n_heads, dropout=0.0, batch_first=True)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=0.0, batch_first=True)
        self.norm2 = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, ffn_dim), nn.ReLU(inplace=True), nn.Linear(ffn_dim, d_model))
        self.norm3 = nn.LayerNorm(d_model)

    def forward(self, query: Tensor, query_pos: Tensor, memory: Tensor, memory_pos: Tensor,
                attn_mask: Tensor | None) -> Tensor:
        q = self.cross_attn(query + query_pos, memory + memory_pos, memory, attn_mask=attn_mask,
                            need_weights=False)[0]
        query = self.norm1(query + q)
        qk = query + query_pos
        query = self.norm2(query + self.self_attn(qk, qk, query, need_weights=False)[0])
        return self.norm3(query + self.ffn(query))


class Mask2FormerHead(nn.Module):
    """Mask2Former head (pixel decoder + masked-attention decoder) for semantic segmentation."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, hidden_dim: int = 256,
                 num_queries: int = 100, pixel_decoder_layers: int = 6, decoder_layers: int = 9,
                 num_heads: int = 8, decoder_ffn_dim: int = 2048, pixel_decoder_ffn_dim: int = 1024,
                 num_points: int = 4, input_proj_bias: bool = True,
                 pixel_decoder_num_heads: int | None = None) -> None:
        """in_channels: channels of the 4 pyramid maps, finest first; num_classes excludes no-object;
        pixel_decoder_num_heads: the deformable encoder's heads (None = num_heads, the decoder's)."""
        super().__init__()
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.num_heads = num_heads
        self.num_levels = 3
        self.pixel_decoder = MSDeformAttnPixelDecoder(in_channels, hidden_dim, pixel_decoder_layers,
                                                      pixel_decoder_num_heads or num_heads,
                                                      num_points, pixel_decoder_ffn_dim, input_proj_bias)
        # enforce_decoder_input_project=False and feat_channels == hidden_dim -> identity input projections.
        self.decoder_pos_enc = SinePositionalEncoding(hidden_dim // 2)
        self.level_embed = nn.Embedding(self.num_levels, hidden_dim)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.layers = nn.ModuleList([_MaskedDecoderLayer(hidden_dim, num_heads, decoder_ffn_dim)
                                     for _ in range(decoder_layers)])
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.cls_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.ReLU(inplace=True),
                                        nn.Linear(hidden_dim, hidden_dim), nn.ReLU(inplace=True),
                                        nn.Linear(hidden_dim, hidden_dim))
        for p in self.layers.parameters():  # mmdet Mask2FormerHead.init_weights
            if p.dim() > 1:
                nn.init.xavier_normal_(p)

    def _predict(self, query: Tensor, mask_features: Tensor,
                 attn_size: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
        out = self.decoder_norm(query)
        logits = self.cls_embed(out)
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(out), mask_features)
        with torch.no_grad():
            small = F.interpolate(masks, size=attn_size, mode="bilinear", align_corners=False)
            # True = not attended (nn.MultiheadAttention bool convention); one mask per (image, head).
            attn_mask = (small.sigmoid().flatten(2) < 0.5).repeat_interleave(self.num_heads, dim=0)
        return logits, masks, attn_mask

    def forward(self, features: Sequence[Tensor]) -> dict[str, Any]:
        """features: 4 maps finest first -> {"pred_logits", "pred_masks", "aux_outputs", "mask_features"} (see module
        docs; ``mask_features`` [B, D, h4, w4] is the pixel decoder's output, which the domain-shift monitor reads)."""
        mask_features, memories = self.pixel_decoder(features)
        bsz = mask_features.shape[0]
        mem_flat, mem_pos, mem_sizes = [], [], []
        for i, mem in enumerate(memories):  # coarsest first
            h, w = mem.shape[-2:]
            mem_sizes.append((int(h), int(w)))
            mem_flat.append(mem.flatten(2).transpose(1, 2) + self.level_embed.weight[i])
            mem_pos.append(self.decoder_pos_enc(h, w, mem.device).flatten(2).transpose(1, 2).expand(bsz, -1, -1))
        query = self.query_feat.weight.unsqueeze(0).expand(bsz, -1, -1)
        query_pos = self.query_embed.weight.unsqueeze(0).expand(bsz, -1, -1)

        preds = []
        logits, masks, attn_mask = self._predict(query, mask_features, mem_sizes[0])
        preds.append((logits, masks))
        for i, layer in enumerate(self.layers):
            lvl = i % self.num_levels
            # A query whose mask covers nothing would get an all -inf softmax row (NaN): let it attend everywhere.
            attn_mask = attn_mask & ~attn_mask.all(-1, keepdim=True)
            query = layer(query, query_pos, mem_flat[lvl], mem_pos[lvl], attn_mask)
            logits, masks, attn_mask = self._predict(query, mask_features, mem_sizes[(i + 1) % self.num_levels])
            preds.append((logits, masks))
        return {
            "pred_logits": preds[-1][0],
            "pred_masks": preds[-1][1],
            "aux_outputs": [{"pred_logits": lg, "pred_masks": mk} for lg, mk in preds[:-1]],
            "mask_features": mask_features,
        }

    @staticmethod
    def semantic_scores(pred_logits: Tensor, pred_masks: Tensor) -> Tensor:
        """[B,Q,K+1], [B,Q,h,w] -> [B,K,h,w] = einsum(softmax(logits)[..., :-1], sigmoid(masks)); no resizing."""
        return torch.einsum("bqk,bqhw->bkhw", pred_logits.softmax(-1)[..., :-1], pred_masks.sigmoid())


# ---------------------------------------------------------------------------------------------
# Point sampling, matching and loss
# ---------------------------------------------------------------------------------------------
def point_sample(inputs: Tensor, point_coords: Tensor, align_corners: bool = False) -> Tensor:
    """Bilinearly sample inputs [N, C, H, W] at point_coords [N, P, 2] ((x, y) in [0, 1]) -> [N, C, P]."""
    grid = (2.0 * point_coords - 1.0).unsqueeze(2).to(inputs.dtype)
    return F.grid_sample(inputs, grid, mode="bilinear", padding_mode="zeros", align_corners=align_corners).squeeze(3)


def get_uncertain_point_coords_with_randomness(coarse_logits: Tensor, uncertainty_func: Callable[[Tensor], Tensor],
                                               num_points: int, oversample_ratio: float,
                                               importance_sample_ratio: float) -> Tensor:
    """detectron2 PointRend importance sampling: [N, 1, H, W] logits -> [N, num_points, 2] coords in [0, 1]."""
    n = coarse_logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    coords = torch.rand(n, num_sampled, 2, device=coarse_logits.device, dtype=torch.float32)
    uncertainties = uncertainty_func(point_sample(coarse_logits, coords))  # [N, 1, S]
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    idx = torch.topk(uncertainties[:, 0, :], k=num_uncertain, dim=1)[1]
    coords = torch.gather(coords, 1, idx.unsqueeze(-1).expand(-1, -1, 2))
    if num_random > 0:
        coords = torch.cat([coords, torch.rand(n, num_random, 2, device=coarse_logits.device,
                                               dtype=torch.float32)], dim=1)
    return coords


def _uncertainty(logits: Tensor) -> Tensor:
    return -logits.abs()


def _pairwise_sigmoid_ce(inputs: Tensor, targets: Tensor) -> Tensor:
    # [N, P], [M, P] -> [N, M] mean BCE over points, expanded so it is one matmul instead of N*M BCEs.
    pos = F.binary_cross_entropy_with_logits(inputs, torch.ones_like(inputs), reduction="none")
    neg = F.binary_cross_entropy_with_logits(inputs, torch.zeros_like(inputs), reduction="none")
    return (pos @ targets.T + neg @ (1 - targets).T) / inputs.shape[1]


def _pairwise_dice(inputs: Tensor, targets: Tensor) -> Tensor:
    inputs = inputs.sigmoid()
    numerator = 2 * inputs @ targets.T
    denominator = inputs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


class HungarianMatcher(nn.Module):
    """Per-image Hungarian matching with class + point-sampled mask BCE + dice costs (Mask2Former)."""

    def __init__(self, cost_class: float = 2.0, cost_mask: float = 5.0, cost_dice: float = 5.0,
                 num_points: int = 12544) -> None:
        """Cost weights and the number of uniformly random points shared by predictions and targets."""
        super().__init__()
        self.cost_class, self.cost_mask, self.cost_dice, self.num_points = cost_class, cost_mask, cost_dice, num_points

    @torch.no_grad()
    def forward(self, pred_logits: Tensor, pred_masks: Tensor, tgt_labels: Sequence[Tensor],
                tgt_masks: Sequence[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """Return per image (query indices, target indices) as int64 CPU tensors."""
        indices = []
        for b in range(pred_logits.shape[0]):
            labels, masks = tgt_labels[b], tgt_masks[b]
            if labels.numel() == 0:
                empty = torch.empty(0, dtype=torch.int64)
                indices.append((empty, empty))
                continue
            cost_class = -pred_logits[b].float().softmax(-1)[:, labels]
            coords = torch.rand(1, self.num_points, 2, device=pred_masks.device)
            tgt = point_sample(masks[:, None], coords.expand(masks.shape[0], -1, -1)).squeeze(1)
            out = point_sample(pred_masks[b][:, None].float(), coords.expand(pred_masks.shape[1], -1, -1)).squeeze(1)
            cost = (self.cost_class * cost_class + self.cost_mask * _pairwise_sigmoid_ce(out, tgt)
                    + self.cost_dice * _pairwise_dice(out, tgt))
            q_idx, t_idx = linear_sum_assignment(cost.cpu().numpy())
            indices.append((torch.as_tensor(q_idx, dtype=torch.int64), torch.as_tensor(t_idx, dtype=torch.int64)))
        return indices


class Mask2FormerLoss(nn.Module):
    """Mask2Former set loss for semantic segmentation (one binary target mask per present class)."""

    def __init__(self, num_classes: int, class_weight: float = 2.0, mask_weight: float = 5.0, dice_weight: float = 5.0,
                 no_object_weight: float = 0.1, num_points: int = 12544, oversample_ratio: float = 3.0,
                 importance_sample_ratio: float = 0.75, ignore_index: int = 255) -> None:
        """Loss weights also serve as the matcher cost weights, as in the VLTSeg/Mask2Former config."""
        super().__init__()
        self.num_classes = num_classes
        self.class_weight, self.mask_weight, self.dice_weight = class_weight, mask_weight, dice_weight
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.ignore_index = ignore_index
        self.matcher = HungarianMatcher(class_weight, mask_weight, dice_weight, num_points)
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = no_object_weight
        self.register_buffer("empty_weight", empty_weight, persistent=False)

    def _targets(self, targets: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        labels, masks = [], []
        for t in targets:
            cls = torch.unique(t)
            cls = cls[(cls != self.ignore_index) & (cls >= 0) & (cls < self.num_classes)]
            labels.append(cls)
            # Ignore pixels are 0 in every mask (as in mmdet _seg_data_to_instance_data).
            masks.append((t[None] == cls[:, None, None]).float())
        return labels, masks

    def _single(self, pred_logits: Tensor, pred_masks: Tensor, labels: list[Tensor], masks: list[Tensor],
                num_masks: float) -> tuple[Tensor, Tensor, Tensor]:
        pred_logits, pred_masks = pred_logits.float(), pred_masks.float()
        indices = self.matcher(pred_logits, pred_masks, labels, masks)
        bsz, n_q = pred_logits.shape[:2]
        target_classes = torch.full((bsz, n_q), self.num_classes, dtype=torch.int64, device=pred_logits.device)
        for b, (q_idx, t_idx) in enumerate(indices):
            target_classes[b, q_idx.to(pred_logits.device)] = labels[b][t_idx.to(labels[b].device)]
        # Weighted mean (divides by the sum of per-sample class weights), matching mmdet's avg_factor.
        loss_ce = F.cross_entropy(pred_logits.transpose(1, 2), target_classes, self.empty_weight.to(pred_logits))

        src = torch.cat([pred_masks[b, q_idx.to(pred_masks.device)] for b, (q_idx, _) in enumerate(indices)])
        if src.shape[0] == 0:
            zero = pred_masks.sum() * 0.0  # keeps the graph so backward/DDP see every parameter
            return loss_ce, zero, zero
        tgt = torch.cat([masks[b][t_idx.to(masks[b].device)] for b, (_, t_idx) in enumerate(indices)])
        with torch.no_grad():
            coords = get_uncertain_point_coords_with_randomness(src[:, None], _uncertainty, self.num_points,
                                                                self.oversample_ratio, self.importance_sample_ratio)
            point_labels = point_sample(tgt[:, None], coords).squeeze(1)
        point_logits = point_sample(src[:, None], coords).squeeze(1)
        loss_mask = F.binary_cross_entropy_with_logits(point_logits, point_labels, reduction="none").mean(1)
        probs = point_logits.sigmoid()
        loss_dice = 1 - (2 * (probs * point_labels).sum(-1) + 1) / (probs.sum(-1) + point_labels.sum(-1) + 1)
        return loss_ce, loss_mask.sum() / num_masks, loss_dice.sum() / num_masks

    @staticmethod
    def _average_num_masks(count: int, device: torch.device) -> float:
        """Target masks per process, averaged over all processes of a distributed run (at least 1), as in
        Mask2Former's criterion: every rank normalises by the same number, so the summed DDP gradient equals the
        gradient of one large batch."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return float(max(count, 1))
        total = torch.tensor([float(count)], device=device)
        torch.distributed.all_reduce(total)
        return max(float(total) / torch.distributed.get_world_size(), 1.0)

    def forward(self, outputs: dict, targets: Tensor) -> dict[str, Tensor]:
        """Weighted loss terms for the final prediction and each aux output (keys loss_{ce,mask,dice}[_i])."""
        labels, masks = self._targets(targets)
        num_masks = self._average_num_masks(sum(int(lb.numel()) for lb in labels), targets.device)
        losses: dict[str, Tensor] = {}
        preds = [("", outputs)] + [(f"_{i}", aux) for i, aux in enumerate(outputs.get("aux_outputs", []))]
        for suffix, out in preds:
            ce, mask, dice = self._single(out["pred_logits"], out["pred_masks"], labels, masks, num_masks)
            losses[f"loss_ce{suffix}"] = self.class_weight * ce
            losses[f"loss_mask{suffix}"] = self.mask_weight * mask
            losses[f"loss_dice{suffix}"] = self.dice_weight * dice
        return losses
