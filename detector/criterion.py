"""RetinaNet training loss: anchor labelling per image, then one classification and one box loss
over the whole batch, normalised by the number of positive anchors (Lin et al., 2017, §3.3, §4.1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from data.ranks import rank_and_world_size
from detector.box_coder import BoxCoder
from detector.labeling import AnchorLabeler
from detector.retinanet import DenseOutputs

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


def check_target_classes(targets: Sequence[dict], num_classes: int) -> None:
    """Reject target classes outside ``0..K-1`` without waiting on an accelerator.

    On CPU a ``ValueError`` names the image; on a GPU the check is an asynchronous device-side
    assertion (``torch._assert_async``), so the training step does not synchronise for it.
    """
    for target in targets:
        labels = target["labels"]
        if labels.numel() == 0:
            continue
        if labels.device.type != "cpu":
            valid = (labels.min() >= 0) & (labels.max() < num_classes)
            torch._assert_async(valid, f"target classes must be in 0..{num_classes - 1}")
        elif int(labels.min()) < 0 or int(labels.max()) >= num_classes:
            raise ValueError(
                f"image {target.get('image_id', '?')}: target classes must be in "
                f"0..{num_classes - 1} (K = {num_classes}), got {labels.tolist()}"
            )


class RetinaNetCriterion(nn.Module):
    """Named losses ``{"loss_cls", "loss_box"}`` for ``DenseOutputs`` and per-image targets.

    Args:
        box_coder: encodes regression targets (smooth L1) or decodes predictions (GIoU).
        labeler: labels the anchors of each image (matcher + crowd regions).
        cls_loss: ``forward(logits (M, K), labels (M,), validate_labels: bool) -> sum`` over
            integer labels with ``BACKGROUND``/``IGNORE`` (``losses.FocalLoss``; CE is
            ``FocalLoss(gamma=0)``), computing in float32 whatever the logits' dtype.
        box_loss: ``forward(pred_deltas (P, 4), anchors (P, 4), gt_boxes (P, 4), box_coder) -> sum``
            (``losses.SmoothL1BoxLoss`` or ``losses.GIoUBoxLoss``), also in float32.
        normalizer_momentum: ``None`` normalises by this batch's positive count; a value in
            [0, 1) by an exponential moving average of it (detectron2), which is steadier when a
            batch holds few boxes.

    The focal loss is summed over all anchors and divided by the number of anchors assigned to a
    box (§3.3: "normalized by the number of anchors assigned to a ground-truth box", since the
    easy negatives contribute little). The count is taken over the whole batch and averaged over
    processes, so every image and every process weighs each positive anchor the same; it is
    clamped to at least 1.

    The head's outputs are taken in their own dtype (bf16 under autocast): the losses cast chunk
    by chunk, so no float32 copy of the (N, R, K) logits is made. Labelling has no
    data-dependent shapes, and the labels need no range check in the loss (``validate_labels=
    False``): the labeler emits only target classes, ``BACKGROUND`` and ``IGNORE``, and the
    target classes are checked against K without a host read on GPUs. The only device sync of
    the step is the gather of positive anchors for the box loss.
    """

    def __init__(
        self,
        box_coder: BoxCoder,
        labeler: AnchorLabeler,
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
        self.labeler = labeler
        self.cls_loss = cls_loss
        self.box_loss = box_loss
        self.normalizer_momentum = normalizer_momentum
        self.register_buffer("loss_normalizer", torch.tensor(INITIAL_NORMALIZER))

    def label_batch(self, outputs: DenseOutputs, targets: Sequence[dict]) -> tuple[Tensor, Tensor]:
        """Labels (N, R) int64 and matched boxes (N, R, 4) of ``targets``, one per image."""
        num_images, _, num_classes = outputs.cls_logits.shape
        if len(targets) != num_images:
            raise ValueError(
                f"{type(self).__name__}: {len(targets)} targets for {num_images} images"
            )
        check_target_classes(targets, num_classes)
        return self.labeler.label_batch(outputs.anchors, targets)

    def box_loss_sum(self, outputs: DenseOutputs, labels: Tensor, matched_boxes: Tensor) -> Tensor:
        """The box loss summed over the positive anchors of ``labels`` (N, R), not normalised."""
        positive = labels >= 0
        return self.box_loss(
            outputs.box_deltas[positive],
            outputs.anchors.expand_as(matched_boxes)[positive],
            matched_boxes[positive],
            self.box_coder,
        )

    def cls_loss_sum(self, outputs: DenseOutputs, labels: Tensor) -> Tensor:
        """The classification loss summed over the anchors of ``labels`` (N, R) that are not
        ``IGNORE``, not normalised."""
        num_classes = outputs.cls_logits.shape[-1]
        # IGNORE anchors are passed along and contribute exactly nothing, which spares a gather.
        return self.cls_loss(
            outputs.cls_logits.reshape(-1, num_classes), labels.reshape(-1), validate_labels=False
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
        loss_cls = self.cls_loss_sum(outputs, labels)
        loss_box = self.box_loss_sum(outputs, labels, matched_boxes)
        return {"loss_cls": loss_cls / normalizer, "loss_box": loss_box / normalizer}
