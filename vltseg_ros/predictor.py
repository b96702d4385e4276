"""ROS-free inference: uint8 images in (explicit RGB/BGR, any sizes), label maps and boxes out at source size.

Data path: numpy HxWx3 uint8 -> device tensor (pinned upload on CUDA) -> resize + normalise on the device ->
network under ``inference_mode`` and the precision's autocast (``auto``: bf16 where the device runs it natively,
see ``precision.py``) -> per-class scores resized to the source size -> argmax (+ confidence) and boxes scaled to
source pixels -> numpy.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import batched_nms

from .checkpoint import CheckpointMeta, load_checkpoint
from .config import InferenceConfig, TTAConfig, validate_inference_config
from .labels import IGNORE_INDEX
from .model.detection import unpad_detections
from .precision import autocast, resolve_precision
from . import monitor
from .prediction import Prediction


class InputError(ValueError):
    """An input image is unusable (wrong shape, dtype, size or colour format)."""


def fit_size(height: int, width: int, box: Sequence[int]) -> tuple[int, int]:
    """Aspect-preserving (H, W) for an image of (``height``, ``width``): its long side at most ``max(box)`` and its
    short side at most ``min(box)`` (mmcv's ``keep_ratio`` rule and rounding), so a portrait image fits the same
    box as a landscape one instead of being shrunk to the box's height."""
    scale = min(max(box) / max(height, width), min(box) / min(height, width))
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def window_origins(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of sliding windows along one axis (mmseg ``slide_inference``: last window flush with the end)."""
    count = max(length - window + stride - 1, 0) // stride + 1
    return sorted({max(min(i * stride + window, length) - window, 0) for i in range(count)})


class Predictor:
    """Stateful inference wrapper around a VLTSeg network and its checkpoint metadata."""

    def __init__(
        self,
        model: torch.nn.Module,
        meta: CheckpointMeta,
        device: str | torch.device = "cpu",
        precision: str = "auto",
        inference: Optional[InferenceConfig] = None,
        score_threshold: float = 0.0,
        max_batch: int = 8,
        compile: bool | str = False,
        compile_cache_dir: Optional[str] = None,
        tta: Optional[TTAConfig] = None,
    ):
        self.device = torch.device(device)
        self.meta = meta
        self.inference = inference or meta.inference
        self.precision = resolve_precision(precision, self.device)  # "auto" -> what the device runs natively
        self.score_threshold = score_threshold
        self.max_batch = max_batch
        self.tta = tta
        self.model = model.to(self.device).eval()
        self._forward = self._compiled(compile, compile_cache_dir) if compile else self.model
        # CUDA-graph replays reuse their output buffers, and results of one batch are held while the next runs.
        self._cuda_graphs = compile == "reduce-overhead" and self.device.type == "cuda"
        cfg = meta.model
        self.class_names: list[str] = list(cfg.classes)
        self.palette = np.array(cfg.palette, dtype=np.uint8)
        det_classes = cfg.det_head.classes if cfg.det_head is not None else []
        for name in det_classes:  # detection-only classes get ids after the segmentation classes
            if name not in self.class_names:
                self.class_names.append(name)
        self._det_ids = torch.tensor([self.class_names.index(n) for n in det_classes], dtype=torch.int64)
        self.has_seg = cfg.seg_head is not None
        self.has_det = cfg.det_head is not None
        self._class_lut: Optional[np.ndarray] = None  # class filter: label-map LUT (None = every class)
        self._kept_ids: Optional[np.ndarray] = None  # class filter: ids whose boxes are returned
        self._monitor: Optional[dict] = None  # frame-score name -> calibration stats (device tensors), thresholds
        # The frame score the monitor decides on (both are computed and reported): the default, or the baseline.
        self.monitor_default: str = monitor.DEFAULT_SCORE
        self.set_monitor_calibration(meta.monitor)

    # ------------------------------------------------------------------ settings a running node changes live
    def set_score_threshold(self, value: float) -> None:
        """Minimum score of the boxes ``predict`` returns, in [0, 1]."""
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"score threshold must be in [0, 1], got {value}")
        self.score_threshold = float(value)

    def set_class_filter(self, names: Sequence[str]) -> list[str]:
        """Return only these classes (empty = all): other classes become 255 (unlabeled) in label maps and their
        boxes are dropped. Returns the names that are no class of this model (they match nothing)."""
        if not names:
            self._class_lut = self._kept_ids = None
            return []
        kept = [i for i, name in enumerate(self.class_names) if name in names]
        lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        lut[kept] = kept
        self._class_lut, self._kept_ids = lut, np.array(kept, dtype=np.int64)
        return sorted(set(names) - set(self.class_names))

    def set_inference(self, cfg: InferenceConfig) -> None:
        """Feed the network another way (whole image or sliding window, sizes); validated first."""
        validate_inference_config(cfg)
        self.inference = cfg

    def release_device(self) -> None:
        """Move the network to the host and hand its GPU memory back (a deactivated node keeps the model loaded)."""
        self.model.to("cpu")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def restore_device(self) -> None:
        """Move the network back to its device after ``release_device``."""
        self.model.to(self.device)

    @property
    def detection_classes(self) -> dict[int, str]:
        """Detection classes by their id in ``class_names`` (empty without a detection head)."""
        return {int(i): self.class_names[int(i)] for i in self._det_ids}

    def _compiled(self, mode: bool | str, cache_dir: Optional[str]):
        """torch.compile the network with static shapes. ``mode``: True/"default", "reduce-overhead" (CUDA graphs,
        removes launch overhead at small inputs) or "max-autotune". Inductor's FX-graph cache lives in
        ``cache_dir`` (or TORCHINDUCTOR_CACHE_DIR), so a restarted node reuses compiled kernels instead of paying
        the compile again."""
        import os

        if cache_dir:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.expanduser(cache_dir)
        torch._inductor.config.fx_graph_cache = True
        # fullgraph: eval mode has no graph breaks (fixed-shape detection), so "reduce-overhead" captures the
        # whole network in one CUDA graph; a break would be a regression and fails loudly here.
        return torch.compile(self.model, dynamic=False, fullgraph=True,
                             mode=None if mode in (True, "default") else mode)

    @classmethod
    def from_checkpoint(cls, path: str, device: str | torch.device = "cpu", precision: str = "auto",
                        **kwargs) -> "Predictor":
        """Load a ``.safetensors`` checkpoint and wrap it (kwargs: inference, score_threshold, max_batch, compile,
        compile_cache_dir, tta)."""
        model, meta = load_checkpoint(path)
        return cls(model, meta, device=device, precision=precision, **kwargs)

    def _upload(self, image: np.ndarray | Tensor, image_format: str) -> Tensor:
        """HxWx3 uint8 numpy array or torch tensor (any device, e.g. decoded by nvJPEG) -> [1, 3, H, W] float32
        RGB on the device (0-255 scale)."""
        if not isinstance(image, (np.ndarray, Tensor)) or image.dtype not in (np.uint8, torch.uint8) \
                or image.ndim != 3 or image.shape[2] != 3:
            shape = getattr(image, "shape", None)
            dtype = getattr(image, "dtype", type(image).__name__)
            raise InputError(f"expected an HxWx3 uint8 array, got shape {tuple(shape) if shape else shape} "
                             f"dtype {dtype}")
        if image.shape[0] < 1 or image.shape[1] < 1:
            raise InputError(f"image has zero size: {tuple(image.shape)}")
        if isinstance(image, Tensor):
            host = image
        else:
            host = torch.from_numpy(np.ascontiguousarray(image))
            if self.device.type == "cuda":
                host = host.pin_memory()
        tensor = host.to(self.device, non_blocking=True).permute(2, 0, 1).unsqueeze(0).float()
        return tensor.flip(1) if image_format == "BGR" else tensor

    def _normalise(self, images: Tensor, size: Sequence[int]) -> Tensor:
        if tuple(images.shape[-2:]) != tuple(size):
            images = F.interpolate(images, size=tuple(size), mode="bilinear", align_corners=False)
        return self.model.normalize(images)

    @torch.inference_mode()
    def predict(self, images: Sequence[np.ndarray | Tensor], image_format: str | Sequence[str] = "RGB",
                return_confidence: bool = False) -> list[Prediction]:
        """Run the network on HxWx3 uint8 images (numpy, or torch tensors already on a device) of any sizes as one
        batch. ``image_format`` is "RGB" or "BGR" for all images, or one of those per image."""
        formats = [image_format] * len(images) if isinstance(image_format, str) else list(image_format)
        if len(formats) != len(images) or any(f not in ("RGB", "BGR") for f in formats):
            raise InputError(f"image_format must be 'RGB' or 'BGR' (one, or one per image), got {image_format!r}")
        tensors = [self._upload(img, fmt) for img, fmt in zip(images, formats)]
        if not tensors:
            return []
        if self.tta is None:
            scores, detections, descriptors = self._infer(tensors, self.inference)
        else:
            scores, detections, descriptors = self._augmented(tensors)
        return [self._finish(s, d, return_confidence, self._frame_monitor(desc, t))
                for s, d, desc, t in zip(scores, detections, descriptors, tensors)]

    # ------------------------------------------------------------------------------------------ domain-shift monitor
    @property
    def monitor_calibrated(self) -> bool:
        """Whether the checkpoint holds the monitor's in-domain calibration (``vltseg monitor calibrate``)."""
        return self._monitor is not None

    @property
    def monitor_thresholds(self) -> dict[str, dict[str, float]]:
        """Calibrated alarm thresholds (``warn``, ``error``) by frame-score name; empty when uncalibrated."""
        return {name: dict(entry["thresholds"]) for name, entry in (self._monitor or {}).items()}

    def set_monitor_calibration(self, calibration: Optional[dict]) -> None:
        """Use this calibration (the checkpoint metadata's ``monitor`` section) from now on; None = uncalibrated."""
        self._monitor = None if not calibration else {
            name: {"stats": monitor.from_plain(entry["stats"], self.device), "thresholds": entry["thresholds"]}
            for name, entry in calibration["scores"].items()}

    def _frame_monitor(self, descriptor: Optional[Tensor], image: Tensor) -> tuple[dict, dict]:
        """(descriptors, scores) of one frame by score name: the default feature-shift score and the model-free
        image-statistics baseline. Scores only with a calibration; computed on the device."""
        descriptors = {monitor.DEFAULT_SCORE: descriptor} if descriptor is not None else {}
        descriptors[monitor.BASELINE_SCORE] = monitor.baseline_descriptor(image)
        scores = {name: monitor.frame_score(descriptors[name], entry["stats"])
                  for name, entry in (self._monitor or {}).items() if name in descriptors}
        return ({k: v[0].float().cpu().numpy() for k, v in descriptors.items()},
                {k: float(v[0]) for k, v in scores.items()})

    @torch.inference_mode()
    def class_scores(self, image: np.ndarray | Tensor, image_format: str = "RGB") -> Tensor:
        """Per-class scores [K, H, W] (float32, on the device) of one HxWx3 uint8 image at its own size, before the
        argmax: the output the reference implementation's ``inference`` returns (parity tests, monitors)."""
        if not self.has_seg:
            raise InputError("this checkpoint has no segmentation head")
        if image_format not in ("RGB", "BGR"):
            raise InputError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        return self._infer([self._upload(image, image_format)], self.inference)[0][0].float()

    def _infer(self, tensors: list[Tensor], cfg: InferenceConfig) -> tuple[list, list, list]:
        """Per image: class scores [K, H, W] at the source size, detections in source pixels, and the monitor's
        feature descriptor [1, 2D] (averaged over sliding windows); None where the network has no such head."""
        return self._whole(tensors, cfg) if cfg.mode == "whole" else self._slide(tensors, cfg)

    def _augmented(self, tensors: list[Tensor]) -> tuple[list, list, list]:
        """``_infer`` at every TTA scale and flip: per-pass class softmax averaged, boxes of all passes merged by
        class-wise NMS, the monitor's descriptor of the first (unaugmented) pass."""
        passes = [(scale, flip) for scale in self.tta.scales for flip in ((False, True) if self.tta.flip else (False,))]
        scores: list[Optional[Tensor]] = [None] * len(tensors)
        boxes: list[list[dict]] = [[] for _ in tensors]
        descriptors: Optional[list] = None
        for scale, flip in passes:
            cfg = dataclasses.replace(self.inference, size=[round(v * scale) for v in self.inference.size],
                                      fit_size=[round(v * scale) for v in self.inference.fit_size])
            out_scores, out_dets, out_desc = self._infer([t.flip(-1) for t in tensors] if flip else tensors, cfg)
            descriptors = descriptors or out_desc
            for i, (score, det) in enumerate(zip(out_scores, out_dets)):
                if score is not None:
                    # Softmax over classes before averaging, as mmseg's SegTTAModel merges passes.
                    score = (score.flip(-1) if flip else score).softmax(0)
                    scores[i] = score if scores[i] is None else scores[i] + score
                if det is not None:
                    if flip:
                        width = tensors[i].shape[-1]
                        det = {**det, "boxes": det["boxes"][:, [2, 1, 0, 3]] * det["boxes"].new_tensor(
                            [-1, 1, -1, 1]) + det["boxes"].new_tensor([width, 0, width, 0])}
                    boxes[i].append(det)
        scores = [None if s is None else s / len(passes) for s in scores]
        detections = [self._merge_windows(*(torch.cat([d[k] for d in dets]) for k in ("boxes", "scores", "labels")))
                      if dets else None for dets in boxes]
        return scores, detections, descriptors

    def _run(self, batch: Tensor) -> dict:
        with autocast(self.precision, self.device):
            if not self._cuda_graphs:
                return self._forward(batch)
            torch.compiler.cudagraph_mark_step_begin()
            out = self._forward(batch)
        return {key: value.clone() if isinstance(value, Tensor) else {k: v.clone() for k, v in value.items()}
                for key, value in out.items()}

    def _whole(self, tensors: list[Tensor], cfg: InferenceConfig) -> tuple[list, list, list]:
        size = cfg.size
        scores: list[Optional[Tensor]] = []
        detections: list[Optional[dict]] = []
        descriptors: list[Optional[Tensor]] = []
        for start in range(0, len(tensors), self.max_batch):
            chunk = tensors[start:start + self.max_batch]
            batch = torch.cat([self._normalise(t, size) for t in chunk])
            out = self._run(batch)
            dets = unpad_detections(out["detections"]) if self.has_det else None
            for i, t in enumerate(chunk):
                src_h, src_w = t.shape[-2:]
                scores.append(self._resize_scores(out["seg_scores"][i:i + 1], (src_h, src_w))
                              if self.has_seg else None)
                detections.append(self._scale_boxes(dets[i], src_h / size[0], src_w / size[1])
                                  if self.has_det else None)
                descriptors.append(out["frame_descriptor"][i:i + 1] if self.has_seg else None)
        return scores, detections, descriptors

    def _slide(self, tensors: list[Tensor], cfg: InferenceConfig) -> tuple[list, list, list]:
        scores: list[Optional[Tensor]] = []
        detections: list[Optional[dict]] = []
        descriptors: list[Optional[Tensor]] = []
        for t in tensors:
            src_h, src_w = t.shape[-2:]
            h, w = fit_size(src_h, src_w, cfg.fit_size)
            image = self._normalise(t, (h, w))
            win_h, win_w = min(cfg.window, h), min(cfg.window, w)
            crops = [(y, x) for y in window_origins(h, win_h, cfg.stride) for x in window_origins(w, win_w, cfg.stride)]
            total = image.new_zeros((1, len(self.meta.model.classes), h, w)) if self.has_seg else None
            count = image.new_zeros((1, 1, h, w))
            boxes, box_scores, labels, window_descriptors = [], [], [], []
            for start in range(0, len(crops), self.max_batch):
                chunk = crops[start:start + self.max_batch]
                batch = torch.cat([image[..., y:y + win_h, x:x + win_w] for y, x in chunk])
                out = self._run(batch)
                dets = unpad_detections(out["detections"]) if self.has_det else None
                for i, (y, x) in enumerate(chunk):
                    count[..., y:y + win_h, x:x + win_w] += 1
                    if self.has_seg:
                        total[..., y:y + win_h, x:x + win_w] += out["seg_scores"][i:i + 1]
                        window_descriptors.append(out["frame_descriptor"][i:i + 1])
                    if self.has_det:
                        det = dets[i]
                        boxes.append(det["boxes"] + det["boxes"].new_tensor([x, y, x, y]))
                        box_scores.append(det["scores"])
                        labels.append(det["labels"])
            scores.append(self._resize_scores(total / count, (src_h, src_w)) if self.has_seg else None)
            descriptors.append(torch.cat(window_descriptors).mean(0, keepdim=True) if self.has_seg else None)
            if self.has_det:
                merged = self._merge_windows(torch.cat(boxes), torch.cat(box_scores), torch.cat(labels))
                detections.append(self._scale_boxes(merged, src_h / h, src_w / w))
            else:
                detections.append(None)
        return scores, detections, descriptors

    def _merge_windows(self, boxes: Tensor, scores: Tensor, labels: Tensor) -> dict:
        """Class-wise NMS over the union of all windows' detections (overlapping windows see objects twice)."""
        det_cfg = self.meta.model.det_head
        keep = batched_nms(boxes, scores, labels, det_cfg.box_nms_thresh)[: det_cfg.box_detections_per_img]
        return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}

    @staticmethod
    def _resize_scores(scores: Tensor, size: tuple[int, int]) -> Tensor:
        if tuple(scores.shape[-2:]) != tuple(size):
            scores = F.interpolate(scores.float(), size=size, mode="bilinear", align_corners=False)
        return scores[0]

    @staticmethod
    def _scale_boxes(det: dict, scale_y: float, scale_x: float) -> dict:
        factor = det["boxes"].new_tensor([scale_x, scale_y, scale_x, scale_y])
        return {"boxes": det["boxes"] * factor, "scores": det["scores"], "labels": det["labels"]}

    def _finish(self, scores: Optional[Tensor], det: Optional[dict], return_confidence: bool,
                frame_monitor: tuple[dict, dict]) -> Prediction:
        label_map = confidence = None
        if scores is not None:
            best, label = scores.max(dim=0)
            label_map = label.to(torch.uint8).cpu().numpy()
            if self._class_lut is not None:
                label_map = self._class_lut[label_map]
            if return_confidence:
                # Mask2Former's per-class scores do not sum to one; normalise them to a distribution.
                total = scores.sum(dim=0).clamp_min(1e-6)
                confidence = (best / total).clamp(0, 1).float().cpu().numpy()
        if det is not None:
            keep = (det["scores"] >= self.score_threshold).cpu()
            class_ids = self._det_ids[det["labels"].cpu()]
            if self._kept_ids is not None:
                keep &= torch.isin(class_ids, torch.from_numpy(self._kept_ids))
            boxes = det["boxes"][keep.to(det["boxes"].device)].float().cpu().numpy()
            class_ids = class_ids[keep].numpy()
            box_scores = det["scores"][keep.to(det["scores"].device)].float().cpu().numpy()
        else:
            boxes = np.zeros((0, 4), np.float32)
            class_ids = np.zeros((0,), np.int64)
            box_scores = np.zeros((0,), np.float32)
        descriptors, frame_scores = frame_monitor
        return Prediction(label_map, confidence, boxes, class_ids, box_scores, frame_scores, descriptors)


__all__ = ["Predictor", "Prediction", "InputError", "fit_size", "window_origins", "IGNORE_INDEX"]
