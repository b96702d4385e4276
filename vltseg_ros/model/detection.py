"""VLTDet detection head: torchvision Faster R-CNN (FPN + RPN + RoI heads) over the shared feature pyramid."""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Sequence

import torch
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

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


class DetectionHead(nn.Module):
    """Boxes from four pyramid levels. Labels are 1-based indices into ``DetHeadConfig.classes`` (0 = background)."""

    def __init__(self, in_channels: int, cfg: DetHeadConfig):
        super().__init__()
        names = ["0", "1", "2", "3"]
        self.fpn = FeaturePyramidNetwork([in_channels] * 4, cfg.fpn_channels, extra_blocks=LastLevelMaxPool())
        levels = len(names) + 1
        anchors = FractionalStrideAnchorGenerator(
            sizes=tuple((s,) for s in cfg.anchor_sizes[:levels]),
            aspect_ratios=(tuple(cfg.aspect_ratios),) * levels,
        )
        self.rpn = RegionProposalNetwork(
            anchors, RPNHead(cfg.fpn_channels, anchors.num_anchors_per_location()[0]),
            fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=256, positive_fraction=0.5,
            pre_nms_top_n=dict(training=cfg.rpn_pre_nms_top_n_train, testing=cfg.rpn_pre_nms_top_n_test),
            post_nms_top_n=dict(training=cfg.rpn_post_nms_top_n_train, testing=cfg.rpn_post_nms_top_n_test),
            nms_thresh=0.7,
        )
        pool = MultiScaleRoIAlign(featmap_names=names, output_size=7, sampling_ratio=2)
        self.roi_heads = RoIHeads(
            pool, TwoMLPHead(cfg.fpn_channels * 7 * 7, cfg.representation_size),
            FastRCNNPredictor(cfg.representation_size, len(cfg.classes) + 1),
            fg_iou_thresh=0.5, bg_iou_thresh=0.5, batch_size_per_image=cfg.roi_batch_size_per_image,
            positive_fraction=0.25,
            bbox_reg_weights=None, score_thresh=cfg.box_score_thresh, nms_thresh=cfg.box_nms_thresh,
            detections_per_img=cfg.box_detections_per_img,
        )

    def forward(
        self, pyramid: Sequence[Tensor], input_size: tuple[int, int], image_sizes: list[tuple[int, int]],
        targets: Optional[list[dict[str, Tensor]]] = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Pyramid maps (finest first) of a padded ``input_size`` (H, W) batch, and per-image (H, W) of the valid
        (unpadded) area -> (detections, losses).

        Detections: per image ``boxes`` [N, 4] xyxy in network-input pixels, ``labels`` [N] (1-based), ``scores``.
        Losses are returned in training mode, where ``targets`` (``boxes``, ``labels``) are required.
        """
        features = self.fpn(OrderedDict((str(i), x) for i, x in enumerate(pyramid)))
        batch = pyramid[0].new_empty((len(image_sizes), 0, *input_size))  # the RPN reads only shapes from it
        images = ImageList(batch, image_sizes)
        proposals, rpn_losses = self.rpn(images, features, targets)
        detections, roi_losses = self.roi_heads(features, proposals, image_sizes, targets)
        return detections, {**rpn_losses, **roi_losses}
