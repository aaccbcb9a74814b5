"""Anchor labelling: which anchors are foreground (class), background or ignored (§3.3, §4).

Temporary shim with the API of the brief (helper A owns the real module); the body is
``RetinaNetCriterion.label_anchors`` / ``label_batch``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import box_iou

from detector.matcher import Matcher
from losses.labels import BACKGROUND, IGNORE

__all__ = ["BACKGROUND", "IGNORE", "AnchorLabeler"]


class AnchorLabeler:
    """Labels anchors with ``matcher``: a class index, ``BACKGROUND`` or ``IGNORE``."""

    def __init__(self, matcher: Matcher) -> None:
        self.matcher = matcher

    @torch.no_grad()
    def __call__(self, anchors: Tensor, target: dict) -> tuple[Tensor, Tensor]:
        """One image: labels (R,) int64 (class, BACKGROUND or IGNORE) and matched boxes (R, 4)."""
        boxes = target["boxes"].to(anchors.device, torch.float32)
        labels = target["labels"].to(anchors.device)
        num_anchors = anchors.shape[0]
        if boxes.dim() != 2 or boxes.shape[-1] != 4 or labels.shape != boxes.shape[:1]:
            raise ValueError(
                f"AnchorLabeler: image {target.get('image_id', '?')}: boxes must be (M, 4) "
                f"and labels (M,), got {tuple(boxes.shape)} and {tuple(labels.shape)}"
            )
        if boxes.shape[0] == 0:
            return (
                torch.full((num_anchors,), BACKGROUND, dtype=torch.int64, device=anchors.device),
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
        """Labels (N, R) and matched boxes (N, R, 4)."""
        labelled = [self(anchors, t) for t in targets]
        return torch.stack([lab for lab, _ in labelled]), torch.stack([b for _, b in labelled])
