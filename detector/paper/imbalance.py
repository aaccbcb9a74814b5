"""The imbalance meter (issue 13): how much the easy negatives outweigh the positives at the start.

At initialisation every classifier outputs the prior π = 0.01 (§4.1, Initialization), so a
negative binary term costs −ln(1 − π) ≈ 0.01 under cross-entropy and a positive one −ln π ≈ 4.6.
With R anchors of which P are positive and I ignored, and K classes, the loss sums

- P positive terms (the true class of each positive anchor), and
- (R − P − I)·K + P·(K − 1) negative terms: every class of a background anchor, and the K − 1
  other classes of a positive anchor. Ignored anchors count nothing.

The meter's figure is the ratio of the negatives' CE loss to the positives',
``negative_terms · −ln(1 − π) / (P · −ln π)``, and the same ratio with α-balancing
(×(1 − α)/α): the paper's COCO setting puts it in the hundreds (§3.3, "easy negatives ...
overwhelm training"), the CPU demo far lower. :func:`paper_counts` measures the paper's setting
(ResNet-50 anchors on an 800 × 1333 image, 80 classes, COCO's 7.3 boxes per image) on
COCO-like generated boxes.

Symbols: N images, R anchors, K classes, M boxes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from detector.anchors import AnchorGenerator
from detector.labeling import IGNORE, AnchorLabeler

PRIOR = 0.01
"""The classifier's initial probability π (§4.1)."""

PAPER_IMAGE = (800, 1333)
"""The paper's image (h, w) at its main scale (§4.1: shorter side 800, longer at most 1333)."""

PAPER_CLASSES = 80
COCO_BOXES_PER_IMAGE = 7.3
"""Mean annotated objects per COCO image (Lin et al., 2014: 7.3 instances per image)."""

COCO_AREA_BUCKETS = ((0.41, 8.0, 32.0), (0.34, 32.0, 96.0), (0.24, 96.0, 400.0))
"""COCO's object mix (share, sqrt-area range in original pixels): 41 % small (< 32²), 34 % medium,
24 % large (COCO detection evaluation); the side is drawn log-uniformly within a range."""

COCO_RESIZE = 800 / 480
"""A typical 640 × 480 COCO image resized to the shorter side 800."""

COCO_ASPECT_RANGE = (1 / 3, 3.0)
"""Box aspect ratios h / w, drawn log-uniformly (COCO holds people, poles and buses)."""


@dataclass(frozen=True)
class Counts:
    """Anchor counts of one image (or summed over images) and its number of classes K."""

    anchors: float
    positives: float
    ignored: float
    num_classes: int

    @property
    def background(self) -> float:
        """Anchors that are neither positive nor ignored."""
        return self.anchors - self.positives - self.ignored

    @property
    def negative_terms(self) -> float:
        """Negative binary terms: K per background anchor, K − 1 per positive anchor."""
        return self.background * self.num_classes + self.positives * (self.num_classes - 1)

    def __add__(self, other: Counts) -> Counts:
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot add counts for {self.num_classes} and {other.num_classes} K")
        return Counts(
            self.anchors + other.anchors,
            self.positives + other.positives,
            self.ignored + other.ignored,
            self.num_classes,
        )

    def scaled(self, factor: float) -> Counts:
        """These counts times ``factor`` (a sum over N images ÷ N is the mean image)."""
        return Counts(
            self.anchors * factor,
            self.positives * factor,
            self.ignored * factor,
            self.num_classes,
        )


def ce_loss_ratio(counts: Counts, alpha: float | None = None, prior: float = PRIOR) -> float:
    """The negatives' CE loss over the positives' at initialisation (``inf`` without positives).

    ``alpha`` weighs positives by α and negatives by 1 − α (eq. 3), multiplying the ratio by
    (1 − α)/α; ``None`` is plain CE.
    """
    if counts.positives == 0:
        return math.inf
    ratio = counts.negative_terms * -math.log1p(-prior) / (counts.positives * -math.log(prior))
    return ratio if alpha is None else ratio * (1 - alpha) / alpha


def count_labels(labels: Tensor, num_classes: int) -> Counts:
    """Counts of one image's anchor labels (R,) (class, ``BACKGROUND`` or ``IGNORE``)."""
    return Counts(
        anchors=labels.numel(),
        positives=int((labels >= 0).sum()),
        ignored=int((labels == IGNORE).sum()),
        num_classes=num_classes,
    )


