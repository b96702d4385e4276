"""Model, preprocessing and inference configuration as plain dataclasses.

Configuration is data: it is validated once when built from a dict (a checkpoint's JSON metadata, YAML or CLI
flags) and trusted afterwards. ``to_dict``/``from_dict`` round-trip exactly, which the checkpoint format relies on.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

from .labels import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, CITYSCAPES_THING_CLASSES


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""


@dataclass
class EncoderConfig:
    """CLIP vision encoder: a registered name (see ``model.encoder.ENCODERS``), tap blocks and drop path."""

    name: str = "eva02_l14"
    taps: Optional[list[int]] = None  # None = the encoder's default taps
    drop_path_rate: float = 0.2
    # None = the encoder's own; with another size timm resamples pretrained patch embeddings (FlexiViT).
    patch_size: Optional[int] = None
    # Reference compatibility (docs/design.md#reference-compatibility). The defaults are this project's own network;
    # a checkpoint imported from the mmseg reimplementation (vltseg_ros.mmseg_checkpoint) sets all four.
    # timm keyword arguments over the registered architecture, for trunks of other sizes (embed_dim, depth, ...).
    arch: dict[str, Any] = field(default_factory=dict)
    # LayerNorm inside attention (EVA02-CLIP's sub-LN): None = the architecture's own; the reference has none.
    attn_inner_norm: Optional[bool] = None
    # Grid (patches per side) at which the absolute position embedding is stored, so that it is used unresampled
    # at that grid (the reference learns it at its crop's grid: 36 for 512 crops of patch 14). None = timm's 224 px.
    pos_embed_grid: Optional[int] = None
    # Input sizes that are no patch multiple: "pad" zero-pads bottom/right (every pixel seen); "floor" drops the
    # remainder as a stride-p convolution does (the reference: a 512 window gives 36 patches of 14 px).
    patch_grid: str = "pad"


@dataclass
class PyramidConfig:
    """Simple feature pyramid: normalisation after the first deconvolution of the stride-4 branch."""

    norm: str = "batch"  # "batch" (SyncBatchNorm under DDP) or "group"
    # Resampling of the four taps, finest first, relative to the patch grid: ViTDet's 4/2/1/0.5 give strides
    # 4/8/16/32 with patch 16. Each a power of two from 1/8 to 8 (a patch-8 encoder takes 2/1/0.5/0.25).
    scales: list[float] = field(default_factory=lambda: [4.0, 2.0, 1.0, 0.5])


@dataclass
class SegHeadConfig:
    """Mask2Former semantic head and its loss (docs/design.md#method)."""

    hidden_dim: int = 256
    num_queries: int = 100
    pixel_decoder_layers: int = 6
    decoder_layers: int = 9
    num_heads: int = 8  # attention heads of the transformer decoder (and of the pixel decoder, unless set below)
    pixel_decoder_num_heads: Optional[int] = None  # None = num_heads
    decoder_ffn_dim: int = 2048
    pixel_decoder_ffn_dim: int = 1024
    num_points: int = 4
    # A conv bias before the GroupNorm of the pixel decoder's input projections, as mmdet's Mask2Former has. New
    # networks have it; checkpoints written before this field existed have none (``LEGACY_MODEL_DEFAULTS``).
    input_proj_bias: bool = True
    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    no_object_weight: float = 0.1
    train_num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75


@dataclass
class DetHeadConfig:
    """ViTDet-style Faster R-CNN (torchvision RPN + RoI heads over an FPN on the shared pyramid)."""

    classes: list[str] = field(default_factory=lambda: list(CITYSCAPES_THING_CLASSES))
    fpn_channels: int = 256
    anchor_sizes: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512])
    aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    rpn_pre_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_test: int = 1000
    roi_batch_size_per_image: int = 512  # sampled RoIs per image for the box head loss
    representation_size: int = 1024  # width of the two-MLP box head
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 100
    # Multiplies the four detection losses. The heads share the encoder with Mask2Former, whose summed losses are
    # ~15x larger; under global-norm clipping the encoder then learns almost only from segmentation.
    loss_weight: float = 1.0
    # Inference only (fixed-shape path): class-wise NMS runs over this many best-scoring candidates per image, and
    # compiled / exported graphs unroll NMS for ``nms_unroll`` steps (eager mode iterates to the exact result).
    box_nms_candidates: int = 2000
    nms_unroll: int = 16


