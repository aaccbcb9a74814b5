"""RetinaNet trained with online hard example mining instead of the focal loss (Table 1d, §5.1).

The paper's OHEM baseline trains the same network with cross-entropy on a minibatch of hard
anchors per image, mined by loss with NMS (``losses.ohem``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from detector.box_coder import BoxCoder
from detector.criterion import RetinaNetCriterion, mean_over_processes
from detector.matcher import Matcher
from detector.retinanet import DenseOutputs
from losses.focal import FocalLoss, sigmoid_focal_loss_labels
from losses.labels import IGNORE
from losses.ohem import check_ohem_params, ohem_select


class OHEMCriterion(RetinaNetCriterion):
    """``{"loss_cls", "loss_box"}`` with the classification loss on OHEM-mined anchors only.

    Args:
        box_coder, matcher, box_loss, normalizer_momentum: as :class:`RetinaNetCriterion`.
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
        matcher: Matcher,
        cls_loss: FocalLoss,
        box_loss: nn.Module,
        batch_size_per_image: int = 128,
        fg_fraction: float | None = None,
        nms_thresh: float = 0.7,
        normalizer_momentum: float | None = None,
    ) -> None:
        super().__init__(box_coder, matcher, cls_loss, box_loss, normalizer_momentum)
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
        logits = outputs.cls_logits.detach()
        num_images, num_anchors, num_classes = logits.shape
        per_element = sigmoid_focal_loss_labels(
            logits.reshape(-1, num_classes),
            labels.reshape(-1),
            alpha=self.cls_loss.alpha,
            gamma=self.cls_loss.gamma,
            reduction="none",
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

        num_classes = outputs.cls_logits.shape[-1]
        mined = torch.where(keep, labels, IGNORE)
        loss_cls = self.cls_loss(
            outputs.cls_logits.reshape(-1, num_classes).float(), mined.reshape(-1)
        )
        loss_box = self.box_loss_sum(outputs, labels, matched_boxes)
        num_selected = mean_over_processes(keep.sum().float())
        normalizer = self._normalizer((labels >= 0).sum().float())
        return {"loss_cls": loss_cls / num_selected, "loss_box": loss_box / normalizer}

    def extra_repr(self) -> str:
        return (
            f"batch_size_per_image={self.batch_size_per_image}, fg_fraction={self.fg_fraction}, "
            f"nms_thresh={self.nms_thresh}"
        )
