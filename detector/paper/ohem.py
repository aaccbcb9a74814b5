"""Online hard example mining over anchors, the baseline of Table 1d (Lin et al., 2017, §5.1).

OHEM (Shrivastava et al., 2016) scores every example by its loss, runs non-maximum suppression
over the examples with the loss as the score (overlapping examples have correlated losses, so one
of them stands for the rest), and trains on the ``B`` highest-loss survivors of each image. The
focal-loss paper also tests the SSD-style variant "OHEM 1:3", in which the survivors form a
minibatch of at most one positive for three negatives.

Greedy NMS decides whether an anchor survives from the anchors ranked above it alone, so running
it on the ``T`` highest-loss anchors gives exactly the survivors among those ``T``. The selection
therefore runs NMS on a growing prefix of the ranked anchors (``T = 2B, 4B, ...``) and stops as
soon as the prefix provably holds the answer, instead of suppressing over all ``R`` anchors: on a
256 px image (9k anchors) full NMS costs about 0.1 s on a CPU core, on an 800 px one (160k
anchors) about 30 s.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import nms

from losses.labels import IGNORE


def check_ohem_params(
    batch_size_per_image: int, fg_fraction: float | None, nms_thresh: float
) -> None:
    """Raise ``TypeError``/``ValueError`` naming the first bad OHEM setting."""
    if isinstance(batch_size_per_image, bool) or not isinstance(batch_size_per_image, int):
        raise TypeError(f"OHEM: batch_size_per_image must be an int, got {batch_size_per_image!r}")
    if batch_size_per_image < 1:
        raise ValueError(f"OHEM: batch_size_per_image must be >= 1, got {batch_size_per_image}")
    if fg_fraction is not None and not 0.0 < fg_fraction <= 1.0:
        raise ValueError(f"OHEM: fg_fraction must be in (0, 1] or None, got {fg_fraction}")
    if not 0.0 < nms_thresh <= 1.0:
        raise ValueError(f"OHEM: nms_thresh must be in (0, 1], got {nms_thresh}")


def _check_tensors(loss: Tensor, boxes: Tensor, labels: Tensor) -> None:
    if loss.dim() != 2 or not loss.is_floating_point():
        raise ValueError(
            f"ohem_select: loss must be a floating (N, R) tensor, got {loss.dtype} "
            f"{tuple(loss.shape)}"
        )
    if labels.shape != loss.shape or labels.is_floating_point():
        raise ValueError(
            f"ohem_select: labels must be integers shaped like loss {tuple(loss.shape)}, got "
            f"{labels.dtype} {tuple(labels.shape)}"
        )
    if tuple(boxes.shape) not in ((loss.shape[1], 4), (*loss.shape, 4)):
        raise ValueError(
            f"ohem_select: boxes must be (R, 4) or (N, R, 4) for loss {tuple(loss.shape)}, got "
            f"{tuple(boxes.shape)}"
        )


def _select_image(
    loss: Tensor,
    boxes: Tensor,
    labels: Tensor,
    batch_size: int,
    num_fg_max: int | None,
    nms_thresh: float,
) -> Tensor:
    """Indices into R of the anchors one image keeps (see :func:`ohem_select`)."""
    candidates = (labels != IGNORE).nonzero().squeeze(1)
    # Highest loss first; a stable sort breaks ties by anchor index, and NMS receives strictly
    # decreasing scores (minus the rank) so that it visits the anchors in exactly this order.
    ranked = candidates[torch.sort(loss[candidates], descending=True, stable=True).indices]
    ranked_fg = labels[ranked] >= 0
    rank_score = -torch.arange(ranked.numel(), dtype=torch.float32, device=loss.device)
    total = ranked.numel()
    # Rank of the last foreground anchor + 1: a prefix at least this long holds every positive.
    fg_ranks = ranked_fg.nonzero()
    all_fg_within = int(fg_ranks[-1]) + 1 if fg_ranks.numel() else 0
    size = min(total, 2 * batch_size)
    while True:
        prefix = ranked[:size]
        kept = nms(boxes[prefix].float(), rank_score[:size], nms_thresh).sort().values
        if num_fg_max is None:
            if kept.numel() >= batch_size or size == total:
                return ranked[kept[:batch_size]]
        else:
            fg, bg = kept[ranked_fg[kept]], kept[~ranked_fg[kept]]
            # The positives are final once the quota is met or no positive lies beyond the
            # prefix; the negatives once the prefix holds enough of them to fill the rest.
            fg_final = fg.numel() >= num_fg_max or size >= all_fg_within
            num_fg = min(fg.numel(), num_fg_max)
            if size == total or (fg_final and bg.numel() >= batch_size - num_fg):
                return ranked[torch.cat([fg[:num_fg], bg[: batch_size - num_fg]])]
        size = min(total, 2 * size)


@torch.no_grad()
def ohem_select(
    loss: Tensor,
    boxes: Tensor,
    labels: Tensor,
    batch_size_per_image: int,
    fg_fraction: float | None = None,
    nms_thresh: float = 0.7,
) -> Tensor:
    """The anchors OHEM trains on: a keep mask ``(N, R)`` bool.

    For each image: the anchors that are not ``IGNORE`` are ranked by ``loss`` (highest first),
    greedy NMS at IoU ``nms_thresh`` runs over their ``boxes`` in that order, and the
    ``batch_size_per_image`` highest-loss survivors are kept (Table 1d, "OHEM"). With
    ``fg_fraction`` (0.25 is "OHEM 1:3") at most ``int(batch_size_per_image * fg_fraction)``
    survivors are positives and negatives fill the rest, as Fast R-CNN's minibatch sampler: an
    image with few positives keeps all of them and more negatives, so ``batch_size_per_image``
    anchors are kept whenever that many survive NMS. NMS runs over positives and negatives
    together ("after applying nms to all examples", §5.1).

    Args:
        loss: ``(N, R)`` per-anchor loss, the score of each anchor.
        boxes: ``(N, R, 4)`` or, shared by every image, ``(R, 4)`` xyxy boxes to suppress over.
        labels: ``(N, R)`` int: a class ``0..K-1`` (positive), ``BACKGROUND`` or ``IGNORE``
            (never kept, and suppresses nothing).
        batch_size_per_image: B, anchors kept per image.
        fg_fraction: largest share of positives in B; ``None`` for no ratio.
        nms_thresh: IoU above which a lower-loss anchor is suppressed.

    Returns:
        ``(N, R)`` bool, True for the kept anchors; ties in loss go to the lower anchor index.
        Non-finite losses are not rejected here: NaN ranks first and the trainer reports it.
    """
    check_ohem_params(batch_size_per_image, fg_fraction, nms_thresh)
    _check_tensors(loss, boxes, labels)
    num_fg_max = None if fg_fraction is None else int(batch_size_per_image * fg_fraction)
    keep = torch.zeros(loss.shape, dtype=torch.bool, device=loss.device)
    for i in range(loss.shape[0]):
        image_boxes = boxes if boxes.dim() == 2 else boxes[i]
        index = _select_image(
            loss[i], image_boxes, labels[i], batch_size_per_image, num_fg_max, nms_thresh
        )
        keep[i, index] = True
    return keep
