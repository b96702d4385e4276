"""VLTDet detection head: torchvision Faster R-CNN (FPN + RPN + RoI heads) over the shared feature pyramid.

Training runs torchvision's modules unchanged (anchor matching, sampling, losses). While compiling or tracing,
inference runs the same weights through a fixed-shape re-implementation of torchvision's test-time path
(``DetectionHead.infer``): no per-image Python loops, no data-dependent shapes and no host synchronisation, so the
whole network can be captured in one CUDA graph (``torch.compile(mode="reduce-overhead")``) and exported to ONNX
with a dynamic batch. It equals torchvision's own test path (tested), with two documented bounds: the class-wise
NMS sees the ``box_nms_candidates`` best-scoring candidates per image, and traced/compiled graphs unroll NMS for
``nms_unroll`` steps (forced in eager mode, it iterates to the exact greedy result). Eager inference runs
torchvision's path itself. Either way the output is padded to ``box_detections_per_img`` per image, sorted by
score, with a per-image count (the layout of TensorRT's EfficientNMS plugin).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead, permute_and_flatten
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign, roi_align
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.poolers import initLevelMapper

from ..config import DetHeadConfig


class FractionalStrideAnchorGenerator(AnchorGenerator):
    """AnchorGenerator with exact (fractional) strides and float32 anchors.

    torchvision floors ``image_size // grid_size``; with patch-14 encoders the pyramid strides are 3.5/7/14/28,
    so floored strides would leave the right and bottom of the image without anchors. Anchors stay float32
    under bf16/fp16 autocast, where half precision would misplace them by several pixels.
    """

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        grid_sizes = [fm.shape[-2:] for fm in feature_maps]
        height, width = image_list.tensors.shape[-2:]
        device = feature_maps[0].device
        strides = [
            [torch.tensor(height / g[0], device=device), torch.tensor(width / g[1], device=device)]
            for g in grid_sizes
        ]
        self.set_cell_anchors(torch.float32, device)
        anchors = torch.cat(self.grid_anchors(grid_sizes, strides))
        return [anchors] * len(image_list.image_sizes)


class Float32BoxCoder(BoxCoder):
    """torchvision's BoxCoder, decoding in float32. torchvision casts the reference boxes to the deltas' dtype,
    so under bf16 autocast every decoded box snaps to bf16's grid: 8 px steps between 1024 and 2048."""

    def decode_single(self, rel_codes: Tensor, boxes: Tensor) -> Tensor:
        return super().decode_single(rel_codes.float(), boxes.float())


