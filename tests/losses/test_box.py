"""Smooth L1 and GIoU box losses: hand-computed values, torchvision parity, the modules."""

import pytest
import torch
import torchvision

from losses import GIoUBoxLoss, SmoothL1BoxLoss, giou_loss, smooth_l1_loss


class StandardBoxCoder:
    """The (dx, dy, dw, dh) parameterisation of R-CNN, unit weights, no clamping (test stand-in)."""

    @staticmethod
    def _centre_size(boxes):
        size = boxes[:, 2:] - boxes[:, :2]
        return boxes[:, :2] + 0.5 * size, size

    def encode(self, anchors, boxes):
        a_ctr, a_size = self._centre_size(anchors)
        b_ctr, b_size = self._centre_size(boxes)
        return torch.cat([(b_ctr - a_ctr) / a_size, torch.log(b_size / a_size)], dim=1)

    def decode(self, anchors, deltas):
        a_ctr, a_size = self._centre_size(anchors)
        ctr = a_ctr + deltas[:, :2] * a_size
        size = a_size * torch.exp(deltas[:, 2:])
        return torch.cat([ctr - 0.5 * size, ctr + 0.5 * size], dim=1)


ANCHORS = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 60.0, 40.0]])
GT = torch.tensor([[1.0, -1.0, 11.0, 11.0], [18.0, 22.0, 66.0, 42.0]])


def test_smooth_l1_hand_computed():
    diff = torch.tensor([0.05, 0.1, -0.3, 2.0])
    # |d| < β: 0.5 d² / β; otherwise |d| - 0.5 β (β = 0.1).
    expected = [0.5 * 0.05**2 / 0.1, 0.1 - 0.05, 0.3 - 0.05, 2.0 - 0.05]
    ours = smooth_l1_loss(diff, torch.zeros(4), beta=0.1, reduction="none")
    torch.testing.assert_close(ours, torch.tensor(expected))
    assert smooth_l1_loss(diff, torch.zeros(4)).item() == pytest.approx(sum(expected))
    assert smooth_l1_loss(diff, torch.zeros(4), reduction="mean").item() == pytest.approx(
        sum(expected) / 4
    )


def test_smooth_l1_beta_zero_is_l1():
    diff = torch.tensor([0.05, 0.1, -0.3, 2.0], requires_grad=True)
    loss = smooth_l1_loss(diff, torch.zeros(4), beta=0.0)
    assert loss.item() == pytest.approx(2.45)
    loss.backward()
    torch.testing.assert_close(diff.grad, torch.tensor([1.0, 1.0, -1.0, 1.0]))


def test_giou_hand_computed_and_torchvision_parity():
    pred = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0]])
    gt = torch.tensor([[0.0, 0.0, 1.0, 1.0], [2.0, 0.0, 3.0, 1.0], [1.0, 1.0, 3.0, 3.0]])
    # Identical: GIoU 1. Disjoint: IoU 0, union 2, hull 3: GIoU -1/3. Overlap 1 of union 7,
    # hull 9: GIoU 1/7 - 2/9.
    expected = torch.tensor([0.0, 4 / 3, 1 - (1 / 7 - 2 / 9)])
    torch.testing.assert_close(giou_loss(pred, gt, reduction="none"), expected)
    torch.testing.assert_close(giou_loss(pred, gt), expected.sum())
    torch.testing.assert_close(
        giou_loss(pred, gt, "mean"),
        torchvision.ops.generalized_box_iou_loss(pred, gt, reduction="mean"),
    )


def test_reduced_precision_inputs_compute_in_float32():
    boxes = ANCHORS.to(torch.bfloat16)
    assert giou_loss(boxes, GT.to(torch.bfloat16)).dtype == torch.float32
    assert smooth_l1_loss(boxes, GT.to(torch.bfloat16)).dtype == torch.float32


def test_smooth_l1_box_loss_module():
    coder = StandardBoxCoder()
    module = SmoothL1BoxLoss(beta=0.1)
    assert repr(module) == "SmoothL1BoxLoss(beta=0.1)"
    exact = coder.encode(ANCHORS, GT)
    assert module(exact, ANCHORS, GT, coder).item() == 0.0
    pred = (exact + torch.tensor([0.05, -0.5, 0.0, 0.2])).requires_grad_()
    loss = module(pred, ANCHORS, GT, coder)
    expected = 2 * (0.5 * 0.05**2 / 0.1 + (0.5 - 0.05) + (0.2 - 0.05))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    torch.testing.assert_close(pred.grad, torch.tensor([[0.5, -1.0, 0.0, 1.0]] * 2))


def test_giou_box_loss_module():
    coder = StandardBoxCoder()
    module = GIoUBoxLoss()
    exact = coder.encode(ANCHORS, GT)
    assert module(exact, ANCHORS, GT, coder).item() == pytest.approx(0.0, abs=1e-6)
    pred = torch.zeros(2, 4, requires_grad=True)  # the anchors themselves
    loss = module(pred, ANCHORS, GT, coder)
    torch.testing.assert_close(loss, giou_loss(ANCHORS, GT))
    loss.backward()
    assert torch.all(torch.isfinite(pred.grad)) and pred.grad.abs().sum() > 0


@pytest.mark.parametrize("module", [SmoothL1BoxLoss(), GIoUBoxLoss()])
def test_no_positives_give_zero_with_a_gradient(module):
    pred = torch.zeros(0, 4, requires_grad=True)
    loss = module(pred, torch.zeros(0, 4), torch.zeros(0, 4), StandardBoxCoder())
    assert loss.item() == 0.0
    loss.backward()
    assert pred.grad.shape == (0, 4)


def test_bad_input():
    coder = StandardBoxCoder()
    with pytest.raises(ValueError, match="beta must be >= 0, got -0.1"):
        SmoothL1BoxLoss(beta=-0.1)
    with pytest.raises(ValueError, match="beta must be >= 0"):
        smooth_l1_loss(ANCHORS, GT, beta=-1.0)
    with pytest.raises(ValueError, match=r"input and target must have the same shape"):
        smooth_l1_loss(ANCHORS, GT[:1])
    with pytest.raises(ValueError, match="unknown reduction 'avg'"):
        giou_loss(ANCHORS, GT, reduction="avg")
    with pytest.raises(ValueError, match=r"pred_boxes must have shape \(P, 4\), got \(2, 5\)"):
        giou_loss(torch.zeros(2, 5), torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"anchors and pred_deltas must have the same shape"):
        GIoUBoxLoss()(torch.zeros(2, 4), ANCHORS[:1], GT, coder)
    with pytest.raises(ValueError, match=r"gt_boxes and pred_deltas must have the same shape"):
        SmoothL1BoxLoss()(torch.zeros(2, 4), ANCHORS, GT[:1], coder)
