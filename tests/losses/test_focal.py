"""sigmoid_focal_loss (float targets): torchvision, BCE, the paper's formulas, bad input."""

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision

import losses._kernels
from losses import sigmoid_focal_loss

ALPHAS = (None, 0.25, 0.75)
GAMMAS = (0.0, 0.5, 1.0, 2.0, 5.0)
REDUCTIONS = ("none", "sum", "mean")


def make_inputs(dtype: torch.dtype, soft: bool = False, seed: int = 0):
    """(3, 40, 5) logits in about [-9, 9] and 0/1 targets (or soft ones in [0, 1])."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 40, 5, generator=gen, dtype=torch.float64) * 3
    if soft:
        targets = torch.rand(3, 40, 5, generator=gen, dtype=torch.float64)
    else:
        targets = (torch.rand(3, 40, 5, generator=gen) < 0.2).to(torch.float64)
    return logits.to(dtype), targets.to(dtype)


def torchvision_loss(logits, targets, alpha, gamma, reduction):
    tv_alpha = -1 if alpha is None else alpha  # torchvision's "no α" value
    return torchvision.ops.sigmoid_focal_loss(logits, targets, tv_alpha, gamma, reduction)


def value_and_grad(fn, logits, targets):
    x = logits.detach().clone().requires_grad_()
    loss = fn(x, targets)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), grad


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_parity_with_torchvision(dtype, reduction, soft):
    logits, targets = make_inputs(dtype, soft)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 0}
    for alpha in ALPHAS:
        for gamma in GAMMAS:
            ours, ours_grad = value_and_grad(
                lambda x, t, a=alpha, g=gamma: sigmoid_focal_loss(x, t, a, g, reduction),
                logits,
                targets,
            )
            ref, ref_grad = value_and_grad(
                lambda x, t, a=alpha, g=gamma: torchvision_loss(x, t, a, g, reduction),
                logits,
                targets,
            )
            assert ours.dtype == ref.dtype and ours.shape == ref.shape
            torch.testing.assert_close(ours, ref, **tol, msg=f"alpha={alpha} gamma={gamma}")
            torch.testing.assert_close(ours_grad, ref_grad, **tol)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_parity_with_torchvision_bfloat16(reduction):
    logits, targets = make_inputs(torch.bfloat16)
    for alpha in ALPHAS:
        for gamma in GAMMAS:
            ours = sigmoid_focal_loss(logits, targets, alpha, gamma, reduction)
            ref = torchvision_loss(logits, targets, alpha, gamma, reduction)
            # torchvision computes in bf16 (about 3 significant digits); we compute in float32.
            torch.testing.assert_close(ours.float(), ref.float(), rtol=4e-2, atol=2e-2)
            # Against torchvision in float32 on the same bf16 values only our rounding remains.
            exact = torchvision_loss(logits.float(), targets.float(), alpha, gamma, reduction)
            tol = (
                {"rtol": 8e-3, "atol": 1e-5} if reduction == "none" else {"rtol": 1e-5, "atol": 0.0}
            )
            torch.testing.assert_close(ours.float(), exact, **tol)


def test_output_dtypes_for_reduced_precision_inputs():
    logits, targets = make_inputs(torch.bfloat16)
    x = logits.clone().requires_grad_()
    assert sigmoid_focal_loss(x, targets).dtype == torch.bfloat16
    total = sigmoid_focal_loss(x, targets, reduction="sum")
    assert total.dtype == torch.float32
    total.backward()
    assert x.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("alpha", [0.25, 0.75])
def test_gamma_zero_is_alpha_weighted_bce(alpha, reduction):
    logits, targets = make_inputs(torch.float64, soft=True)
    weight = alpha * targets + (1 - alpha) * (1 - targets)
    ref = F.binary_cross_entropy_with_logits(logits, targets, weight=weight, reduction=reduction)
    ours = sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=0.0, reduction=reduction)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_no_alpha_gamma_zero_is_plain_bce(reduction):
    logits, targets = make_inputs(torch.float64, soft=True)
    ref = F.binary_cross_entropy_with_logits(logits, targets, reduction=reduction)
    ours = sigmoid_focal_loss(logits, targets, alpha=None, gamma=0.0, reduction=reduction)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


def test_matches_eq5_by_hand():
    # x = 2, y = 1: p_t = σ(2), FL = -α (1 - p_t)^γ log p_t (eq. 5).
    p = 1 / (1 + math.exp(-2.0))
    expected_pos = -0.25 * (1 - p) ** 2 * math.log(p)
    # x = 2, y = 0: p_t = 1 - σ(2).
    expected_neg = -0.75 * p**2 * math.log(1 - p)
    ours = sigmoid_focal_loss(
        torch.tensor([2.0, 2.0], dtype=torch.float64), torch.tensor([1.0, 0.0], dtype=torch.float64)
    )
    torch.testing.assert_close(
        ours, torch.tensor([expected_pos, expected_neg], dtype=torch.float64), rtol=1e-14, atol=0
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("alpha", [None, 0.25])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 5.0])
def test_gradcheck_float64(gamma, alpha, reduction):
    gen = torch.Generator().manual_seed(1)
    logits = (torch.randn(3, 4, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    # Soft targets inside (0, 1) so that the finite differences in the targets stay valid.
    targets = (torch.rand(3, 4, generator=gen, dtype=torch.float64) * 0.9 + 0.05).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, t: sigmoid_focal_loss(x, t, alpha, gamma, reduction), (logits, targets)
    )


@pytest.mark.parametrize("alpha", [None, 0.25, 0.75])
@pytest.mark.parametrize("gamma", GAMMAS)
def test_gradient_matches_appendix_b(gamma, alpha):
    logits, targets = make_inputs(torch.float64)
    # Appendix B, with y ∈ {-1, 1}: x_t = y x, p_t = σ(x_t),
    # dFL/dx = y (1 - p_t)^γ (γ p_t log(p_t) + p_t - 1), times α_t.
    y = 2 * targets - 1
    p_t = torch.sigmoid(y * logits)
    closed_form = y * (1 - p_t) ** gamma * (gamma * p_t * torch.log(p_t) + p_t - 1)
    if alpha is not None:
        closed_form = closed_form * (alpha * targets + (1 - alpha) * (1 - targets))
    _, grad = value_and_grad(
        lambda x, t: sigmoid_focal_loss(x, t, alpha, gamma, "sum"), logits, targets
    )
    torch.testing.assert_close(grad, closed_form, rtol=1e-10, atol=1e-300)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_extreme_logits_are_finite_and_exact(gamma, dtype):
    logits = torch.tensor([1e4, -1e4, 1e4, -1e4], dtype=dtype)
    targets = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=dtype)
    loss, grad = value_and_grad(
        lambda x, t: sigmoid_focal_loss(x, t, 0.25, gamma, "none"), logits, targets
    )
    big = float(logits[0])  # 1e4 rounded to dtype
    # Confident and right: no loss, no gradient. Confidently wrong: (1 - p_t)^γ = 1, CE = |x|,
    # and the gradient is ∓α_t (Appendix B with p_t = 0).
    expected_loss = torch.tensor([0.0, 0.25 * big, 0.75 * big, 0.0])
    expected_grad = torch.tensor([0.0, -0.25, 0.75, 0.0])
    torch.testing.assert_close(loss.float(), expected_loss, rtol=1e-3, atol=0)
    torch.testing.assert_close(grad.float(), expected_grad, rtol=1e-3, atol=0)


def test_empty_input():
    x = torch.zeros(0, 80, requires_grad=True)
    total = sigmoid_focal_loss(x, torch.zeros(0, 80), reduction="sum")
    assert total.item() == 0.0
    total.backward()
    assert x.grad.shape == (0, 80)
    assert sigmoid_focal_loss(x, torch.zeros(0, 80)).shape == (0, 80)
    assert torch.isnan(sigmoid_focal_loss(x, torch.zeros(0, 80), reduction="mean"))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_many_chunks_equal_one_chunk(monkeypatch, reduction):
    logits, targets = make_inputs(torch.float64, soft=True)
    targets.requires_grad_()
    x = logits.clone().requires_grad_()
    one = sigmoid_focal_loss(x, targets, reduction=reduction)
    one_grads = torch.autograd.grad(one.sum(), (x, targets))
    # 7 float64 elements times 10 temporaries a chunk; 600 elements: 86 chunks
    monkeypatch.setitem(losses._kernels.CHUNK_BYTES, "cpu", 7 * 8 * 10)
    many = sigmoid_focal_loss(x, targets, reduction=reduction)
    many_grads = torch.autograd.grad(many.sum(), (x, targets))
    torch.testing.assert_close(many, one, rtol=1e-13, atol=0)
    for a, b in zip(many_grads, one_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-18)


def test_non_contiguous_input():
    logits, targets = make_inputs(torch.float32)
    ours = sigmoid_focal_loss(logits.transpose(0, 2), targets.transpose(0, 2))
    torch.testing.assert_close(ours, sigmoid_focal_loss(logits, targets).transpose(0, 2))


def test_autocast_computes_in_float32():
    logits, targets = make_inputs(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = sigmoid_focal_loss(logits, targets, reduction="sum")
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, sigmoid_focal_loss(logits, targets, reduction="sum"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gamma": -1.0}, "gamma must be >= 0"),
        ({"gamma": float("inf")}, "gamma must be finite, got inf"),
        ({"gamma": float("nan")}, "gamma must be >= 0, got nan"),
        ({"alpha": 1.5}, r"alpha must be in \[0, 1\]"),
        ({"alpha": -0.25}, r"alpha must be in \[0, 1\]"),
        ({"reduction": "avg"}, "unknown reduction 'avg'"),
    ],
)
def test_bad_arguments(kwargs, message):
    logits, targets = make_inputs(torch.float32)
    with pytest.raises(ValueError, match=message):
        sigmoid_focal_loss(logits, targets, **kwargs)


def test_bad_tensors():
    logits, targets = make_inputs(torch.float32)
    with pytest.raises(ValueError, match=r"same shape, got \(3, 40, 5\) and \(3, 40, 4\)"):
        sigmoid_focal_loss(logits, targets[..., :4])
    with pytest.raises(ValueError, match="targets must be a floating-point tensor"):
        sigmoid_focal_loss(logits, targets.long())
    with pytest.raises(ValueError, match="logits must be a floating-point tensor"):
        sigmoid_focal_loss(logits.long(), targets)