@dataclass
class ModelConfig:
    """The whole network: one encoder, a pyramid, and a segmentation head, a detection head, or both."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    pyramid: PyramidConfig = field(default_factory=PyramidConfig)
    seg_head: Optional[SegHeadConfig] = field(default_factory=SegHeadConfig)
    det_head: Optional[DetHeadConfig] = None
    classes: list[str] = field(default_factory=lambda: list(CITYSCAPES_CLASSES))
    palette: list[list[int]] = field(default_factory=lambda: [list(c) for c in CITYSCAPES_PALETTE])


@dataclass
class NormalizationConfig:
    """Per-channel mean/std on the 0-255 scale, RGB order (the reimplementation's ImageNet statistics)."""

    mean: list[float] = field(default_factory=lambda: [123.675, 116.28, 103.53])
    std: list[float] = field(default_factory=lambda: [58.395, 57.12, 57.375])


@dataclass
class InferenceConfig:
    """How the predictor feeds images to the network.

    ``whole``: resize each image to ``size`` (H, W) exactly. ``slide``: resize keeping the aspect ratio so the long
    side is at most ``max(fit_size)`` and the short side at most ``min(fit_size)`` (mmcv's rule), then average
    ``window``-sized crops taken every ``stride`` pixels (``EVAL_PROTOCOLS``: 512/426 within 512x1024 for
    synthetic-trained models, 1024/768 within 1024x2048 for real-trained ones).
    """

    mode: str = "slide"
    size: list[int] = field(default_factory=lambda: [512, 1024])
    fit_size: list[int] = field(default_factory=lambda: [512, 1024])
    window: int = 512
    stride: int = 426


@dataclass
class TTAConfig:
    """Test-time augmentation for test-server numbers (docs/design.md#evaluation-protocol): inference at each of ``scales`` times the
    inference size (``size`` or ``fit_size``), each also mirrored when ``flip``; class scores are averaged at the
    source resolution and boxes merged by class-wise NMS. Off for deployment: it multiplies the cost."""

    scales: list[float] = field(default_factory=lambda: [1.0])
    flip: bool = False

    def __post_init__(self):
        if not self.scales or min(self.scales) <= 0:
            raise ConfigError(f"tta.scales: need positive scale factors, got {self.scales}")


def from_dict(cls: type, data: Any, where: str) -> Any:
    """Build dataclass ``cls`` from nested dicts (JSON/YAML), validating once at the edge: unknown keys are
    errors, nested dataclass fields (also ``Optional[...]`` and ``list[...]`` of them) are built recursively from
    the type hints, and scalars take the type of their field's default."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    return cls(**{key: _field_value(hints[key], fields[key], value, f"{where}.{key}") for key, value in data.items()})


def _field_value(hint: Any, spec: dataclasses.Field, value: Any, where: str) -> Any:
    if value is None:
        return None
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Union and len(args) == 1:
        hint, args = args[0], list(typing.get_args(args[0]))
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if typing.get_origin(hint) is list and args and dataclasses.is_dataclass(args[0]):
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        return [from_dict(args[0], item, f"{where}[{i}]") for i, item in enumerate(value)]
    return _coerce(spec, value, where)


def _coerce(spec: dataclasses.Field, value: Any, where: str) -> Any:
    """Give scalars the type of the field's default (YAML reads ``2e-4`` as a string, ``1`` as an int)."""
    default = spec.default
    if value is None or default is dataclasses.MISSING or default is None or isinstance(default, bool):
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if isinstance(default, (int, float)):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(default, int) and not isinstance(default, float):
            if number != int(number):
                raise ConfigError(f"{where}: expected an integer, got {value!r}")
            return int(number)
        return number
    if isinstance(default, str) and not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


ENCODER_ARCH_KEYS = frozenset({
    "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias", "qkv_fused", "swiglu_mlp", "scale_mlp",
    "use_rot_pos_emb", "use_abs_pos_emb", "ref_feat_shape", "init_values", "use_post_transformer_norm",
})
"""timm ``Eva`` arguments ``model.encoder.arch`` may set."""

# Fields whose default changed after checkpoints were written: metadata without the key means the old behaviour.
LEGACY_MODEL_DEFAULTS = {("seg_head", "input_proj_bias"): False}


def model_config_from_checkpoint_dict(data: dict) -> ModelConfig:
    """``model_config_from_dict`` for a checkpoint's stored metadata: keys added since it was written take the
    value that reproduces the network it was written with (``LEGACY_MODEL_DEFAULTS``), not today's default."""
    data = {key: dict(value) if isinstance(value, dict) else value for key, value in data.items()}
    for (section, key), value in LEGACY_MODEL_DEFAULTS.items():
        if isinstance(data.get(section), dict):
            data[section].setdefault(key, value)
    return model_config_from_dict(data)


def model_config_from_dict(data: dict) -> ModelConfig:
    """Build and validate a ModelConfig from its ``to_dict`` form."""
    cfg = from_dict(ModelConfig, data, "model")
    validate_model_config(cfg)
    return cfg


def inference_config_from_dict(data: dict) -> InferenceConfig:
    """Build and validate an InferenceConfig."""
    cfg = from_dict(InferenceConfig, data, "inference")
    validate_inference_config(cfg)
    return cfg


def normalization_from_dict(data: dict) -> NormalizationConfig:
    """Build and validate a NormalizationConfig."""
    cfg = from_dict(NormalizationConfig, data, "normalization")
    if len(cfg.mean) != 3 or len(cfg.std) != 3 or min(cfg.std) <= 0:
        raise ConfigError("normalization: mean and std need 3 values each, std > 0")
    return cfg


def to_dict(cfg: Any) -> dict:
    """Plain-JSON form of any config dataclass."""
    return dataclasses.asdict(cfg)


def validate_model_config(cfg: ModelConfig) -> None:
    """Raise ConfigError when the model config cannot describe a working network."""
    from .model.encoder import ENCODERS  # local import: encoder pulls in timm

    if cfg.encoder.name not in ENCODERS:
        raise ConfigError(f"model.encoder.name: unknown encoder {cfg.encoder.name!r}; known: {sorted(ENCODERS)}")
    if cfg.encoder.taps is not None and len(cfg.encoder.taps) != 4:
        raise ConfigError(f"model.encoder.taps: need exactly 4 block indices, got {cfg.encoder.taps}")
    if cfg.seg_head is None and cfg.det_head is None:
        raise ConfigError("model: a checkpoint needs a segmentation head, a detection head, or both")
    if not cfg.classes or len(cfg.classes) > 255:
        raise ConfigError(f"model.classes: need 1..255 classes (255 is the unlabeled value), got {len(cfg.classes)}")
    if len(cfg.palette) != len(cfg.classes) or any(len(c) != 3 for c in cfg.palette):
        raise ConfigError("model.palette: need one RGB triple per class")
    if cfg.pyramid.norm not in ("batch", "group"):
        raise ConfigError(f"model.pyramid.norm: 'batch' or 'group', got {cfg.pyramid.norm!r}")
    scales = cfg.pyramid.scales
    if (len(scales) != 4 or any(s <= 0 or not math.log2(s).is_integer() or abs(math.log2(s)) > 3 for s in scales)
            or any(a <= b for a, b in zip(scales, scales[1:]))):
        raise ConfigError(f"model.pyramid.scales: need 4 decreasing powers of two from 1/8 to 8, got {scales}")
    if cfg.encoder.patch_size is not None and not 4 <= cfg.encoder.patch_size <= 32:
        raise ConfigError(f"model.encoder.patch_size: need 4..32 px, got {cfg.encoder.patch_size}")
    if not isinstance(cfg.encoder.arch, dict) or set(cfg.encoder.arch) - ENCODER_ARCH_KEYS:
        raise ConfigError(f"model.encoder.arch: a mapping of timm Eva arguments from {sorted(ENCODER_ARCH_KEYS)}, "
                          f"got {cfg.encoder.arch!r}")
    if cfg.encoder.patch_grid not in ("pad", "floor"):
        raise ConfigError(f"model.encoder.patch_grid: 'pad' or 'floor', got {cfg.encoder.patch_grid!r}")
    if cfg.encoder.pos_embed_grid is not None and not 1 <= cfg.encoder.pos_embed_grid <= 512:
        raise ConfigError(f"model.encoder.pos_embed_grid: need 1..512 patches, got {cfg.encoder.pos_embed_grid}")
    if cfg.det_head is not None and not cfg.det_head.classes:
        raise ConfigError("model.det_head.classes: need at least one detection class")
    if cfg.det_head is not None:
        det = cfg.det_head
        if det.loss_weight <= 0:
            raise ConfigError(f"model.det_head.loss_weight: need > 0, got {det.loss_weight}")
        if det.nms_unroll < 1:
            raise ConfigError(f"model.det_head.nms_unroll: need at least 1 step, got {det.nms_unroll}")
        if det.box_nms_candidates < det.box_detections_per_img:
            raise ConfigError(f"model.det_head.box_nms_candidates ({det.box_nms_candidates}) must be at least "
                              f"box_detections_per_img ({det.box_detections_per_img})")


def validate_inference_config(cfg: InferenceConfig) -> None:
    """Raise ConfigError for an unusable inference mode or size."""
    if cfg.mode not in ("whole", "slide"):
        raise ConfigError(f"inference.mode: 'whole' or 'slide', got {cfg.mode!r}")
    for name in ("size", "fit_size"):
        value = getattr(cfg, name)
        if len(value) != 2 or min(value) < 16:
            raise ConfigError(f"inference.{name}: need [height, width] of at least 16 px, got {value}")
    if cfg.window < 16 or not 0 < cfg.stride <= cfg.window:
        raise ConfigError(f"inference: need window >= 16 and 0 < stride <= window, got {cfg.window}/{cfg.stride}")


def model_preset(name: str, heads: tuple[str, ...] = ("seg",)) -> ModelConfig:
    """The default network for an encoder name, with the requested heads (``seg``, ``det``).

    ``eva02_tiny`` also shrinks the heads, for tests and CPU smoke runs; every other name gets the paper's heads.
    """
    unknown = sorted(set(heads) - {"seg", "det"})
    if unknown or not heads:
        raise ConfigError(f"heads: choose from 'seg' and 'det', got {list(heads)}")
    tiny = name == "eva02_tiny"
    seg = det = None
    if "seg" in heads:
        # 1024 loss points: the tiny model's masks are 64x64 at the demo's 256 px crops (4096 pixels), and the
        # importance sampling draws 3x the point count per mask. With 2048 a training step took ~15 % longer for no
        # better mIoU on the demo's schedule (bench/RESULTS.md, the demo-quality ablations).
        seg = SegHeadConfig(
            hidden_dim=64, num_queries=20, pixel_decoder_layers=2, decoder_layers=3, num_heads=4,
            decoder_ffn_dim=256, pixel_decoder_ffn_dim=256, train_num_points=1024,
        ) if tiny else SegHeadConfig()
    if "det" in heads:
        # Anchors one octave below the paper's 32-512: the tiny model runs at 256x512, a quarter of the paper's
        # area, where boxes are 8-130 px (vltseg_ros.synth.MIN_BOX_SIDE and up) and 32 px anchors miss the smaller half.
        # loss_weight 15 brings the detection losses to the size of Mask2Former's: on the demo's schedule it raised
        # source AP50 from 7 to 12 at equal mIoU (weights 5 and 30 gave 11 and 10).
        det = DetHeadConfig(
            anchor_sizes=[16, 32, 64, 128, 256], fpn_channels=64, rpn_pre_nms_top_n_train=500, rpn_pre_nms_top_n_test=300,
            rpn_post_nms_top_n_train=300, rpn_post_nms_top_n_test=100, roi_batch_size_per_image=64,
            representation_size=256, loss_weight=15.0,
        ) if tiny else DetHeadConfig()
    cfg = ModelConfig(
        encoder=EncoderConfig(name=name, drop_path_rate=0.0 if tiny else 0.2),
        pyramid=PyramidConfig(norm="group" if tiny else "batch"),
        seg_head=seg, det_head=det,
    )
    validate_model_config(cfg)
    return cfg


EVAL_PROTOCOLS: dict[str, InferenceConfig] = {
    "synthetic": InferenceConfig(mode="slide", fit_size=[512, 1024], window=512, stride=426),
    "real": InferenceConfig(mode="slide", fit_size=[1024, 2048], window=1024, stride=768),
}
"""The paper's evaluation protocols (docs/design.md#evaluation-protocol): models trained on a synthetic source (GTA5, SYNTHIA) slide
512/426 windows over images fitted into 1024x512; models trained on a real source slide 1024/768 windows within
2048x1024. A dataset may fix its own test size per protocol (``SegmentationDataset.eval_fit_sizes``)."""


def evaluation_protocol(cfg: InferenceConfig) -> Optional[str]:
    """The name of the protocol whose sliding-window settings ``cfg`` uses, or None (custom settings)."""
    for name, protocol in EVAL_PROTOCOLS.items():
        if (cfg.mode, cfg.fit_size, cfg.window, cfg.stride) == (protocol.mode, protocol.fit_size, protocol.window,
                                                                protocol.stride):
            return name
    return None


def inference_preset(name: str) -> InferenceConfig:
    """Default inference for a new checkpoint: the synthetic-source protocol (slide 512/426 within 512x1024);
    the tiny model runs whole images at 256x512."""
    if name == "eva02_tiny":
        return InferenceConfig(mode="whole", size=[256, 512], fit_size=[256, 512], window=256, stride=192)
    return dataclasses.replace(EVAL_PROTOCOLS["synthetic"])
