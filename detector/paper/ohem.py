"""Online hard example mining over anchors, the baseline of Table 1d (Lin et al., 2017, §5.1).

The paper's OHEM baseline trains the same network with cross-entropy on a minibatch of hard
anchors per image, mined by loss with NMS: :func:`ohem_select` mines, :class:`OHEMCriterion` is
RetinaNet's criterion with the classification loss on the mined anchors only.

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

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import nms

from detector.box_coder import BoxCoder
from detector.criterion import RetinaNetCriterion, mean_over_processes
from detector.labeling import IGNORE, AnchorLabeler
from detector.retinanet import DenseOutputs
from losses.focal import FocalLoss, sigmoid_focal_loss_labels


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


class OHEMCriterion(RetinaNetCriterion):
    """``{"loss_cls", "loss_box"}`` with the classification loss on OHEM-mined anchors only.

    Args:
        box_coder, labeler, box_loss, normalizer_momentum: as :class:`RetinaNetCriterion`.
        cls_loss: a :class:`losses.FocalLoss`; the paper's OHEM uses cross-entropy,
            ``FocalLoss(alpha=None, gamma=0)``. It both scores the anchors and trains on the
            selected ones, so the mined examples are the hardest under the loss being trained.
        batch_size_per_image: B, anchors trained on per image (Table 1d: 128, 256, 512).
        fg_fraction: largest share of positives in B (0.25 is "OHEM 1:3"); ``None`` for none.
        nms_thresh: IoU of the NMS over anchors (Table 1d: 0.5, 0.7).

    Anchors are labelled as in :class:`RetinaNetCriterion`. Each anchor is scored without
    gradient by its classification loss summed over the K classes; NMS runs over the anchors'
    predicted boxes (the decoded regression). Shrivastava et al. suppress over the RoIs they
    classify, and a dense detector's counterpart of a RoI is the box it predicts from an anchor:
    the anchors themselves sit on a fixed grid whose distinct boxes overlap by at most 2^(-2/3)
    ≈ 0.63 (neighbouring octave scales), so NMS at 0.7 over anchors would suppress nothing, while
    predicted boxes of one object converge and are suppressed together. At initialisation the
    predicted boxes are the anchors.

    ``loss_cls`` is the sum over the selected anchors divided by the number selected over the
    batch (averaged over processes): the minibatch mean over the B examples of each image that
    Fast R-CNN-style OHEM trains with. ``loss_box`` is :class:`RetinaNetCriterion`'s (every
    positive anchor, divided by the positive count), so that Table 1d compares the classification
    losses and nothing else.
    """

    def __init__(
        self,
        box_coder: BoxCoder,
        labeler: AnchorLabeler,
        cls_loss: FocalLoss,
        box_loss: nn.Module,
        batch_size_per_image: int = 128,
        fg_fraction: float | None = None,
        nms_thresh: float = 0.7,
        normalizer_momentum: float | None = None,
    ) -> None:
        super().__init__(box_coder, labeler, cls_loss, box_loss, normalizer_momentum)
        if not isinstance(cls_loss, FocalLoss):
            raise TypeError(
                "OHEMCriterion: cls_loss must be a losses.FocalLoss (it scores every anchor), got "
                f"{type(cls_loss).__name__}"
            )
        check_ohem_params(batch_size_per_image, fg_fraction, nms_thresh)
        self.batch_size_per_image = batch_size_per_image
        self.fg_fraction = fg_fraction
        self.nms_thresh = nms_thresh

    @torch.no_grad()
    def select(self, outputs: DenseOutputs, labels: Tensor) -> Tensor:
        """Keep mask ``(N, R)`` bool of the mined anchors for ``labels (N, R)``."""
        # Scored in float32 also under autocast: reduction="none" returns the logits' dtype, and
        # bf16 scores would tie and reorder the ranking. Mining already holds an (N R, K) loss.
        logits = outputs.cls_logits.detach().float()
        num_images, num_anchors, num_classes = logits.shape
        per_element = sigmoid_focal_loss_labels(
            logits.reshape(-1, num_classes),
            labels.reshape(-1),
            alpha=self.cls_loss.alpha,
            gamma=self.cls_loss.gamma,
            reduction="none",
            validate_labels=False,  # made by the labeler (see RetinaNetCriterion)
        )
        per_anchor = per_element.sum(dim=1).view(num_images, num_anchors)
        boxes = self.box_coder.decode(outputs.anchors, outputs.box_deltas.detach())
        return ohem_select(
            per_anchor, boxes, labels, self.batch_size_per_image, self.fg_fraction, self.nms_thresh
        )

    def forward(self, outputs: DenseOutputs, targets: Sequence[dict]) -> dict[str, Tensor]:
        """``{"loss_cls": scalar, "loss_box": scalar}`` (see the class docstring)."""
        labels, matched_boxes = self.label_batch(outputs, targets)
        keep = self.select(outputs, labels)

        loss_cls = self.cls_loss_sum(outputs, torch.where(keep, labels, IGNORE))
        loss_box = self.box_loss_sum(outputs, labels, matched_boxes)
        num_selected = mean_over_processes(keep.sum().float())
        normalizer = self._normalizer((labels >= 0).sum().float())
        return {"loss_cls": loss_cls / num_selected, "loss_box": loss_box / normalizer}

    def extra_repr(self) -> str:
        return (
            f"batch_size_per_image={self.batch_size_per_image}, fg_fraction={self.fg_fraction}, "
            f"nms_thresh={self.nms_thresh}"
        )
