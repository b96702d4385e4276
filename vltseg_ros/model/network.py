"""The VLTSeg/VLTDet network: one encoder pass feeding a segmentation head, a detection head, or both."""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

from ..config import ModelConfig, NormalizationConfig
from .detection import DetectionHead
from ..monitor import frame_descriptor
from .encoder import ClipEncoder, floor_to_multiple, pad_to_multiple
from .mask2former import Mask2FormerHead, Mask2FormerLoss
from .pyramid import SimpleFeaturePyramid


class VLTSeg(nn.Module):
    """CLIP encoder -> simple feature pyramid -> Mask2Former (semantic) and/or Faster R-CNN (boxes).

    Input: [B, 3, H, W] normalised RGB float images of any size (``normalize`` turns 0-255 RGB into them, with the
    statistics the network was trained with). Sizes need not be multiples of the patch: by default the images are
    zero-padded (bottom/right) to the next multiple and outputs cropped back; with ``encoder.patch_grid: floor``
    (the reference implementation) the remainder is dropped and the mask logits of the seen part are stretched over
    the whole input.
    """

    def __init__(self, cfg: ModelConfig, normalization: Optional[NormalizationConfig] = None):
        super().__init__()
        self.cfg = cfg
        # Input statistics live with the weights (as segment-anything keeps its pixel mean/std), so trainer,
        # predictor and benchmarks cannot normalise differently. Not persistent: the checkpoint's metadata holds them.
        self.normalization = normalization or NormalizationConfig()
        self.register_buffer("pixel_mean", torch.tensor(self.normalization.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(self.normalization.std).view(1, 3, 1, 1), persistent=False)
        enc = cfg.encoder
        self.encoder = ClipEncoder(enc.name, enc.taps, enc.drop_path_rate, enc.patch_size, arch=enc.arch,
                                   attn_inner_norm=enc.attn_inner_norm, pos_embed_grid=enc.pos_embed_grid)
        width = self.encoder.embed_dim
        self.pyramid = SimpleFeaturePyramid(width, cfg.pyramid.norm, cfg.pyramid.scales)
        self.seg_head: Optional[Mask2FormerHead] = None
        self.seg_loss: Optional[Mask2FormerLoss] = None
        self.det_head: Optional[DetectionHead] = None
        num_classes = len(cfg.classes)
        if cfg.seg_head is not None:
            s = cfg.seg_head
            self.seg_head = Mask2FormerHead(
                [width] * 4, num_classes, hidden_dim=s.hidden_dim, num_queries=s.num_queries,
                pixel_decoder_layers=s.pixel_decoder_layers, decoder_layers=s.decoder_layers,
                num_heads=s.num_heads, pixel_decoder_num_heads=s.pixel_decoder_num_heads,
                decoder_ffn_dim=s.decoder_ffn_dim,
                pixel_decoder_ffn_dim=s.pixel_decoder_ffn_dim, num_points=s.num_points,
                input_proj_bias=s.input_proj_bias,
            )
            self.seg_loss = Mask2FormerLoss(
                num_classes, class_weight=s.class_weight, mask_weight=s.mask_weight, dice_weight=s.dice_weight,
                no_object_weight=s.no_object_weight, num_points=s.train_num_points,
                oversample_ratio=s.oversample_ratio, importance_sample_ratio=s.importance_sample_ratio,
            )
        if cfg.det_head is not None:
            self.det_head = DetectionHead(
                width, cfg.det_head, [self.encoder.patch_size / scale for scale in self.pyramid.scales]
            )

    def normalize(self, images: Tensor) -> Tensor:
        """[B, 3, H, W] RGB float images on the 0-255 scale -> the network's normalised input."""
        return (images - self.pixel_mean) / self.pixel_std

    @property
    def patch_size(self) -> int:
        """The encoder's patch size in pixels."""
        return self.encoder.patch_size

    def features(self, images: Tensor) -> list[Tensor]:
        """Normalised images (already padded to the patch multiple) -> 4 pyramid levels, finest first."""
        return self.pyramid(self.encoder(images))

    def forward(
        self,
        images: Tensor,
        seg_targets: Optional[Tensor] = None,
        det_targets: Optional[list[dict[str, Tensor]]] = None,
        image_sizes: Optional[list[tuple[int, int]]] = None,
    ) -> dict[str, Any]:
        """Training mode: weighted losses (``loss_*``) for the heads whose targets are given.

        Eval mode: ``seg_scores`` [B, K, H, W] per-class scores at the input size, ``frame_descriptor`` [B, 2D] (the
        domain-shift monitor's feature statistics, ``vltseg_ros.monitor.frame_descriptor``), and ``detections``: fixed-shape
        ``boxes`` [B, D, 4] xyxy (input pixels), ``scores`` [B, D], ``labels`` [B, D] (0-based indices into the
        detection classes) and ``count`` [B]: image b's detections are its first ``count[b]`` rows, by descending
        score (``unpad_detections`` gives per-image lists). Compiled or traced, eval mode has no data-dependent
        shapes or host syncs (one CUDA graph can hold it). ``image_sizes`` gives the valid (H, W) per image when a batch holds padded
        images.
        ``seg_targets``: [B, H, W] int64 trainIds (255 ignored); ``det_targets``: per image ``boxes`` [N, 4] xyxy
        and ``labels`` [N] 0-based.
        """
        height, width = images.shape[-2:]
        floor = self.cfg.encoder.patch_grid == "floor"
        # ``padded``: what the encoder sees, a patch multiple (padded, or with the remainder cropped off).
        padded = floor_to_multiple(images, self.patch_size) if floor else pad_to_multiple(images, self.patch_size)
        pyramid = self.features(padded)
        sizes = image_sizes or [(height, width)] * images.shape[0]
        if floor:
            sizes = [(min(h, padded.shape[-2]), min(w, padded.shape[-1])) for h, w in sizes]
        out: dict[str, Any] = {}
        if self.training:
            if seg_targets is not None and self.seg_head is not None:
                # Masks are point-sampled in normalised coordinates: under "floor" they span the whole target, as
                # at inference; under "pad" the targets are padded with the ignore value to the masks' extent.
                pad_h, pad_w = (0, 0) if floor else (padded.shape[-2] - height, padded.shape[-1] - width)
                targets = nn.functional.pad(seg_targets, (0, pad_w, 0, pad_h), value=255)
                out.update(self.seg_loss(self.seg_head(pyramid), targets))
            if det_targets is not None and self.det_head is not None:
                shifted = [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in det_targets]
                out.update(self.det_head(pyramid, tuple(padded.shape[-2:]), sizes, shifted))
            return out
        if self.seg_head is not None:
            pred = self.seg_head(pyramid)
            # Mask2Former's order: mask logits upsampled to the input size, then sigmoid and the class product.
            masks = nn.functional.interpolate(
                pred["pred_masks"].float(), size=(height, width) if floor else padded.shape[-2:], mode="bilinear",
                align_corners=False,
            )
            scores = Mask2FormerHead.semantic_scores(pred["pred_logits"].float(), masks)
            out["seg_scores"] = scores[..., :height, :width]
            # The domain-shift monitor's per-image descriptor (vltseg_ros.monitor): channel means and standard
            # deviations of the pixel decoder's output. A few hundred floats, computed where the features are.
            out["frame_descriptor"] = frame_descriptor(pred)
        if self.det_head is not None:
            out["detections"] = self.det_head(pyramid, tuple(padded.shape[-2:]), sizes)
        return out

    def parameter_groups(self) -> dict[str, list[str]]:
        """Names of parameters by optimiser role: ``encoder`` (lr x0.1 in the recipe), ``head``, and the subset of
        both that takes no weight decay (norms, biases, position embedding, cls token, queries, level embeddings)."""
        no_decay_names = {"query_feat", "query_embed", "level_embed"}
        skip = self.encoder.no_weight_decay()
        groups: dict[str, list[str]] = {"encoder": [], "head": [], "no_decay": []}
        for name, param in self.named_parameters():
            is_encoder = name.startswith(("encoder.", "pyramid."))
            groups["encoder" if is_encoder else "head"].append(name)
            if param.ndim <= 1 or name.removeprefix("encoder.") in skip or no_decay_names & set(name.split(".")):
                groups["no_decay"].append(name)
        return groups


def build_model(cfg: ModelConfig, normalization: Optional[NormalizationConfig] = None) -> VLTSeg:
    """Build a randomly initialised network for ``cfg`` (input statistics: ``normalization``, or the default)."""
    return VLTSeg(cfg, normalization)


def count_parameters(model: nn.Module) -> int:
    """Total number of parameters."""
    return sum(p.numel() for p in model.parameters())
