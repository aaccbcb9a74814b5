"""Box coding between anchors and boxes as (dx, dy, dw, dh) (Lin et al., 2017, §4; R-CNN's
parameterisation), always in float32."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

BBOX_XFORM_CLAMP = math.log(1000.0 / 16)
"""Upper bound on decoded dw, dh: a box at most 1000/16 times its anchor's size (Detectron)."""


class BoxCoder:
    """Encode boxes relative to anchors and decode deltas back, in float32.

    Args:
        weights: ``(wx, wy, ww, wh)``; deltas are ``(wx * dx, wy * dy, ww * dw, wh * dh)``.
            RetinaNet uses ``(1, 1, 1, 1)``.
        clamp: the largest ``dw``/``dh`` accepted by ``decode`` (avoids ``exp`` overflow).
    """

    def __init__(
        self, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0), clamp: float = BBOX_XFORM_CLAMP
    ) -> None:
        if len(weights) != 4 or any(float(w) <= 0 for w in weights):
            raise ValueError(f"BoxCoder: weights must be 4 positive numbers, got {list(weights)}")
        self.weights = tuple(float(w) for w in weights)
        self.clamp = float(clamp)

    def encode(self, anchors: Tensor, boxes: Tensor) -> Tensor:
        """Deltas (..., 4) that take ``anchors`` (..., 4) onto ``boxes`` (..., 4), both xyxy."""
        anchors, boxes = anchors.float(), boxes.float()
        wx, wy, ww, wh = self.weights
        widths = anchors[..., 2] - anchors[..., 0]
        heights = anchors[..., 3] - anchors[..., 1]
        ctr_x = anchors[..., 0] + 0.5 * widths
        ctr_y = anchors[..., 1] + 0.5 * heights
        gt_widths = boxes[..., 2] - boxes[..., 0]
        gt_heights = boxes[..., 3] - boxes[..., 1]
        gt_ctr_x = boxes[..., 0] + 0.5 * gt_widths
        gt_ctr_y = boxes[..., 1] + 0.5 * gt_heights
        dx = wx * (gt_ctr_x - ctr_x) / widths
        dy = wy * (gt_ctr_y - ctr_y) / heights
        dw = ww * torch.log(gt_widths / widths)
        dh = wh * torch.log(gt_heights / heights)
        return torch.stack((dx, dy, dw, dh), dim=-1)

    def decode(self, anchors: Tensor, deltas: Tensor) -> Tensor:
        """Boxes (..., 4) xyxy from ``anchors`` (..., 4) and ``deltas`` (..., 4); broadcasts.

        The arithmetic follows torchvision's ``BoxCoder.decode_single`` operation for operation,
        so decoded boxes agree with it to the last bit.
        """
        anchors, deltas = anchors.float(), deltas.float()
        wx, wy, ww, wh = self.weights
        widths = anchors[..., 2] - anchors[..., 0]
        heights = anchors[..., 3] - anchors[..., 1]
        ctr_x = anchors[..., 0] + 0.5 * widths
        ctr_y = anchors[..., 1] + 0.5 * heights
        dx = deltas[..., 0] / wx
        dy = deltas[..., 1] / wy
        dw = torch.clamp(deltas[..., 2] / ww, max=self.clamp)
        dh = torch.clamp(deltas[..., 3] / wh, max=self.clamp)
        pred_ctr_x = dx * widths + ctr_x
        pred_ctr_y = dy * heights + ctr_y
        half_w = 0.5 * (torch.exp(dw) * widths)
        half_h = 0.5 * (torch.exp(dh) * heights)
        return torch.stack(
            (pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h),
            dim=-1,
        )

    def __repr__(self) -> str:
        return f"BoxCoder(weights={self.weights}, clamp={self.clamp:.4f})"
