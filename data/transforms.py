"""Box-aware augmentation pipelines (albumentations 2.x) built from ``_target_`` nodes.

A pipeline is a list of nodes such as::

    - _target_: data.transforms.ResizeShortestEdge
      short_sizes: [640, 672, 704, 736, 768, 800]
      max_size: 1333
    - _target_: albumentations.HorizontalFlip
      p: 0.5

:func:`build_transforms` builds them (allow-listed targets only, detector/safe_config.py) inside
an ``A.Compose`` whose boxes are ``pascal_voc`` (xyxy pixels) with ``labels`` and ``iscrowd`` as
label fields, so a box that leaves the image is clipped, or dropped together with its label and
crowd flag. Its box processor is
:class:`DetectionBboxProcessor`, albumentations' own logic in a few array operations.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
import torch.nn.functional as F
from albumentations.augmentations.geometric import functional as fgeometric
from albumentations.core.bbox_utils import BboxProcessor
from albumentations.core.utils import get_shape
from omegaconf import DictConfig, OmegaConf
from pydantic import Field

from detector.safe_config import Allowlist, build_config, names_of

LABEL_FIELDS = ["labels", "iscrowd"]
"""Per-box arrays that travel with the boxes through every transform."""

MIN_BOX_SIZE = 1.0
"""Boxes narrower or lower than this (px) after the last transform are dropped with their labels."""

_EPS = 1e-7
"""albumentations' tolerance in ``filter_bboxes``, kept so both processors drop the same boxes."""


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
        if out_shape == img.shape[:2]:
            return img
        if img.ndim != 3 or img.shape[2] != 3:  # (H, W), (H, W, 1), > 4 channels: keep the shape
            return fgeometric.resize(img, out_shape, interpolation=self.interpolation)
        return cv2.resize(img, out_shape[::-1], interpolation=self.interpolation)

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


class TorchvisionResize(ResizeShortestEdge):
    """torchvision's detection resize (``GeneralizedRCNNTransform``), reproduced exactly.

    The scale is ``min(min_size / shorter side, max_size / longer side)`` and the output size
    ``floor(side * scale)`` (:class:`ResizeShortestEdge` rounds); the image is converted to float
    in ``[0, 1]`` first and resized by ``torch.nn.functional.interpolate`` (bilinear, no
    antialiasing, ``recompute_scale_factor=True``), as torchvision does, and stays float32: no
    rounding back to uint8, which alone moves a detector's scores in the third decimal. A model
    converted from torchvision (detector/torchvision_convert.py) detects what torchvision detects
    only behind this resize. torchvision normalises before resizing and focaldet after; bilinear
    weights sum to one, so the two orders agree to float rounding (~1e-7).
    """

    class InitSchema(A.core.transforms_interface.BaseTransformInitSchema):
        min_size: int = Field(gt=0)
        max_size: int = Field(gt=0)

    def __init__(self, min_size: int = 800, max_size: int = 1333, p: float = 1.0) -> None:
        """``min_size``: target shorter side (px); ``max_size``: cap on the longer side (px)."""
        super().__init__(short_sizes=min_size, max_size=max_size, p=p)
        self.min_size = min_size

    def scale(self, height: int, width: int) -> float:
        """torchvision's scale factor for an image of ``height`` × ``width``."""
        return min(self.min_size / min(height, width), self.max_size / max(height, width))

    def get_params_dependent_on_data(
        self, params: dict[str, Any], data: dict[str, Any]
    ) -> dict[str, Any]:
        height, width = params["shape"][:2]
        scale = self.scale(height, width)
        # F.interpolate's output size for a scale factor: floor(size * scale), in double.
        out_shape = (math.floor(height * scale), math.floor(width * scale))
        return {"out_shape": out_shape, "scale": scale}

    def apply(
        self, img: np.ndarray, out_shape: tuple[int, int], scale: float, **params: Any
    ) -> np.ndarray:
        """(H, W, C) uint8 or float in [0, 1] → (h, w, C) float32 in [0, 1]."""
        tensor = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
        tensor = tensor.float() / 255.0 if img.dtype == np.uint8 else tensor.float()
        resized = F.interpolate(
            tensor[None],
            scale_factor=scale,
            mode="bilinear",
            recompute_scale_factor=True,
            align_corners=False,
        )[0]
        return resized.permute(1, 2, 0).numpy()

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("min_size", "max_size")


