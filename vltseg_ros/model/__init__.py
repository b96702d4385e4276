"""The VLTSeg/VLTDet network: encoders, simple feature pyramid, Mask2Former and Faster R-CNN heads."""
from .encoder import ENCODERS, ClipEncoder, PretrainedWeightsError, load_pretrained
from .network import VLTSeg, build_model, count_parameters

__all__ = [
    "ENCODERS", "ClipEncoder", "PretrainedWeightsError", "load_pretrained", "VLTSeg", "build_model",
    "count_parameters",
]
