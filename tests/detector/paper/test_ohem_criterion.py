"""OHEMCriterion (detector/paper/ohem.py): RetinaNet's labels and box loss, CE on mined anchors."""

import pytest
import torch

from detector import (
    AnchorGenerator,
    AnchorLabeler,
    BoxCoder,
    DenseOutputs,
    Matcher,
    RetinaNetCriterion,
)
from detector.labeling import IGNORE
from detector.paper.ohem import OHEMCriterion
from losses import FocalLoss, FocalLossStar, SmoothL1BoxLoss, sigmoid_focal_loss_labels

K = 3
CE = FocalLoss(alpha=None, gamma=0.0)


def make_outputs(n: int = 2, seed: int = 0) -> DenseOutputs:
    anchors = AnchorGenerator(sizes=(16, 32), strides=(8, 16))(
        [(8, 8), (4, 4)], torch.device("cpu")
    )
    g = torch.Generator().manual_seed(seed)
    r = anchors.shape[0]
    logits = torch.randn(n, r, K, generator=g).requires_grad_()
    deltas = (0.1 * torch.randn(n, r, 4, generator=g)).requires_grad_()
    return DenseOutputs(logits, deltas, anchors, [r], torch.tensor([[64, 64]] * n))


TARGETS = [
    {"boxes": torch.tensor([[4.0, 4.0, 24.0, 28.0], [30.0, 30.0, 60.0, 62.0]]),
     "labels": torch.tensor([0, 2]), "image_id": 1},
    {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "image_id": 2},
]  # fmt: skip


def make(**kw) -> OHEMCriterion:
    return OHEMCriterion(BoxCoder(), AnchorLabeler(Matcher()), CE, SmoothL1BoxLoss(beta=0.1), **kw)


@pytest.mark.parametrize("fg_fraction", [None, 0.25])
def test_loss_is_ce_over_the_mined_anchors(fg_fraction) -> None:
    criterion = make(batch_size_per_image=32, fg_fraction=fg_fraction, nms_thresh=0.5)
    outputs = make_outputs()
    losses = criterion(outputs, TARGETS)
    assert set(losses) == {"loss_cls", "loss_box"}

    labels = torch.stack([criterion.labeler(outputs.anchors, t)[0] for t in TARGETS])
    keep = criterion.select(outputs, labels)
    assert keep.sum(1).tolist() == [32, 32]  # R = 720 anchors per image, B = 32 survive
    if fg_fraction is not None:
        assert int((keep & (labels >= 0)).sum()) <= 8
    mined = torch.where(keep, labels, IGNORE)
    expected = (
        sigmoid_focal_loss_labels(
            outputs.cls_logits.reshape(-1, K), mined.reshape(-1), alpha=None, gamma=0.0
        )
        / 64
    )
    torch.testing.assert_close(losses["loss_cls"], expected)

    # Gradient reaches exactly the mined anchors' logits.
    losses["loss_cls"].backward()
    touched = outputs.cls_logits.grad.abs().sum(-1) > 0
    assert torch.equal(touched, keep)


def test_box_loss_is_retinanets() -> None:
    outputs = make_outputs(seed=1)
    ohem = make(batch_size_per_image=16)(outputs, TARGETS)
    retina = RetinaNetCriterion(
        BoxCoder(), AnchorLabeler(Matcher()), CE, SmoothL1BoxLoss(beta=0.1)
    )(outputs, TARGETS)
    torch.testing.assert_close(ohem["loss_box"], retina["loss_box"])
    assert ohem["loss_box"] > 0


def test_anchors_are_scored_by_their_loss() -> None:
    """With no NMS effect (threshold 1) the mined anchors are the top-B by per-anchor CE."""
    criterion = make(batch_size_per_image=10, nms_thresh=1.0)
    outputs = make_outputs(n=1)
    labels = criterion.labeler(outputs.anchors, TARGETS[0])[0][None]
    keep = criterion.select(outputs, labels)
    per_anchor = sigmoid_focal_loss_labels(
        outputs.cls_logits.detach()[0], labels[0], alpha=None, gamma=0.0, reduction="none"
    ).sum(1)
    per_anchor[labels[0] == IGNORE] = -1.0
    assert set(keep[0].nonzero().squeeze(1).tolist()) == set(per_anchor.topk(10).indices.tolist())


def test_rejects_a_loss_it_cannot_score_and_bad_settings() -> None:
    with pytest.raises(TypeError, match="cls_loss must be a losses.FocalLoss"):
        OHEMCriterion(BoxCoder(), AnchorLabeler(Matcher()), FocalLossStar(), SmoothL1BoxLoss())
    with pytest.raises(ValueError, match="nms_thresh must be in"):
        make(nms_thresh=0.0)
    with pytest.raises(ValueError, match="2 targets for 1 images"):
        make()(make_outputs(n=1), TARGETS)