class DetectionBboxProcessor(BboxProcessor):
    """albumentations' box processor for the box setup of :func:`build_transforms`, vectorised.

    Same result as the stock ``BboxProcessor`` with ``pascal_voc`` boxes, ``clip=True``,
    ``filter_invalid_bboxes=True`` and ``min_width = min_height =`` :data:`MIN_BOX_SIZE`. Before
    the transforms, ``bboxes`` ``(M, 4)`` xyxy pixels become ``(M', 4 + F)``: normalised to the
    input image, clipped to ``[0, 1]``, boxes left without area dropped, the F label fields
    appended as columns (what every albumentations transform expects). After them, boxes are
    clipped to the output image, dropped under :data:`MIN_BOX_SIZE` px, and returned as float64
    ``(M'', 4)`` pixels with each label field split off again in its input dtype.

    The stock processor spends about 0.5 ms a call on repeated validity checks and clips and on
    a label encoder for the boolean ``iscrowd`` (``bool`` is not a NumPy number to it), a fifth
    of decoding and resizing a photo (docs/benchmarks.md). Inputs off this path (lists,
    non-numeric labels, extra box targets) take the stock code.
    """

    def __init__(self, params: A.BboxParams) -> None:
        super().__init__(params)
        self._label_dtypes: list[np.dtype] | None = None

    def _takes_fast_path(self, data: dict[str, Any]) -> bool:
        boxes = data.get("bboxes")
        return (
            len(self.data_fields) == 1
            and isinstance(boxes, np.ndarray)
            and boxes.ndim == 2
            and boxes.shape[1] == 4
            and all(
                isinstance(data.get(field), np.ndarray) and data[field].dtype.kind in "biuf"
                for field in self.params.label_fields
            )
        )

    def preprocess(self, data: dict[str, Any]) -> None:
        """Pixel xyxy boxes → normalised, clipped, empty ones dropped, label fields as columns."""
        self._label_dtypes = None
        if not self._takes_fast_path(data):
            super().preprocess(data)
            return
        boxes, fields = data["bboxes"], self.params.label_fields
        for field in fields:
            if len(data[field]) != len(boxes):
                raise ValueError(
                    f"The lengths of bboxes and {field} do not match. "
                    f"Got {len(boxes)} and {len(data[field])} respectively."
                )
        shape = get_shape(data)
        scale = np.array([shape["width"], shape["height"]] * 2, np.float64)
        packed = np.empty((len(boxes), 4 + len(fields)), np.float64)
        np.divide(boxes, scale, out=packed[:, :4])
        np.clip(packed[:, :4], 0.0, 1.0, out=packed[:, :4])
        self._label_dtypes = []
        for column, field in enumerate(fields, start=4):
            labels = data.pop(field)
            self._label_dtypes.append(labels.dtype)
            packed[:, column] = labels
        sizes = (packed[:, 2:4] - packed[:, :2]) * scale[:2]
        keep = (sizes.prod(axis=1) >= _EPS) & (sizes >= -_EPS).all(axis=1)
        data["bboxes"] = packed[keep]

    def postprocess(self, data: dict[str, Any]) -> dict[str, Any]:
        """Clip to the output image, drop boxes under the minimum size, back to pixels."""
        if self._label_dtypes is None:
            return super().postprocess(data)
        packed = data["bboxes"]
        shape = get_shape(data)
        scale = np.array([shape["width"], shape["height"]] * 2, np.float64)
        pixels = packed[:, :4] * scale
        # Area before clipping must be positive (albumentations' filter_bboxes), size after ≥ min.
        area = (pixels[:, 2] - pixels[:, 0]) * (pixels[:, 3] - pixels[:, 1])
        np.clip(pixels, 0.0, scale, out=pixels)
        sizes = pixels[:, 2:4] - pixels[:, :2]
        min_size = np.array([self.params.min_width, self.params.min_height])
        keep = (area >= _EPS) & (sizes >= min_size - _EPS).all(axis=1)
        data["bboxes"] = pixels[keep]
        kept = packed[keep]
        for column, (field, dtype) in enumerate(
            zip(self.params.label_fields, self._label_dtypes, strict=True), start=4
        ):
            data[field] = kept[:, column].astype(dtype)
        return data


