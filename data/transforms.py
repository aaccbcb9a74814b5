"""Box-aware augmentation pipelines (albumentations 2.x) built from Hydra ``_target_`` nodes.

A pipeline is a list of nodes such as::

    - _target_: data.transforms.ResizeShortestEdge
      short_sizes: [640, 672, 704, 736, 768, 800]
      max_size: 1333
    - _target_: albumentations.HorizontalFlip
      p: 0.5

:func:`build_transforms` instantiates them inside an ``A.Compose`` whose boxes are
``pascal_voc`` (xyxy pixels) with ``labels`` and ``iscrowd`` as label fields, so a box that leaves
the image is clipped, or dropped together with its label and crowd flag.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
from albumentations.augmentations.geometric import functional as fgeometric
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pydantic import Field

LABEL_FIELDS = ["labels", "iscrowd"]
"""Per-box arrays that travel with the boxes through every transform."""


def resized_shape(height: int, width: int, short_size: int, max_size: int) -> tuple[int, int]:
    """Output ``(h, w)`` for shorter side ``short_size`` and longer side at most ``max_size``.

    The rule of the paper's setup (§5.1, "resized such that their scale (shorter edge) is 800
    pixels", longer side capped at 1333 as in Detectron) and of detectron2's ResizeShortestEdge.
    """
    scale = short_size / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


class ResizeShortestEdge(A.DualTransform):
    """Resize so the shorter side is a size drawn from ``short_sizes``, longer side ≤ ``max_size``.

    One size gives a fixed scale (evaluation, the paper's 600/800 settings); several give
    multi-scale training (e.g. 640..800). Boxes scale with the image.
    """

    class InitSchema(A.core.transforms_interface.BaseTransformInitSchema):
        short_sizes: int | list[int]
        max_size: int = Field(gt=0)
        interpolation: int

    def __init__(
        self,
        short_sizes: int | Sequence[int] = 800,
        max_size: int = 1333,
        interpolation: int = cv2.INTER_LINEAR,
        p: float = 1.0,
    ) -> None:
        """``short_sizes``: one or several shorter-side lengths (px); ``max_size``: longer cap."""
        super().__init__(p=p)
        self.short_sizes = [short_sizes] if isinstance(short_sizes, int) else list(short_sizes)
        if not self.short_sizes or min(self.short_sizes) <= 0:
            raise ValueError(f"short_sizes must be positive sizes, got {short_sizes!r}")
        self.max_size = max_size
        self.interpolation = interpolation

    def get_params_dependent_on_data(
        self, params: dict[str, Any], data: dict[str, Any]
    ) -> dict[str, Any]:
        height, width = params["shape"][:2]
        short_size = self.py_random.choice(self.short_sizes)
        return {"out_shape": resized_shape(height, width, short_size, self.max_size)}

    def apply(self, img: np.ndarray, out_shape: tuple[int, int], **params: Any) -> np.ndarray:
        return fgeometric.resize(img, out_shape, interpolation=self.interpolation)

    def apply_to_mask(
        self, mask: np.ndarray, out_shape: tuple[int, int], **params: Any
    ) -> np.ndarray:
        return fgeometric.resize(mask, out_shape, interpolation=cv2.INTER_NEAREST)

    def apply_to_bboxes(self, bboxes: np.ndarray, **params: Any) -> np.ndarray:
        # albumentations keeps boxes normalised to [0, 1] internally: a resize leaves them as is.
        return bboxes

    def apply_to_keypoints(
        self,
        keypoints: np.ndarray,
        out_shape: tuple[int, int],
        shape: tuple[int, ...],
        **params: Any,
    ) -> np.ndarray:
        return fgeometric.keypoints_scale(
            keypoints, out_shape[1] / shape[1], out_shape[0] / shape[0]
        )

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("short_sizes", "max_size", "interpolation")


def build_transforms(
    nodes: Sequence[Mapping[str, Any] | DictConfig | A.BasicTransform],
    train: bool = True,
    seed: int | None = None,
) -> A.Compose:
    """``A.Compose`` of the instantiated ``nodes`` with box handling for detection.

    Boxes are ``pascal_voc`` (xyxy pixels) with label fields ``labels`` and ``iscrowd``; they are
    clipped to the image and dropped (with their labels) when under 1 px wide or high.
    ``nodes`` are Hydra ``_target_`` mappings (or ready transforms). With ``train=False`` every
    transform must be applied with probability 1: a random transform left in an evaluation
    pipeline (a flip with ``p=0.5``) would silently change the measured AP, so it raises.
    ``seed`` seeds the pipeline's own random state (workers reseed it, see data/loader.py).
    """
    transforms = []
    for node in nodes:
        if isinstance(node, A.BasicTransform):
            transform = node
        else:
            if isinstance(node, DictConfig):
                node = OmegaConf.to_container(node, resolve=True)
            if not isinstance(node, Mapping) or "_target_" not in node:
                raise ValueError(f"transform node must be a mapping with a _target_, got {node!r}")
            transform = instantiate(node, _convert_="all")
        if not train and transform.p < 1.0:
            raise ValueError(
                f"evaluation transforms must be deterministic, but {type(transform).__name__} "
                f"is applied with p={transform.p}"
            )
        transforms.append(transform)
    bbox_params = A.BboxParams(
        format="pascal_voc",
        label_fields=LABEL_FIELDS,
        min_width=1.0,
        min_height=1.0,
        clip=True,
        filter_invalid_bboxes=True,
        # Filter once, in the final (model input) pixels; per-step checks cost ~10 % of a resize.
        check_each_transform=False,
    )
    return A.Compose(transforms, bbox_params=bbox_params, seed=seed)
