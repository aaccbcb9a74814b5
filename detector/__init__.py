"""focaldet's RetinaNet (Lin et al., 2017): network, anchors, box coding, matching, loss and
post-processing as separate objects."""

from detector.anchors import AnchorGenerator
from detector.backbone import ResNetBackbone
from detector.box_coder import BBOX_XFORM_CLAMP, BoxCoder
from detector.build import build_from_checkpoint
from detector.criterion import RetinaNetCriterion
from detector.fpn import FPN
from detector.head import RetinaNetHead
from detector.labeling import BACKGROUND, IGNORE, AnchorLabeler
from detector.matcher import Matcher
from detector.postprocess import RetinaNetPostProcessor
from detector.retinanet import IMAGENET_MEAN, IMAGENET_STD, DenseOutputs, RetinaNet
from detector.torchvision_convert import convert_torchvision_state_dict

__all__ = [
    "BACKGROUND",
    "IGNORE",
    "BBOX_XFORM_CLAMP",
    "FPN",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "AnchorGenerator",
    "AnchorLabeler",
    "BoxCoder",
    "DenseOutputs",
    "Matcher",
    "ResNetBackbone",
    "RetinaNet",
    "RetinaNetCriterion",
    "RetinaNetHead",
    "Predictor",
    "RetinaNetPostProcessor",
    "build_from_checkpoint",
    "convert_torchvision_state_dict",
]


def __getattr__(name: str) -> object:
    # Predictor is imported on first use: it reads images and transforms through data/, whose
    # transforms import detector.safe_config, so importing it here would be circular.
    if name == "Predictor":
        from detector.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'detector' has no attribute {name!r}")