TRANSFORM_TARGETS = Allowlist(
    "data.transforms classes and albumentations transforms",
    names_of("data.transforms", ResizeShortestEdge, TorchvisionResize),
    package="albumentations",
    package_bases=(A.BasicTransform, A.BaseCompose),
    # Lambda's arguments are functions: code by definition, never built from a file.
    denied=(A.Lambda,),
)
"""What a transform pipeline may name: focaldet's own transforms and albumentations' transforms
and composes (``albumentations.HorizontalFlip``, ``albumentations.OneOf``...)."""


def build_transforms(
    nodes: Sequence[Mapping[str, Any] | DictConfig | A.BasicTransform],
    train: bool = True,
    seed: int | None = None,
    where: str = "transforms",
) -> A.Compose:
    """``A.Compose`` of the instantiated ``nodes`` with box handling for detection.

    Boxes are ``pascal_voc`` (xyxy pixels) with label fields ``labels`` and ``iscrowd``; they are
    clipped to the image and dropped (with their labels) when under 1 px wide or high.
    ``nodes`` are ``_target_`` mappings (or ready transforms) naming only
    :data:`TRANSFORM_TARGETS` (a pipeline read from a checkpoint cannot run code; ``where`` names
    the list in the error, e.g. ``config.data.val.transforms``). With ``train=False`` every
    transform must be applied with probability 1: a random transform left in an evaluation
    pipeline (a flip with ``p=0.5``) would silently change the measured AP, so it raises.
    ``seed`` seeds the pipeline's own random state; the training loader reseeds it for every
    sample with :func:`reseed` (data/loader.py).
    """
    transforms = []
    for index, node in enumerate(nodes):
        if isinstance(node, A.BasicTransform):
            transform = node
        else:
            if isinstance(node, DictConfig):
                node = OmegaConf.to_container(node, resolve=True)
            if not isinstance(node, Mapping) or "_target_" not in node:
                raise ValueError(f"transform node must be a mapping with a _target_, got {node!r}")
            transform = build_config(node, TRANSFORM_TARGETS, f"{where}[{index}]")
        if not train and transform.p < 1.0:
            raise ValueError(
                f"evaluation transforms must be deterministic, but {type(transform).__name__} "
                f"is applied with p={transform.p}"
            )
        transforms.append(transform)
    bbox_params = A.BboxParams(
        format="pascal_voc",
        label_fields=LABEL_FIELDS,
        min_width=MIN_BOX_SIZE,
        min_height=MIN_BOX_SIZE,
        clip=True,
        filter_invalid_bboxes=True,
        # Filter once, in the final (model input) pixels; per-step checks cost ~10 % of a resize.
        check_each_transform=False,
    )
    compose = A.Compose(transforms, bbox_params=bbox_params, seed=seed)
    # Nested composes share this dict, so replacing the entry reaches them too.
    compose.processors["bboxes"] = DetectionBboxProcessor(bbox_params)
    return compose


def reseed(transforms: A.BaseCompose, seed: int, position: int) -> None:
    """Give ``transforms`` (and every transform inside it) generators drawn from ``(seed,
    position)`` only, so that one sample's augmentation does not depend on what came before it.

    albumentations 2.x draws from the pipeline's own NumPy and Python generators, never the global
    ones; they are replaced, not reseeded in place, and shared by all the transforms (seeding each
    with the same number, as ``set_random_seed`` does, would tie their draws together: a flip
    decided by the same first number as the scale). The seed is mixed by NumPy's
    ``SeedSequence``, so nearby positions get unrelated streams.
    """
    # SeedSequence takes non-negative entropy; a negative seed maps to its 64-bit pattern.
    numpy_seq, python_seq = np.random.SeedSequence([seed % 2**64, position]).spawn(2)
    python_seed = int.from_bytes(python_seq.generate_state(4).tobytes(), "little")
    transforms.set_random_state(np.random.default_rng(numpy_seq), random.Random(python_seed))
