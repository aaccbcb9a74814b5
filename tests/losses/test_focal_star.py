"""FL* (Appendix A) against its formula, its integer-label twin, and bad input."""

import math

import pytest
import torch

from losses import BACKGROUND, IGNORE, FocalLossStar, focal_loss_star, focal_loss_star_labels

K = 5


def make_inputs(rows: int = 40, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, K, generator=gen, dtype=torch.float64) * 3
    labels = torch.randint(BACKGROUND, K, (rows,), generator=gen)
    labels[:3] = torch.tensor([BACKGROUND, IGNORE, K - 1])
    targets = torch.zeros(rows, K, dtype=torch.float64)
    fg = labels >= 0
    targets[fg, labels[fg]] = 1.0
    return logits, labels, targets


def formula(logits, targets, gamma, beta, alpha=None):
    """-log(σ(γ x_t + β)) / γ with x_t = x for y = 1 and -x for y = 0, straight from Appendix A."""
    x_t = torch.where(targets == 1, logits, -logits)
    # -log σ(z) = log(1 + e^-z), written with log1p to stay accurate where σ(z) rounds to 1.
    loss = torch.log1p(torch.exp(-(gamma * x_t + beta))) / gamma
    if alpha is not None:
        loss = loss * torch.where(targets == 1, alpha, 1 - alpha)
    return loss


@pytest.mark.parametrize("alpha", [None, 0.25])
@pytest.mark.parametrize(("gamma", "beta"), [(0.5, 0.0), (1.0, 1.0), (2.0, 1.0), (4.0, -1.0)])
def test_matches_formula(gamma, beta, alpha):
    logits, _, targets = make_inputs()
    expected = formula(logits, targets, gamma, beta, alpha)
    ours = focal_loss_star(logits, targets, gamma, beta, alpha)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-300)
    torch.testing.assert_close(
        focal_loss_star(logits, targets, gamma, beta, alpha, "sum"), expected.sum()
    )
    torch.testing.assert_close(
        focal_loss_star(logits, targets, gamma, beta, alpha, "mean"), expected.mean()
    )


def test_hand_computed_value():
    # γ = 2, β = 1, y = 1, x = 0.5: -log σ(2) / 2.
    ours = focal_loss_star(torch.tensor([0.5]), torch.tensor([1.0]), gamma=2.0, beta=1.0)
    expected = -math.log(1 / (1 + math.exp(-2.0))) / 2
    assert ours.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(("gamma", "beta"), [(1.0, 0.0), (2.0, 1.0), (4.0, 0.0)])
def test_gradient_closed_form(gamma, beta):
    # d/dx [-log σ(γ y x + β) / γ] = -y σ(-(γ y x + β)) with y ∈ {-1, 1}.
    logits, labels, targets = make_inputs()
    x = logits.clone().requires_grad_()
    focal_loss_star_labels(x, labels, gamma, beta, reduction="sum").backward()
    y = 2 * targets - 1
    expected = -y * torch.sigmoid(-(gamma * y * logits + beta))
    expected[labels == IGNORE] = 0
    torch.testing.assert_close(x.grad, expected, rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("alpha", [None, 0.25])
def test_labels_twin_equals_one_hot_form(alpha, reduction):
    logits, labels, targets = make_inputs()
    kept = labels != IGNORE
    x = logits.clone().requires_grad_()
    ours = focal_loss_star_labels(x, labels, 2.0, 1.0, alpha, reduction)
    (grad,) = torch.autograd.grad(ours.sum(), x)
    x_ref = logits.clone().requires_grad_()
    ref = focal_loss_star(x_ref[kept], targets[kept], 2.0, 1.0, alpha, reduction)
    (ref_grad,) = torch.autograd.grad(ref.sum(), x_ref)
    if reduction == "none":
        assert torch.all(ours[~kept] == 0)
        ours = ours[kept]
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-300)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-300)
    assert torch.all(grad[~kept] == 0)


@pytest.mark.parametrize("reduction", ["none", "sum"])
def test_gradcheck_float64(reduction):
    logits, labels, targets = make_inputs(rows=8)
    x = logits.clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda t: focal_loss_star_labels(t, labels, 2.0, 1.0, 0.25, reduction), (x,)
    )
    soft = (torch.rand(8, K, dtype=torch.float64) * 0.9 + 0.05).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda t, y: focal_loss_star(t, y, 2.0, 1.0, 0.25, reduction), (x, soft)
    )


def test_extreme_logits_are_finite():
    logits = torch.tensor([[1e4, -1e4], [-1e4, 1e4]], requires_grad=True)
    labels = torch.tensor([0, BACKGROUND])
    loss = focal_loss_star_labels(logits, labels, gamma=2.0, beta=1.0, reduction="none")
    loss.sum().backward()
    # Right and confident: 0. Wrong: softplus(2·1e4 - 1)/2 = 1e4 - 0.5, gradient ±1.
    expected = torch.tensor([[0.0, 0.0], [0.0, 1e4 - 0.5]])
    torch.testing.assert_close(loss.detach(), expected)
    torch.testing.assert_close(logits.grad, torch.tensor([[0.0, 0.0], [0.0, 1.0]]))
    onehot = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    torch.testing.assert_close(focal_loss_star(logits.detach(), onehot), expected)


def test_empty_input():
    x = torch.zeros(0, K, requires_grad=True)
    assert focal_loss_star_labels(x, torch.zeros(0, dtype=torch.int64)).item() == 0.0
    assert focal_loss_star(x, torch.zeros(0, K), reduction="sum").item() == 0.0


def test_module():
    logits, labels, _ = make_inputs()
    module = FocalLossStar(gamma=4.0, beta=0.0)
    assert repr(module) == "FocalLossStar(gamma=4.0, beta=0.0)"
    torch.testing.assert_close(
        module(logits, labels), focal_loss_star_labels(logits, labels, 4.0, 0.0)
    )
    torch.testing.assert_close(
        module(logits, labels, validate_labels=False), module(logits, labels)
    )
    bad = labels.clone()
    bad[0] = -3
    with pytest.raises(ValueError, match=r"the first -3 at row 0"):
        module(logits, bad)


def test_bad_input():
    logits, labels, targets = make_inputs()
    with pytest.raises(ValueError, match="gamma must be > 0, got 0"):
        FocalLossStar(gamma=0)
    with pytest.raises(ValueError, match="gamma must be > 0, got -1"):
        focal_loss_star(logits, targets, gamma=-1)
    with pytest.raises(ValueError, match="gamma must be > 0"):
        focal_loss_star_labels(logits, labels, gamma=0.0)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        focal_loss_star(logits, targets, alpha=-0.5)
    with pytest.raises(ValueError, match="same shape"):
        focal_loss_star(logits, targets[:, :2])
    with pytest.raises(ValueError, match="unknown reduction 'total'"):
        focal_loss_star_labels(logits, labels, reduction="total")
    with pytest.raises(ValueError, match=r"labels must be in 0..4"):
        focal_loss_star_labels(logits, labels + 3)
