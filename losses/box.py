"""Box regression losses: smooth L1 on encoded deltas (§4 of the paper, as in Fast R-CNN) and GIoU.

Both reuse ``torch``/``torchvision.ops`` kernels and compute in float32 (float64 stays float64),
also under autocast.
"""

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import generalized_box_iou_loss

from losses._args import check_box_shape, check_floating, check_reduction, check_same_shape


class BoxCoderLike(Protocol):
    """What the box losses need of a box coder: ``(P, 4)`` xyxy boxes ↔ ``(P, 4)`` deltas."""

    def encode(self, anchors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor: ...

    def decode(self, anchors: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor: ...


def _at_least_float32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float64 else t.float()


def smooth_l1_loss(
    input: torch.Tensor, target: torch.Tensor, beta: float = 0.1, reduction: str = "sum"
) -> torch.Tensor:
    """Smooth L1: ``0.5 d² / β`` for ``|d| < β``, else ``|d| - 0.5 β``; ``beta=0`` is plain L1.

    Args:
        input: floating-point tensor of any shape ``S`` (e.g. predicted deltas ``(P, 4)``).
        target: floating-point tensor of shape ``S``.
        beta: β >= 0, where the loss changes from quadratic to linear.
        reduction: ``"none"``, ``"sum"`` or ``"mean"``.
    """
    check_reduction(reduction)
    if not beta >= 0.0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    check_floating(input, "input")
    check_floating(target, "target")
    check_same_shape(input, target, ("input", "target"))
    with torch.autocast(input.device.type, enabled=False):
        return F.smooth_l1_loss(
            _at_least_float32(input), _at_least_float32(target), beta=beta, reduction=reduction
        )


def giou_loss(
    pred_boxes: torch.Tensor, gt_boxes: torch.Tensor, reduction: str = "sum"
) -> torch.Tensor:
    """``1 - GIoU`` between paired boxes (``torchvision.ops.generalized_box_iou_loss``).

    Args:
        pred_boxes: ``(P, 4)`` xyxy boxes.
        gt_boxes: ``(P, 4)`` xyxy boxes, paired row by row with ``pred_boxes``.
        reduction: ``"none"`` (``(P,)``), ``"sum"`` or ``"mean"``.
    """
    check_reduction(reduction)
    check_box_shape(pred_boxes, "pred_boxes")
    check_box_shape(gt_boxes, "gt_boxes")
    check_same_shape(pred_boxes, gt_boxes, ("pred_boxes", "gt_boxes"))
    if pred_boxes.shape[0] == 0 and reduction == "sum":
        # torchvision sums an empty tensor correctly but keeps no graph to the input.
        return pred_boxes.sum(dtype=torch.float32) * 0.0
    with torch.autocast(pred_boxes.device.type, enabled=False):
        return generalized_box_iou_loss(
            _at_least_float32(pred_boxes), _at_least_float32(gt_boxes), reduction=reduction
        )


def _check_box_loss_inputs(
    pred_deltas: torch.Tensor, anchors: torch.Tensor, gt_boxes: torch.Tensor
) -> None:
    """The box losses' inputs: ``(P, 4)`` deltas, anchors and boxes of one shape."""
    check_box_shape(pred_deltas, "pred_deltas")
    check_same_shape(anchors, pred_deltas, ("anchors", "pred_deltas"))
    check_same_shape(gt_boxes, pred_deltas, ("gt_boxes", "pred_deltas"))


class SmoothL1BoxLoss(nn.Module):
    """Smooth L1 between predicted deltas and the encoded ground truth, summed."""

    def __init__(self, beta: float = 0.1) -> None:
        """
        Args:
            beta: β of the smooth L1 (0.1 in detectron2's RetinaNet; 0 gives L1).
        """
        super().__init__()
        if not beta >= 0.0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        self.beta = beta

    def forward(
        self,
        pred_deltas: torch.Tensor,
        anchors: torch.Tensor,
        gt_boxes: torch.Tensor,
        box_coder: BoxCoderLike,
    ) -> torch.Tensor:
        """``(P, 4)`` deltas, anchors and matched xyxy boxes of the P positives → scalar sum."""
        _check_box_loss_inputs(pred_deltas, anchors, gt_boxes)
        target_deltas = box_coder.encode(anchors, gt_boxes)
        return smooth_l1_loss(pred_deltas, target_deltas, beta=self.beta, reduction="sum")

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


class GIoUBoxLoss(nn.Module):
    """GIoU loss between decoded predicted boxes and the matched ground truth, summed."""

    def forward(
        self,
        pred_deltas: torch.Tensor,
        anchors: torch.Tensor,
        gt_boxes: torch.Tensor,
        box_coder: BoxCoderLike,
    ) -> torch.Tensor:
        """``(P, 4)`` deltas, anchors and matched xyxy boxes of the P positives → scalar sum."""
        _check_box_loss_inputs(pred_deltas, anchors, gt_boxes)
        pred_boxes = box_coder.decode(anchors, pred_deltas)
        return giou_loss(pred_boxes, gt_boxes, reduction="sum")