class Float32RPNHead(RPNHead):
    """torchvision's RPNHead with float32 outputs: under bf16 autocast its objectness would be bf16, whose
    sigmoid has 3 significant digits, so proposal scores tie and the proposal set changes."""

    def forward(self, x: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, deltas = super().forward(x)
        return [t.float() for t in logits], [t.float() for t in deltas]


class Float32BoxPredictor(FastRCNNPredictor):
    """torchvision's FastRCNNPredictor with float32 class logits and box deltas (see Float32RPNHead)."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        scores, deltas = super().forward(x)
        return scores.float(), deltas.float()


def _top(values: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Descending top-k along dim 1 with ties kept in index order, as torchvision's (stable) NMS sort orders them;
    ``topk`` leaves tie order unspecified. ONNX has no stable sort, but its TopK breaks ties by lower index."""
    if torch.onnx.is_in_onnx_export():
        return values.topk(k, dim=1)
    ordered, index = values.sort(dim=1, descending=True, stable=True)
    return ordered[:, :k], index[:, :k]


def exact_scale_roi_align(names: Sequence[str], strides: Sequence[float]) -> MultiScaleRoIAlign:
    """torchvision's MultiScaleRoIAlign with the pyramid's exact spatial scales (1 / stride: 4/p, 2/p, 1/p, 1/(2p)
    for a patch-p encoder).

    torchvision infers scales on its first call and rounds them to powers of two: for the 3.5/7/14/28 strides of
    a patch-14 pyramid that pools every box from 7/8 of its true position. Levels are still assigned by the FPN
    rule (canonical 224 px box -> level 4) over levels 2-5.
    """
    pool = MultiScaleRoIAlign(featmap_names=list(names), output_size=7, sampling_ratio=2)
    pool.scales = [1.0 / stride for stride in strides]
    lvl_min = round(-math.log2(pool.scales[0]))
    pool.map_levels = initLevelMapper(lvl_min, lvl_min + len(names) - 1, canonical_scale=pool.canonical_scale,
                                      canonical_level=pool.canonical_level)
    return pool


def pairwise_iou(boxes: Tensor) -> Tensor:
    """[..., N, 4] xyxy -> [..., N, N] IoU (a batched ``torchvision.ops.box_iou`` of a set with itself)."""
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    top_left = torch.maximum(boxes[..., :, None, :2], boxes[..., None, :, :2])
    bottom_right = torch.minimum(boxes[..., :, None, 2:], boxes[..., None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area[..., :, None] + area[..., None, :] - inter)


def nms_keep(boxes: Tensor, valid: Tensor, iou_threshold: float, groups: Optional[Tensor] = None,
             unroll: Optional[int] = None) -> Tensor:
    """Greedy NMS as a fixed-shape keep mask over boxes sorted by descending score.

    boxes [..., N, 4], valid [..., N] (invalid boxes neither survive nor suppress), groups [..., N] (NMS only
    within equal ids, like ``batched_nms``) -> keep [..., N]. Box j is kept iff it is valid and no kept i < j has
    IoU(i, j) > threshold. This is solved by fixed-point iteration from "all valid" (Cluster-NMS, Zheng et al.
    2021; the first step is YOLACT's Fast NMS), which reaches greedy NMS exactly once the longest suppression
    chain is resolved. ``unroll=None`` iterates until nothing changes (eager; exact); a number runs exactly that
    many steps with no data-dependent control flow (CUDA graphs, ONNX).
    """
    overlap = (pairwise_iou(boxes.float()) > iou_threshold).triu(1) & valid[..., :, None]
    if groups is not None:
        overlap = overlap & (groups[..., :, None] == groups[..., None, :])
    overlap = overlap.float()
    keep = valid
    for _ in range(boxes.shape[-2] if unroll is None else unroll):
        suppressed = torch.matmul(keep.float().unsqueeze(-2), overlap).squeeze(-2) > 0
        new = valid & ~suppressed
        if unroll is None and torch.equal(new, keep):
            break
        keep = new
    return keep


def _is_static_capture() -> bool:
    """True while tracing (ONNX / TorchScript) or compiling, where NMS must not branch on data."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


class DetectionHead(nn.Module):
    """Boxes from four pyramid levels (finest first) whose strides in input pixels are ``strides``."""

    def __init__(self, in_channels: int, cfg: DetHeadConfig, strides: Sequence[float] = (4.0, 8.0, 16.0, 32.0)):
        super().__init__()
        self.cfg = cfg
        # Eval path: None = the fixed-shape path while compiling or tracing and torchvision's own path in eager
        # mode (the same detections, tested; torchvision's is faster on CPU, where pooling every RoI from every
        # level costs more than the loops it saves). True / False force one of them.
        self.fixed_shape: Optional[bool] = None
        names = ["0", "1", "2", "3"]
        self.fpn = FeaturePyramidNetwork([in_channels] * 4, cfg.fpn_channels, extra_blocks=LastLevelMaxPool())
        levels = len(names) + 1
        anchors = FractionalStrideAnchorGenerator(
            sizes=tuple((s,) for s in cfg.anchor_sizes[:levels]),
            aspect_ratios=(tuple(cfg.aspect_ratios),) * levels,
        )
        self.rpn = RegionProposalNetwork(
            anchors, Float32RPNHead(cfg.fpn_channels, anchors.num_anchors_per_location()[0]),
            fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=256, positive_fraction=0.5,
            pre_nms_top_n=dict(training=cfg.rpn_pre_nms_top_n_train, testing=cfg.rpn_pre_nms_top_n_test),
            post_nms_top_n=dict(training=cfg.rpn_post_nms_top_n_train, testing=cfg.rpn_post_nms_top_n_test),
            nms_thresh=0.7,
        )
        self.roi_heads = RoIHeads(
            exact_scale_roi_align(names, strides), TwoMLPHead(cfg.fpn_channels * 7 * 7, cfg.representation_size),
            Float32BoxPredictor(cfg.representation_size, len(cfg.classes) + 1),
            fg_iou_thresh=0.5, bg_iou_thresh=0.5, batch_size_per_image=cfg.roi_batch_size_per_image,
            positive_fraction=0.25,
            bbox_reg_weights=None, score_thresh=cfg.box_score_thresh, nms_thresh=cfg.box_nms_thresh,
            detections_per_img=cfg.box_detections_per_img,
        )
        for stage in (self.rpn, self.roi_heads):
            stage.box_coder = Float32BoxCoder(stage.box_coder.weights, stage.box_coder.bbox_xform_clip)

    def forward(
        self, pyramid: Sequence[Tensor], input_size: tuple[int, int], image_sizes: list[tuple[int, int]],
        targets: Optional[list[dict[str, Tensor]]] = None,
    ) -> dict[str, Tensor]:
        """Pyramid maps (finest first) of a padded ``input_size`` (H, W) batch, and per-image (H, W) of the valid
        (unpadded) area.

        Training (``targets``: per image ``boxes`` [N, 4] xyxy, ``labels`` [N] 1-based): the RPN and RoI losses,
        times ``cfg.loss_weight``.
        Eval: the padded detections of :meth:`infer`.
        """
        features = self.fpn(OrderedDict((str(i), x) for i, x in enumerate(pyramid)))
        if not self.training:
            fixed = _is_static_capture() if self.fixed_shape is None else self.fixed_shape
            if fixed:
                return self.infer(features, input_size, image_sizes)
            return self._pad(self._torchvision_inference(features, input_size, image_sizes))
        images = self._image_list(pyramid[0], input_size, image_sizes)
        proposals, rpn_losses = self.rpn(images, features, targets)
        _, roi_losses = self.roi_heads(features, proposals, image_sizes, targets)
        return {key: self.cfg.loss_weight * value for key, value in {**rpn_losses, **roi_losses}.items()}

    @staticmethod
    def _image_list(like: Tensor, input_size: tuple[int, int], image_sizes: list[tuple[int, int]]) -> ImageList:
        # The RPN and the anchor generator read only shapes from the tensor.
        return ImageList(like.new_empty((len(image_sizes), 0, *input_size)), image_sizes)

    def _torchvision_inference(self, features: OrderedDict[str, Tensor], input_size: tuple[int, int],
                               image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """torchvision's own test-time path (per-image loops, dynamic shapes): per image ``boxes``, ``scores``,
        ``labels`` (1-based)."""
        proposals, _ = self.rpn(self._image_list(features["0"], input_size, image_sizes), features)
        detections, _ = self.roi_heads(features, proposals, image_sizes)
        return detections

    def _pad(self, detections: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Per-image torchvision detections -> the padded layout of :meth:`infer` (labels made 0-based)."""
        slots = self.roi_heads.detections_per_img
        out = {"boxes": [], "scores": [], "labels": []}
        for det in detections:
            pad = slots - len(det["scores"])
            out["boxes"].append(F.pad(det["boxes"].float(), (0, 0, 0, pad)))
            out["scores"].append(F.pad(det["scores"].float(), (0, pad)))
            out["labels"].append(F.pad(det["labels"] - 1, (0, pad)))
        padded = {key: torch.stack(values) for key, values in out.items()}
        padded["count"] = torch.tensor([len(d["scores"]) for d in detections], device=padded["scores"].device)
        return padded

    def infer(self, features: OrderedDict[str, Tensor], input_size: tuple[int, int],
              image_sizes: list[tuple[int, int]]) -> dict[str, Tensor]:
        """Fixed-shape test-time detection over FPN features -> ``boxes`` [B, D, 4] xyxy (input pixels),
        ``scores`` [B, D], ``labels`` [B, D] (0-based detection classes), ``count`` [B]: the first ``count``
        entries of each image are its detections, by descending score; the rest are zeros."""
        # [B or 1, 1, 4]; one row when all sizes agree, so a traced graph does not fix the batch size.
        rows = image_sizes[:1] if len(set(image_sizes)) == 1 else image_sizes
        limits = torch.tensor([[w, h, w, h] for h, w in rows], dtype=torch.float32,
                              device=features["0"].device)[:, None, :]
        unroll = self.cfg.nms_unroll if _is_static_capture() else None
        proposals, proposal_valid = self._proposals(list(features.values()), input_size, limits, unroll)
        return self._boxes(features, proposals, proposal_valid, limits, unroll)

    def _proposals(self, features: list[Tensor], input_size: tuple[int, int], limits: Tensor,
                   unroll: Optional[int]) -> tuple[Tensor, Tensor]:
        """torchvision ``RegionProposalNetwork`` at test time: per-level top-k, decode, clip, per-level NMS,
        best ``post_nms_top_n`` overall -> proposals [B, R, 4], valid [B, R]."""
        rpn = self.rpn
        objectness, deltas = rpn.head(features)
        anchors = rpn.anchor_generator(self._image_list(features[0], input_size, [input_size]), features)[0]
        pre_nms = rpn._pre_nms_top_n["testing"]
        all_boxes, all_scores = [], []
        offset = 0
        for logits, delta in zip(objectness, deltas):
            batch, per_location, height, width = logits.shape
            logits = permute_and_flatten(logits, batch, per_location, 1, height, width).flatten(1)
            delta = permute_and_flatten(delta, batch, per_location, 4, height, width)
            count = logits.shape[1]
            logits, index = logits.topk(min(pre_nms, count), dim=1)  # sorted, like torchvision's per-level top-n
            level_anchors = anchors[offset:offset + count][index]  # [B, k, 4]
            offset += count
            delta = delta.gather(1, index[..., None].expand(-1, -1, 4))
            boxes = rpn.box_coder.decode_single(delta.reshape(-1, 4), level_anchors.reshape(-1, 4))
            boxes = torch.minimum(boxes.reshape(delta.shape).clamp(min=0), limits)
            scores = logits.sigmoid()
            wh = boxes[..., 2:] - boxes[..., :2]
            valid = (wh >= rpn.min_size).all(-1) & (scores >= rpn.score_thresh)
            keep = nms_keep(boxes, valid, rpn.nms_thresh, unroll=unroll)
            all_boxes.append(boxes)
            all_scores.append(torch.where(keep, scores, torch.full_like(scores, -1.0)))
        boxes, scores = torch.cat(all_boxes, 1), torch.cat(all_scores, 1)
        scores, index = _top(scores, min(rpn._post_nms_top_n["testing"], scores.shape[1]))
        return boxes.gather(1, index[..., None].expand(-1, -1, 4)), scores >= 0

    def _pool(self, features: OrderedDict[str, Tensor], boxes: Tensor) -> Tensor:
        """MultiScaleRoIAlign without data-dependent indexing: every RoI is pooled from every level and the
        level the FPN rule assigns is selected (boxes [B, R, 4] -> [B*R, C, 7, 7])."""
        pool = self.roi_heads.box_roi_pool
        flat = boxes.reshape(-1, 4)
        image_index = (torch.ones_like(boxes[..., 0]).cumsum(0) - 1).reshape(-1, 1)  # b for every RoI
        rois = torch.cat([image_index, flat], 1)
        levels = pool.map_levels([flat])
        pooled: Optional[Tensor] = None
        for level, (name, scale) in enumerate(zip(pool.featmap_names, pool.scales)):
            # float32 like torchvision's autocast policy for roi_align; the RoIs stay float32 (in bf16 they
            # would move by up to 8 px).
            out = roi_align(features[name].float(), rois, output_size=pool.output_size,
                            spatial_scale=scale, sampling_ratio=pool.sampling_ratio)
            pooled = out if pooled is None else torch.where((levels == level)[:, None, None, None], out, pooled)
        return pooled

    def _boxes(self, features: OrderedDict[str, Tensor], proposals: Tensor, proposal_valid: Tensor,
               limits: Tensor, unroll: Optional[int]) -> dict[str, Tensor]:
        """torchvision ``RoIHeads`` at test time: box head, per-class decode, clip, score threshold, class-wise
        NMS over the best ``box_nms_candidates``, best ``box_detections_per_img``."""
        cfg, heads = self.cfg, self.roi_heads
        per_image = proposals.shape[1]
        class_logits, regression = heads.box_predictor(heads.box_head(self._pool(features, proposals)))
        num_classes = class_logits.shape[-1] - 1
        boxes = heads.box_coder.decode_single(regression, proposals.reshape(-1, 4))
        boxes = boxes.reshape(-1, per_image, num_classes + 1, 4)[:, :, 1:]  # drop background
        boxes = torch.minimum(boxes.clamp(min=0), limits[:, :, None]).flatten(1, 2)  # [B, R*K, 4]
        scores = F.softmax(class_logits, -1).reshape(-1, per_image, num_classes + 1)[..., 1:]
        labels = torch.arange(num_classes, device=boxes.device).repeat(per_image)  # [R*K], 0-based
        wh = boxes[..., 2:] - boxes[..., :2]
        valid = ((scores > heads.score_thresh) & proposal_valid[..., None]).flatten(1) & (wh >= 1e-2).all(-1)
        scores = torch.where(valid, scores.flatten(1), torch.full_like(valid, -1.0, dtype=torch.float32))
        scores, index = _top(scores, min(cfg.box_nms_candidates, scores.shape[1]))
        boxes = boxes.gather(1, index[..., None].expand(-1, -1, 4))
        labels = labels[index]
        keep = nms_keep(boxes, scores >= 0, heads.nms_thresh, groups=labels, unroll=unroll)
        scores = torch.where(keep, scores, torch.full_like(scores, -1.0))
        scores, index = _top(scores, min(heads.detections_per_img, scores.shape[1]))
        keep = scores >= 0
        boxes = torch.where(keep[..., None], boxes.gather(1, index[..., None].expand(-1, -1, 4)), 0.0)
        labels = torch.where(keep, labels.gather(1, index), 0)
        scores = torch.where(keep, scores, 0.0)
        pad = heads.detections_per_img - scores.shape[1]
        if pad > 0:
            boxes, scores, labels, keep = (F.pad(boxes, (0, 0, 0, pad)), F.pad(scores, (0, pad)),
                                           F.pad(labels, (0, pad)), F.pad(keep, (0, pad)))
        return {"boxes": boxes, "scores": scores, "labels": labels, "count": keep.sum(1)}


def unpad_detections(detections: dict[str, Tensor]) -> list[dict[str, Tensor]]:
    """Padded detections (``boxes``/``scores``/``labels`` [B, D, ...], ``count`` [B]) -> per image dicts of the
    valid ``boxes`` [N, 4], ``scores`` [N], ``labels`` [N]."""
    counts = detections["count"].tolist()
    return [{key: detections[key][i, :n] for key in ("boxes", "scores", "labels")} for i, n in enumerate(counts)]
