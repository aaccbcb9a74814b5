"""Anchor-to-box assignment by IoU (Lin et al., 2017, §4 "Anchors")."""

from __future__ import annotations

import torch
from torch import Tensor

from detector.labeling import BACKGROUND, IGNORE


class Matcher:
    """Assign each anchor the box it overlaps most, or ``BACKGROUND`` / ``IGNORE``.

    Anchors with IoU ≥ ``fg_iou_thresh`` are foreground, IoU < ``bg_iou_thresh`` background, the
    rest ignored (§4: 0.5 and 0.4). With ``allow_low_quality_matches`` every box also claims the
    anchors that overlap it most (ties included), so that no box is left without an anchor, as
    torchvision and Detectron do. Unlike torchvision, a box whose best IoU is 0 claims nothing
    (otherwise every anchor would tie at 0 and become foreground).

    The computation has no data-dependent shapes, so it never waits on the device.
    """

    def __init__(
        self,
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh: float = 0.4,
        allow_low_quality_matches: bool = True,
    ) -> None:
        if not 0.0 <= bg_iou_thresh <= fg_iou_thresh <= 1.0:
            raise ValueError(
                "Matcher: need 0 <= bg_iou_thresh <= fg_iou_thresh <= 1, got "
                f"bg_iou_thresh={bg_iou_thresh}, fg_iou_thresh={fg_iou_thresh}"
            )
        self.fg_iou_thresh = float(fg_iou_thresh)
        self.bg_iou_thresh = float(bg_iou_thresh)
        self.allow_low_quality_matches = bool(allow_low_quality_matches)

    def __call__(self, iou: Tensor) -> Tensor:
        """Matched box index (R,) int64 for an IoU matrix (M, R); ``BACKGROUND``/``IGNORE`` else.

        Entries of ``iou`` below 0 (e.g. rows masked to -1 for crowd boxes) never match.
        """
        if iou.dim() != 2:
            raise ValueError(
                f"Matcher: expected an (M, R) IoU matrix, got shape {tuple(iou.shape)}"
            )
        if iou.shape[0] == 0:
            return torch.full((iou.shape[1],), BACKGROUND, dtype=torch.int64, device=iou.device)
        best_iou, best_box = iou.max(dim=0)
        matched = torch.where(
            best_iou >= self.fg_iou_thresh,
            best_box,
            torch.where(best_iou < self.bg_iou_thresh, BACKGROUND, IGNORE),
        )
        if self.allow_low_quality_matches:
            best_per_box = iou.max(dim=1, keepdim=True).values
            is_best = ((iou == best_per_box) & (best_per_box > 0)).any(dim=0)
            matched = torch.where(is_best, best_box, matched)
        return matched

    def __repr__(self) -> str:
        return (
            f"Matcher(fg_iou_thresh={self.fg_iou_thresh}, bg_iou_thresh={self.bg_iou_thresh}, "
            f"allow_low_quality_matches={self.allow_low_quality_matches})"
        )
