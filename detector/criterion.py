"""RetinaNet training loss: anchor labelling per image, then one classification and one box loss
over the whole batch, normalised by the number of positive anchors (Lin et al., 2017, §3.3, §4.1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torchvision.ops import box_iou

from data.ranks import rank_and_world_size
from detector.box_coder import BoxCoder
from detector.matcher import Matcher
from detector.retinanet import DenseOutputs
from losses.labels import BACKGROUND, IGNORE

INITIAL_NORMALIZER = 100.0
"""Starting value of the EMA normaliser (detectron2's ``loss_normalizer``)."""


def mean_over_processes(count: Tensor) -> Tensor:
    """``count`` averaged over DDP processes (itself without DDP), at least 1."""
    _, world_size = rank_and_world_size()
    if world_size > 1:
        count = count.clone()
        dist.all_reduce(count)
        count = count / world_size
    return count.clamp(min=1.0)


class RetinaNetCriterion(nn.Module):
    """Named losses ``{"loss_cls", "loss_box"}`` for ``DenseOutputs`` and per-image targets.

    Args:
        box_coder: encodes regression targets (smooth L1) or decodes predictions (GIoU).
        matcher: assigns anchors to boxes by IoU.
        cls_loss: ``forward(logits (M, K), labels (M,)) -> sum`` over integer labels with
            ``BACKGROUND``/``IGNORE`` (``losses.FocalLoss``; CE is ``FocalLoss(gamma=0)``).
        box_loss: ``forward(pred_deltas (P, 4), anchors (P, 4), gt_boxes (P, 4), box_coder) -> sum``
            (``losses.SmoothL1BoxLoss`` or ``losses.GIoUBoxLoss``).
        normalizer_momentum: ``None`` normalises by this batch's positive count; a value in
            [0, 1) by an exponential moving average of it (detectron2), which is steadier when a
            batch holds few boxes.

    The focal loss is summed over all anchors and divided by the number of anchors assigned to a
    box (§3.3: "normalized by the number of anchors assigned to a ground-truth box", since the
    easy negatives contribute little). The count is taken over the whole batch and averaged over
    processes, so every image and every process weighs each positive anchor the same; it is
    clamped to at least 1. Labelling runs under ``no_grad`` and has no data-dependent shapes; the
    only device sync is the gather of positive anchors for the box loss.
    """

    def __init__(
        self,
        box_coder: BoxCoder,
        matcher: Matcher,
        cls_loss: nn.Module,
        box_loss: nn.Module,
        normalizer_momentum: float | None = None,
    ) -> None:
        super().__init__()
        if normalizer_momentum is not None and not 0.0 <= normalizer_momentum < 1.0:
            raise ValueError(
                f"RetinaNetCriterion: normalizer_momentum must be in [0, 1) or None, "
                f"got {normalizer_momentum}"
            )
        self.box_coder = box_coder
        self.matcher = matcher
        self.cls_loss = cls_loss
        self.box_loss = box_loss
        self.normalizer_momentum = normalizer_momentum
        self.register_buffer("loss_normalizer", torch.tensor(INITIAL_NORMALIZER))

    @torch.no_grad()
    def label_anchors(self, anchors: Tensor, target: dict) -> tuple[Tensor, Tensor]:
        """Labels (R,) int64 (class, ``BACKGROUND`` or ``IGNORE``) and matched boxes (R, 4).

        Crowd boxes never match; anchors overlapping one with IoU ≥ the matcher's background
        threshold that are not foreground are ``IGNORE``. An image without boxes is all
        background.
        """
        boxes = target["boxes"].to(anchors.device, torch.float32)
        labels = target["labels"].to(anchors.device)
        num_anchors = anchors.shape[0]
        if boxes.dim() != 2 or boxes.shape[-1] != 4 or labels.shape != boxes.shape[:1]:
            raise ValueError(
                f"RetinaNetCriterion: image {target.get('image_id', '?')}: boxes must be (M, 4) "
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

    def label_batch(self, outputs: DenseOutputs, targets: Sequence[dict]) -> tuple[Tensor, Tensor]:
        """Labels (N, R) int64 and matched boxes (N, R, 4): ``label_anchors`` of every image."""
        if len(targets) != outputs.cls_logits.shape[0]:
            raise ValueError(
                f"{type(self).__name__}: {len(targets)} targets for "
                f"{outputs.cls_logits.shape[0]} images"
            )
        labelled = [self.label_anchors(outputs.anchors, t) for t in targets]
        labels = torch.stack([lab for lab, _ in labelled])
        matched_boxes = torch.stack([b for _, b in labelled])
        return labels, matched_boxes

    def box_loss_sum(self, outputs: DenseOutputs, labels: Tensor, matched_boxes: Tensor) -> Tensor:
        """The box loss summed over the positive anchors of ``labels`` (N, R), not normalised."""
        positive = labels >= 0
        return self.box_loss(
            outputs.box_deltas[positive].float(),
            outputs.anchors.expand_as(matched_boxes)[positive],
            matched_boxes[positive],
            self.box_coder,
        )

    def _normalizer(self, num_pos: Tensor) -> Tensor:
        num_pos = mean_over_processes(num_pos)
        if self.normalizer_momentum is None:
            return num_pos
        m = self.normalizer_momentum
        normalizer = m * self.loss_normalizer + (1 - m) * num_pos
        if self.training:
            self.loss_normalizer.copy_(normalizer)
        return normalizer

    def forward(self, outputs: DenseOutputs, targets: Sequence[dict]) -> dict[str, Tensor]:
        """``{"loss_cls": scalar, "loss_box": scalar}``, each a sum divided by the normaliser."""
        labels, matched_boxes = self.label_batch(outputs, targets)
        normalizer = self._normalizer((labels >= 0).sum().float())

        num_classes = outputs.cls_logits.shape[-1]
        # IGNORE anchors are passed along and contribute exactly nothing, which spares a gather.
        loss_cls = self.cls_loss(
            outputs.cls_logits.reshape(-1, num_classes).float(), labels.reshape(-1)
        )
        loss_box = self.box_loss_sum(outputs, labels, matched_boxes)
        return {"loss_cls": loss_cls / normalizer, "loss_box": loss_box / normalizer}
