"""Anchor labelling: each anchor's class, ``BACKGROUND`` or ``IGNORE``, and its matched box.

The matcher assigns anchors to boxes by IoU (Lin et al., 2017, §4 "Anchors"); the labeler adds
what the matcher does not know about: crowd boxes (COCO's ``iscrowd``), which never match and
make the anchors that overlap them ignored, and images without boxes. The criterion, OHEM and the
Figure 4 analysis all label anchors through this one object.

The labels it produces are valid by construction: a target class (checked at the data boundary),
``BACKGROUND`` or ``IGNORE``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torchvision.ops import box_iou

if TYPE_CHECKING:  # matcher.py imports the sentinels from here
    from detector.matcher import Matcher

IGNORE = -1
"""Anchor between the background and foreground IoU thresholds (or on a crowd region): no loss."""

BACKGROUND = -2
"""Negative anchor: every class target is 0."""


class AnchorLabeler:
    """Labels of the R anchors of an image from its target boxes.

    Args:
        matcher: assigns anchors to boxes by IoU; its ``bg_iou_thresh`` also bounds the crowd
            regions (an anchor with IoU ≥ it with a crowd box and no foreground match is ignored).

    Labelling runs under ``no_grad`` and has no data-dependent shapes, so it never waits on the
    device.
    """

    def __init__(self, matcher: Matcher) -> None:
        self.matcher = matcher

    @torch.no_grad()
    def __call__(self, anchors: Tensor, target: dict) -> tuple[Tensor, Tensor]:
        """One image: labels (R,) int64 (class, ``BACKGROUND`` or ``IGNORE``) and matched boxes
        (R, 4) float32 (a foreground anchor's box; any box, or zeros, elsewhere).

        ``target`` holds ``boxes`` (M, 4) xyxy, ``labels`` (M,) classes in ``0..K-1`` and
        optionally ``iscrowd`` (M,) and ``image_id`` (named in errors). Crowd boxes never match;
        anchors overlapping one with IoU ≥ the matcher's background threshold that are not
        foreground are ``IGNORE``. An image without boxes is all background.
        """
        boxes = target["boxes"].to(anchors.device, torch.float32)
        labels = target["labels"].to(anchors.device)
        if boxes.dim() != 2 or boxes.shape[-1] != 4 or labels.shape != boxes.shape[:1]:
            raise ValueError(
                f"AnchorLabeler: image {target.get('image_id', '?')}: boxes must be (M, 4) "
                f"and labels (M,), got {tuple(boxes.shape)} and {tuple(labels.shape)}"
            )
        if boxes.shape[0] == 0:
            return (
                torch.full(
                    (anchors.shape[0],), BACKGROUND, dtype=torch.int64, device=anchors.device
                ),
                torch.zeros_like(anchors),
            )
        crowd = target.get("iscrowd")
        crowd = (
            torch.zeros_like(labels, dtype=torch.bool)
            if crowd is None
            else crowd.to(anchors.device, torch.bool)
        )
        iou = box_iou(boxes, anchors)
        matched = self.matcher(iou.masked_fill(crowd[:, None], -1.0))
        index = matched.clamp(min=0)
        anchor_labels = torch.where(matched >= 0, labels[index], matched)
        crowd_iou = iou.masked_fill(~crowd[:, None], 0.0).amax(dim=0)
        on_crowd = (crowd_iou >= self.matcher.bg_iou_thresh) & (matched < 0)
        anchor_labels = torch.where(on_crowd, IGNORE, anchor_labels)
        return anchor_labels, boxes[index]

    def label_batch(self, anchors: Tensor, targets: Sequence[dict]) -> tuple[Tensor, Tensor]:
        """Labels (N, R) int64 and matched boxes (N, R, 4) of the N images' ``targets`` for the
        ``anchors`` (R, 4) they share."""
        labelled = [self(anchors, t) for t in targets]
        if not labelled:
            return (
                torch.zeros((0, anchors.shape[0]), dtype=torch.int64, device=anchors.device),
                anchors.new_zeros((0, *anchors.shape), dtype=torch.float32),
            )
        labels = torch.stack([lab for lab, _ in labelled])
        matched_boxes = torch.stack([b for _, b in labelled])
        return labels, matched_boxes

    def __repr__(self) -> str:
        return f"AnchorLabeler({self.matcher!r})"
