"""Convert torchvision's ``retinanet_resnet50_fpn`` weights into a focaldet checkpoint.

torchvision's model has 91 outputs whose index is the COCO category id (index 0 and the eleven
unused ids are never trained as positives), P6 computed from P5, BoxCoder weights (1, 1, 1, 1)
and anchors whose sizes are truncated to integers; the converted model reproduces all of that.
"""

from __future__ import annotations

import re
from typing import Any

from torch import Tensor
from torchvision.models.detection import RetinaNet_ResNet50_FPN_Weights

from detector.anchors import DEFAULT_RATIOS, DEFAULT_STRIDES, torchvision_anchor_sizes
from detector.backbone import RESNET_OUT_CHANNELS
from detector.box_coder import BBOX_XFORM_CLAMP
from detector.build import build_from_checkpoint
from detector.checkpoint import FORMAT_VERSION
from detector.retinanet import IMAGENET_MEAN, IMAGENET_STD

TORCHVISION_NUM_CLASSES = 91
TORCHVISION_NUM_ANCHORS = 9
TORCHVISION_DEPTH = 50
TORCHVISION_SIZE_DIVISIBLE = 32
TORCHVISION_MIN_SIZE, TORCHVISION_MAX_SIZE = 800, 1333
COCO_V1_BN_EPS = 0.0
"""torchvision's published COCO_V1 RetinaNet runs its FrozenBatchNorm with eps = 0
(``overwrite_eps(model, 0.0)`` in ``retinanet_resnet50_fpn``)."""

_UNUSED_NAMES = ("__background__", "N/A")
_KEY_RULES = (
    (re.compile(r"^backbone\.body\."), "backbone."),
    (re.compile(r"^backbone\.fpn\."), "fpn."),
    (re.compile(r"^head\.classification_head\.conv\."), "head.cls_subnet."),
    (re.compile(r"^head\.classification_head\.cls_logits\."), "head.cls_score."),
    (re.compile(r"^head\.regression_head\.conv\."), "head.bbox_subnet."),
    (re.compile(r"^head\.regression_head\.bbox_reg\."), "head.bbox_pred."),
)
# torchvision's v1 head layout (before Conv2dNormActivation): conv.{2i} → conv.{i}.0
_V1_SUBNET_KEY = re.compile(r"^(head\.(?:cls|bbox)_subnet\.)(\d+)\.(weight|bias)$")


def coco_classes() -> list[dict[str, Any]]:
    """The 91 torchvision COCO classes ``{"id": i, "name": ...}``; unused ids get ``unused_<i>``."""
    names = RetinaNet_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
    return [
        {"id": i, "name": f"unused_{i}" if name in _UNUSED_NAMES else name}
        for i, name in enumerate(names)
    ]


def torchvision_model_config(
    num_classes: int = TORCHVISION_NUM_CLASSES, bn_eps: float = COCO_V1_BN_EPS
) -> dict:
    """The Hydra ``_target_`` tree of a focaldet RetinaNet equal to torchvision's."""
    return {
        "_target_": "detector.RetinaNet",
        "backbone": {
            "_target_": "detector.ResNetBackbone",
            "depth": TORCHVISION_DEPTH,
            "frozen_stages": 1,
            "norm": "frozen_bn",
            "weights": None,
            "norm_eps": bn_eps,
        },
        "fpn": {
            "_target_": "detector.FPN",
            "in_channels": list(RESNET_OUT_CHANNELS[TORCHVISION_DEPTH]),
            "out_channels": 256,
            "p6_from": "p5",
        },
        "head": {
            "_target_": "detector.RetinaNetHead",
            "in_channels": 256,
            "num_anchors": TORCHVISION_NUM_ANCHORS,
            "num_classes": num_classes,
            "num_convs": 4,
            "norm": None,
            "prior_prob": 0.01,
        },
        "anchor_generator": {
            "_target_": "detector.AnchorGenerator",
            "sizes": torchvision_anchor_sizes(),
            "strides": list(DEFAULT_STRIDES),
            "ratios": list(DEFAULT_RATIOS),
            # torchvision derives each level's stride from the padded image: P6/P7 anchors of
            # an image padded to 32 are not on a 64/128 grid.
            "strides_from_image": True,
        },
        "pixel_mean": list(IMAGENET_MEAN),
        "pixel_std": list(IMAGENET_STD),
        # torchvision pads to 32 (GeneralizedRCNNTransform's size_divisible); padding further
        # changes the features near the bottom and right borders.
        "size_divisibility": TORCHVISION_SIZE_DIVISIBLE,
    }


