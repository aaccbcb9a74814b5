"""Anchor generation for the P3–P7 pyramid (Lin et al., 2017, §4 "Anchors").

Each level ``l`` carries ``A = len(scales) * len(ratios)`` anchors per location, centred on the
top-left corner of every stride cell exactly as torchvision's ``AnchorGenerator`` does, so a
torchvision RetinaNet checkpoint sees the anchors it was trained with.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from numbers import Real

import torch
from torch import Tensor

DEFAULT_SIZES = (32, 64, 128, 256, 512)
DEFAULT_STRIDES = (8, 16, 32, 64, 128)
# Three octave scales 2^0, 2^(1/3), 2^(2/3) and three aspect ratios 1:2, 1:1, 2:1 (§4, Table 1c).
DEFAULT_SCALES = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
DEFAULT_RATIOS = (0.5, 1.0, 2.0)

_CACHE_ENTRIES = 16
"""Feature-map shape sets remembered per generator (multi-scale training visits a few)."""


class AnchorGenerator:
    """Anchors for every location of every pyramid level, in the order torchvision uses.

    Args:
        sizes: one entry per level. A number is the level's base size, multiplied by each of
            ``scales``; a sequence is the level's explicit anchor sizes (``scales`` is then not
            applied), which reproduces torchvision's ``retinanet_resnet50_fpn`` whose sizes
            ``int(32 * 2 ** (1 / 3)) = 40`` etc. are truncated to integers.
        strides: the stride in input pixels of each level (P3–P7: 8 … 128).
        scales: octave scales applied to numeric ``sizes``.
        ratios: aspect ratios ``h / w``.
        strides_from_image: take each level's stride from the padded input instead, per axis
            ``input size // feature map size`` (torchvision's ``AnchorGenerator`` rule). It equals
            ``strides`` when the input is a multiple of the largest stride; on an input padded
            to 32 only (torchvision's ``size_divisible``), P6 and P7 get other strides
            (800 // 13 = 61, not 64), and a converted torchvision model needs the same anchors.

    Base anchors are ``(-w/2, -h/2, w/2, h/2)`` rounded to integers, with ``w = s / sqrt(r)`` and
    ``h = s * sqrt(r)``, ordered ratio-major (index ``ratio * S + scale``) as torchvision. The
    anchors of a level are ``base + (x * stride, y * stride)`` for the top-left corner ``(x, y)``
    of each cell, ordered ``(y, x, a)``.
    """

    def __init__(
        self,
        sizes: Sequence[float | Sequence[float]] = DEFAULT_SIZES,
        strides: Sequence[int] = DEFAULT_STRIDES,
        scales: Sequence[float] = DEFAULT_SCALES,
        ratios: Sequence[float] = DEFAULT_RATIOS,
        strides_from_image: bool = False,
    ) -> None:
        if len(sizes) != len(strides):
            raise ValueError(
                f"AnchorGenerator: {len(sizes)} sizes for {len(strides)} strides; one per level"
            )
        self.strides = [int(s) for s in strides]
        self.strides_from_image = bool(strides_from_image)
        self.ratios = [float(r) for r in ratios]
        self.level_sizes: list[list[float]] = []
        for size in sizes:
            if isinstance(size, Real):
                self.level_sizes.append([float(size) * float(s) for s in scales])
            else:
                self.level_sizes.append([float(s) for s in size])
        counts = {len(s) for s in self.level_sizes}
        if len(counts) != 1 or not self.ratios:
            raise ValueError(
                "AnchorGenerator: every level needs the same, non-zero number of sizes and a "
                f"ratio; got sizes {self.level_sizes} and ratios {self.ratios}"
            )
        if any(s <= 0 for level in self.level_sizes for s in level) or any(
            r <= 0 for r in self.ratios
        ):
            raise ValueError("AnchorGenerator: sizes and ratios must be positive")
        self.cell_anchors = [self._base_anchors(s) for s in self.level_sizes]
        self._cache: OrderedDict[tuple, tuple[Tensor, list[int]]] = OrderedDict()

    @property
    def num_anchors_per_location(self) -> int:
        """A: anchors at each location of a level."""
        return len(self.level_sizes[0]) * len(self.ratios)

    @property
    def num_levels(self) -> int:
        """L: pyramid levels."""
        return len(self.strides)

    def _base_anchors(self, sizes: list[float]) -> Tensor:
        """Zero-centred anchors (A, 4) of one level, computed in float32 like torchvision."""
        scales = torch.as_tensor(sizes, dtype=torch.float32)
        ratios = torch.as_tensor(self.ratios, dtype=torch.float32)
        h_ratios = torch.sqrt(ratios)
        w_ratios = 1 / h_ratios
        ws = (w_ratios[:, None] * scales[None, :]).view(-1)
        hs = (h_ratios[:, None] * scales[None, :]).view(-1)
        return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()

    def level_strides(
        self, feature_shapes: Sequence[tuple[int, int]], image_shape: tuple[int, int] | None
    ) -> list[tuple[int, int]]:
        """``(stride_y, stride_x)`` of each level: ``strides``, or with ``strides_from_image``
        the padded input's ``image_shape`` ``(H, W)`` floor-divided by each level's size."""
        if not self.strides_from_image or image_shape is None:
            return [(s, s) for s in self.strides]
        # No int(): under torch.export the sizes are symbolic and must stay so.
        return [(image_shape[0] // h, image_shape[1] // w) for h, w in feature_shapes]

    def grid_anchors(
        self,
        feature_shapes: Sequence[tuple[int, int]],
        device: torch.device,
        strides: Sequence[tuple[int, int]] | None = None,
    ) -> list[Tensor]:
        """Per-level anchors, a list of L tensors (H_l * W_l * A, 4) in float32; ``strides``:
        ``(stride_y, stride_x)`` per level (default: ``self.strides``)."""
        if len(feature_shapes) != self.num_levels:
            raise ValueError(
                f"AnchorGenerator: {len(feature_shapes)} feature maps for {self.num_levels} levels"
            )
        strides = strides or self.level_strides(feature_shapes, None)
        anchors = []
        for (height, width), (stride_y, stride_x), base in zip(
            feature_shapes, strides, self.cell_anchors, strict=True
        ):
            shifts_x = torch.arange(width, dtype=torch.int32, device=device) * stride_x
            shifts_y = torch.arange(height, dtype=torch.int32, device=device) * stride_y
            shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
            shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
            level = shifts.view(-1, 1, 4) + base.to(device).view(1, -1, 4)
            anchors.append(level.reshape(-1, 4))
        return anchors

    def __call__(
        self, feature_shapes: Sequence[tuple[int, int]], device: torch.device | str = "cpu"
    ) -> Tensor:
        """All anchors (R, 4) xyxy in float32, levels concatenated; cached per shapes and device."""
        return self.anchors_and_counts(feature_shapes, device)[0]

    def anchors_and_counts(
        self,
        feature_shapes: Sequence[tuple[int, int]],
        device: torch.device | str = "cpu",
        image_shape: tuple[int, int] | None = None,
    ) -> tuple[Tensor, list[int]]:
        """Anchors (R, 4) and the number of anchors of each level (L ints), cached.
        ``image_shape``: the padded input's ``(H, W)``, used with ``strides_from_image``."""
        device = torch.device(device)
        shapes = tuple((int(h), int(w)) for h, w in feature_shapes)
        strides = tuple(self.level_strides(shapes, image_shape))
        key = (shapes, strides, device)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        levels = self.grid_anchors(shapes, device, strides)
        entry = (torch.cat(levels), [len(a) for a in levels])
        self._cache[key] = entry
        if len(self._cache) > _CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return entry

    def __repr__(self) -> str:
        return (
            f"AnchorGenerator(sizes={self.level_sizes}, strides={self.strides}, "
            f"ratios={self.ratios})"
        )


def torchvision_anchor_sizes() -> list[list[int]]:
    """The per-level sizes of torchvision's ``retinanet_resnet50_fpn`` (truncated to integers)."""
    return [[x, int(x * 2 ** (1.0 / 3)), int(x * 2 ** (2.0 / 3))] for x in DEFAULT_SIZES]
