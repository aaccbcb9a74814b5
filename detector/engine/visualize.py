"""Drawing detections and ground truth on images (TensorBoard and tools/infer.py)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.utils import draw_bounding_boxes

PREDICTION_COLOR = (255, 64, 32)
GROUND_TRUTH_COLOR = (32, 220, 64)


def draw_detections(
    image: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    scores: torch.Tensor,
    class_names: Sequence[str],
    gt_boxes: torch.Tensor | None = None,
    width: int = 2,
) -> torch.Tensor:
    """``image`` uint8 ``(3, H, W)`` with the ``(D, 4)`` xyxy ``boxes`` drawn in red, labelled
    ``"name 0.87"``, and optional ``(M, 4)`` ground-truth boxes in green under them.

    Returns a new uint8 ``(3, H, W)`` tensor.
    """
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(
            f"expected a uint8 (3, H, W) image, got {image.dtype} {tuple(image.shape)}"
        )
    out = image.cpu()
    if gt_boxes is not None and len(gt_boxes):
        out = draw_bounding_boxes(out, gt_boxes.float().cpu(), colors=GROUND_TRUTH_COLOR, width=1)
    if len(boxes):
        texts = [
            f"{class_names[int(label)]} {float(score):.2f}"
            for label, score in zip(labels.tolist(), scores.tolist(), strict=True)
        ]
        out = draw_bounding_boxes(
            out, boxes.float().cpu(), labels=texts, colors=PREDICTION_COLOR, width=width
        )
    return out