def torchvision_val_transforms(
    min_size: int = TORCHVISION_MIN_SIZE, max_size: int = TORCHVISION_MAX_SIZE
) -> list[dict]:
    """The evaluation resize of torchvision's detection models (``min_size``, ``max_size`` of
    ``retinanet_resnet50_fpn``), as a transform list (data/transforms.py)."""
    return [{"_target_": "data.transforms.TorchvisionResize", "min_size": min_size,
             "max_size": max_size}]  # fmt: skip


def torchvision_postprocess_config(
    score_thresh: float = 0.05,
    topk_candidates: int = 1000,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
) -> dict:
    """Hydra tree of the post-processor with torchvision's (and the paper's) settings."""
    return {
        "_target_": "detector.RetinaNetPostProcessor",
        "box_coder": {
            "_target_": "detector.BoxCoder",
            "weights": [1.0, 1.0, 1.0, 1.0],
            "clamp": BBOX_XFORM_CLAMP,
        },
        "score_thresh": score_thresh,
        "topk_candidates": topk_candidates,
        "nms_thresh": nms_thresh,
        "detections_per_img": detections_per_img,
    }


def _rename(key: str) -> str | None:
    if key.endswith("num_batches_tracked"):
        return None
    for pattern, replacement in _KEY_RULES:
        if pattern.match(key):
            key = pattern.sub(replacement, key)
            v1 = _V1_SUBNET_KEY.match(key)
            if v1:
                prefix, index, kind = v1.groups()
                key = f"{prefix}{int(index) // 2}.0.{kind}"
            return key
    raise ValueError(f"unexpected key {key!r}: not a torchvision retinanet_resnet50_fpn state dict")


def focaldet_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """A torchvision RetinaNet's state dict under focaldet's keys (the one key mapping).

    ``backbone.body.*`` → ``backbone.*``, ``backbone.fpn.*`` → ``fpn.*`` and the two heads'
    ``conv``/``cls_logits``/``bbox_reg`` → ``cls_subnet``/``cls_score``/``bbox_subnet``/
    ``bbox_pred`` (old torchvision head layouts too); BatchNorm ``num_batches_tracked`` counters
    are dropped. Works for any ResNet depth: the module trees match part for part. Tensors are
    shared, not copied. Raises ValueError on a key outside that tree.
    """
    renamed = {}
    for key, value in state_dict.items():
        new_key = _rename(key)
        if new_key is not None:
            renamed[new_key] = value
    return renamed


def convert_torchvision_state_dict(
    state_dict: dict[str, Tensor], bn_eps: float = COCO_V1_BN_EPS
) -> dict[str, Any]:
    """A focaldet checkpoint dict from a torchvision ``retinanet_resnet50_fpn`` state dict.

    Args:
        state_dict: the torchvision model's ``state_dict()`` (BatchNorm or FrozenBatchNorm; the
            running statistics become FrozenBatchNorm buffers).
        bn_eps: epsilon of the frozen norm layers: 0 for torchvision's published COCO_V1
            weights, 1e-5 for a model built with ``nn.BatchNorm2d`` defaults.

    The result loads with ``build_from_checkpoint``; its ``model`` entry is checked by loading
    it into the configured model with ``strict=True``.
    """
    if not isinstance(state_dict, dict) or not state_dict:
        raise ValueError("expected a non-empty state dict (a dict of tensors)")
    cls_key = "head.classification_head.cls_logits.weight"
    if cls_key not in state_dict:
        raise ValueError(f"not a torchvision retinanet_resnet50_fpn state dict: no {cls_key!r}")
    outputs = state_dict[cls_key].shape[0]
    if outputs != TORCHVISION_NUM_ANCHORS * TORCHVISION_NUM_CLASSES:
        raise ValueError(
            f"expected {TORCHVISION_NUM_ANCHORS} anchors × {TORCHVISION_NUM_CLASSES} COCO classes "
            f"= {TORCHVISION_NUM_ANCHORS * TORCHVISION_NUM_CLASSES} classification outputs, "
            f"got {outputs}"
        )
    converted = {k: v.detach().clone() for k, v in focaldet_state_dict(state_dict).items()}
    ckpt = {
        "format_version": FORMAT_VERSION,
        "model": converted,
        "model_config": torchvision_model_config(TORCHVISION_NUM_CLASSES, bn_eps),
        "postprocess_config": torchvision_postprocess_config(),
        "classes": coco_classes(),
        # Where tools look for a checkpoint's evaluation resize (tools/infer.py, Predictor).
        "config": {"data": {"val": {"transforms": torchvision_val_transforms()}}},
    }
    model, _, _ = build_from_checkpoint(ckpt)
    ckpt["model"] = model.state_dict()
    return ckpt
