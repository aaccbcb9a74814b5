"""The imbalance dial of the synthetic dataset (issue 13): which classes, how many, how large.

The default dial is the embedded dataset of ``data/synthetic.py``: five classes, each one shape in
one saturated colour. The dial moves the imbalance the focal loss is about while the drawing
stays the same: more real classes (the five shapes in up to 16 colours, 80 classes at most),
classes that exist in the label space but never occur (they add only negative binary terms, the
task is unchanged), larger images (more background anchors) and more objects per image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from data.validate import DatasetError

CLASSES: list[dict[str, Any]] = [
    {"id": 1, "name": "circle", "color": (220, 40, 40)},
    {"id": 2, "name": "square", "color": (40, 90, 230)},
    {"id": 3, "name": "triangle", "color": (40, 180, 60)},
    {"id": 4, "name": "ring", "color": (245, 200, 30)},
    {"id": 5, "name": "cross", "color": (210, 50, 210)},
]
"""COCO categories with their RGB colours; ``cross`` is the rare class."""

CLASS_PROBS = np.array([0.26, 0.24, 0.22, 0.22, 0.06])
"""Frequency of each class among the objects."""

PALETTE: list[tuple[int, int, int]] = [
    *(c["color"] for c in CLASSES),
    (240, 120, 20), (20, 200, 200), (130, 60, 220), (150, 230, 40), (230, 30, 120),
    (30, 140, 140), (250, 150, 150), (120, 40, 30), (30, 40, 140), (200, 230, 120),
    (250, 240, 100),
]  # fmt: skip
"""16 saturated RGB colours; the first five are the default classes' colours."""

COLOR_NAMES = [
    "red", "blue", "green", "yellow", "magenta", "orange", "cyan", "violet", "lime", "pink",
    "teal", "salmon", "maroon", "navy", "pale green", "lemon",
]  # fmt: skip

MAX_CLASSES = len(CLASSES) * len(PALETTE)
BASE_IMAGE_SIZE = 256
"""The longer side of :data:`IMAGE_SHAPES`; ``Dial.image_size`` scales the shapes from it."""

IMAGE_SHAPES = [(192, 256), (224, 224), (256, 192)]
"""Image (h, w) choices: landscape, square, portrait (so aspect grouping has work to do)."""

IMAGE_SHAPE_PROBS = [0.45, 0.35, 0.2]
EMPTY_IMAGE_PROB = 0.12
MAX_OBJECTS = 8


@dataclass(frozen=True)
class Dial:
    """What to draw: the imbalance dial of issue 13 (defaults: the embedded dataset).

    Args:
        num_classes: real classes, 1 to 80: class ``i`` is shape ``i % 5`` in colour
            ``(i % 5 + i // 5) % 16`` of :data:`PALETTE`, so the first five are the default
            classes and every shape gets new colours in turn. A shape's frequency
            (:data:`CLASS_PROBS`) is shared equally by its colours, so the cross stays rare.
        absent_classes: categories listed after the real ones that no object ever has.
        image_size: longer image side in px; the three shapes of :data:`IMAGE_SHAPES` scale
            with it. Objects keep their 12–64 px, so larger images add background anchors.
        max_objects: an image that is not empty holds 1 to ``max_objects`` objects (fewer when
            one cannot be placed without overlap).
    """

    num_classes: int = len(CLASSES)
    absent_classes: int = 0
    image_size: int = BASE_IMAGE_SIZE
    max_objects: int = MAX_OBJECTS

    def __post_init__(self) -> None:
        limits = {
            "num_classes": (1, MAX_CLASSES),
            "absent_classes": (0, None),
            "image_size": (64, None),
            "max_objects": (1, None),
        }
        for name, (low, high) in limits.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise DatasetError(f"synthetic data: {name} must be an integer, got {value!r}")
            if value < low or (high is not None and value > high):
                bound = f"from {low} to {high}" if high is not None else f">= {low}"
                raise DatasetError(f"synthetic data: {name} must be {bound}, got {value}")

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> Dial:
        """A dial from keyword options (``data.generate``), naming an unknown key in one line."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise DatasetError(
                f"synthetic data: unknown option {unknown[0]!r} (choose from {', '.join(known)})"
            )
        return cls(**options)

    def changed(self) -> dict[str, int]:
        """The settings that differ from the defaults (recorded in the manifest)."""
        return {k: v for k, v in asdict(self).items() if v != getattr(DEFAULT_DIAL, k)}

    def classes(self) -> list[dict[str, Any]]:
        """The real classes (K = ``num_classes``) as ``{"id", "name", "shape", "color"}``."""
        result = []
        for i in range(self.num_classes):
            shape, color = i % len(CLASSES), (i % len(CLASSES) + i // len(CLASSES)) % len(PALETTE)
            name = CLASSES[i]["name"] if i < len(CLASSES) else None
            name = name or f"{COLOR_NAMES[color]} {CLASSES[shape]['name']}"
            result.append(
                {
                    "id": i + 1,
                    "name": name,
                    "shape": CLASSES[shape]["name"],
                    "color": PALETTE[color],
                }
            )
        return result

    def class_probs(self) -> np.ndarray:
        """Frequency of each real class among the objects, ``(num_classes,)``."""
        shapes = np.arange(self.num_classes) % len(CLASSES)
        probs = CLASS_PROBS[shapes] / np.bincount(shapes, minlength=len(CLASSES))[shapes]
        return probs / probs.sum()

    def image_shapes(self) -> list[tuple[int, int]]:
        """Image ``(h, w)`` choices at this ``image_size``."""
        scale = self.image_size / BASE_IMAGE_SIZE
        return [(round(h * scale), round(w * scale)) for h, w in IMAGE_SHAPES]

    def categories(self) -> list[dict[str, Any]]:
        """COCO categories: the real classes, then the absent ones (no annotation has them)."""
        real = [
            {"id": c["id"], "name": c["name"], "supercategory": "shape"} for c in self.classes()
        ]
        absent = [
            {"id": self.num_classes + j + 1, "name": f"absent {j}", "supercategory": "absent"}
            for j in range(self.absent_classes)
        ]
        return real + absent


DEFAULT_DIAL = Dial()