def image_anchors(
    generator: AnchorGenerator, size_divisibility: int, height: int, width: int
) -> Tensor:
    """Anchors (R, 4) of an ``height × width`` image alone, padded as the model pads it."""
    pad_h = -(-height // size_divisibility) * size_divisibility
    pad_w = -(-width // size_divisibility) * size_divisibility
    shapes = [(-(-pad_h // s), -(-pad_w // s)) for s in generator.strides]
    return generator(shapes)


def measure(
    samples: Iterable[tuple[tuple[int, int], dict]],
    labeler: AnchorLabeler,
    generator: AnchorGenerator,
    size_divisibility: int,
    num_classes: int,
) -> list[Counts]:
    """Counts of each image; ``samples`` yields ``((h, w), target)``, target boxes (M, 4) and
    labels (M,)."""
    counts = []
    for (height, width), target in samples:
        anchors = image_anchors(generator, size_divisibility, height, width)
        labels, _ = labeler(anchors, target)
        counts.append(count_labels(labels, num_classes))
    return counts


def coco_like_boxes(rng: np.random.Generator, count: int, height: int, width: int) -> Tensor:
    """``count`` boxes (M, 4) xyxy inside an image, sized as :data:`COCO_AREA_BUCKETS` says."""
    shares = np.array([b[0] for b in COCO_AREA_BUCKETS])
    bucket = rng.choice(len(COCO_AREA_BUCKETS), size=count, p=shares / shares.sum())
    low = np.log([COCO_AREA_BUCKETS[b][1] for b in bucket])
    high = np.log([COCO_AREA_BUCKETS[b][2] for b in bucket])
    side = np.exp(rng.uniform(low, high)) * COCO_RESIZE
    aspect = np.exp(rng.uniform(*np.log(COCO_ASPECT_RANGE), size=count))
    box_h = np.minimum(side * np.sqrt(aspect), height)
    box_w = np.minimum(side / np.sqrt(aspect), width)
    x1 = rng.uniform(0, width - box_w)
    y1 = rng.uniform(0, height - box_h)
    boxes = np.stack([x1, y1, x1 + box_w, y1 + box_h], axis=1)
    return torch.as_tensor(boxes, dtype=torch.float32)


def paper_counts(
    labeler: AnchorLabeler,
    generator: AnchorGenerator,
    size_divisibility: int = 128,
    images: int = 100,
    seed: int = 0,
) -> Counts:
    """Mean counts of an image of the paper's setting: COCO-like boxes, 7.3 per image on average
    (image ``i`` holds 8 boxes for 3 in every 10, else 7), labelled on an 800 × 1333 image."""
    rng = np.random.default_rng(seed)
    height, width = PAPER_IMAGE

    def samples() -> Iterable[tuple[tuple[int, int], dict]]:
        for index in range(images):
            count = 8 if index % 10 < 3 else 7
            boxes = coco_like_boxes(rng, count, height, width)
            yield (height, width), {"boxes": boxes, "labels": torch.zeros(count, dtype=torch.int64)}

    total = sum_counts(measure(samples(), labeler, generator, size_divisibility, PAPER_CLASSES))
    return total.scaled(1 / images)


def sum_counts(counts: Sequence[Counts]) -> Counts:
    """The counts of several images summed (one K)."""
    if not counts:
        raise ValueError("no images to count")
    total = counts[0]
    for item in counts[1:]:
        total = total + item
    return total


def format_row(name: str, counts: Counts, alpha: float | None) -> str:
    """One table row: positives, negative terms, and the CE loss ratio without and with α."""
    with_alpha = "n/a" if alpha is None else f"{ce_loss_ratio(counts, alpha):,.1f}"
    return (
        f"{name:>14} {counts.positives:>10,.1f} {counts.negative_terms:>14,.0f} "
        f"{ce_loss_ratio(counts):>10,.1f} {with_alpha:>12}"
    )


def format_report(
    per_image: Sequence[Counts],
    paper: Counts,
    alpha: float | None,
    paper_boxes_per_image: float = COCO_BOXES_PER_IMAGE,
) -> str:
    """The meter's table: each image, the total and the mean image, then the paper's mean image."""
    header = (
        f"{'image':>14} {'positives':>10} {'neg. terms':>14} {'CE ratio':>10} "
        f"{'× (1-α)/α':>12}   (α = {alpha}, π = {PRIOR})"
    )
    total = sum_counts(per_image)
    lines = [header]
    lines += [format_row(str(i), c, alpha) for i, c in enumerate(per_image)]
    lines.append(format_row("total", total, alpha))
    lines.append(format_row("mean image", total.scaled(1 / len(per_image)), alpha))
    lines.append(format_row("paper (mean)", paper, alpha))
    ratio = ce_loss_ratio(total) / ce_loss_ratio(paper)
    lines.append(
        f"paper: {paper.anchors:,.0f} anchors (R50, {PAPER_IMAGE[0]}×{PAPER_IMAGE[1]}), "
        f"{PAPER_CLASSES} classes, {paper_boxes_per_image} COCO-like boxes per image, "
        f"{paper.positives / paper_boxes_per_image:.1f} positive anchors per box"
    )
    lines.append(f"this data's CE ratio is {ratio:.3g} × the paper's")
    return "\n".join(lines)
