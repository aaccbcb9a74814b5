"""sigmoid_focal_loss_labels and FocalLoss: equal to the one-hot form, IGNORE rows give nothing."""

import pytest
import torch
import torch.nn.functional as F
import torchvision

import losses._chunked
import losses._kernels
from losses import (
    BACKGROUND,
    IGNORE,
    FocalLoss,
    sigmoid_focal_loss,
    sigmoid_focal_loss_labels,
)

K = 7


def make_inputs(dtype: torch.dtype = torch.float64, rows: int = 60, seed: int = 0):
    """(rows, K) logits and labels with every kind: classes, BACKGROUND and IGNORE."""
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(rows, K, generator=gen, dtype=torch.float64) * 3).to(dtype)
    labels = torch.randint(BACKGROUND, K, (rows,), generator=gen)
    labels[:3] = torch.tensor([BACKGROUND, IGNORE, K - 1])
    return logits, labels


def one_hot_kept(logits, labels):
    """The rows that are not IGNORE and their one-hot targets (BACKGROUND: all zero)."""
    kept = labels != IGNORE
    targets = F.one_hot(labels[kept].clamp(min=0), K).to(logits.dtype)
    targets[labels[kept] == BACKGROUND] = 0
    return logits[kept], targets


def value_and_grad(fn, logits, *args):
    x = logits.detach().clone().requires_grad_()
    loss = fn(x, *args)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), grad


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_equals_one_hot_form(dtype, reduction):
    logits, labels = make_inputs(dtype)
    kept = labels != IGNORE
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-15}
    for alpha in (None, 0.25, 0.75):
        for gamma in (0.0, 0.5, 1.0, 2.0, 5.0):
            ours, ours_grad = value_and_grad(
                lambda x, a=alpha, g=gamma: sigmoid_focal_loss_labels(x, labels, a, g, reduction),
                logits,
            )

            def reference(x, a=alpha, g=gamma):
                x_kept, targets = one_hot_kept(x, labels)
                tv_alpha = -1 if a is None else a
                return torchvision.ops.sigmoid_focal_loss(x_kept, targets, tv_alpha, g, reduction)

            ref, ref_grad = value_and_grad(reference, logits)
            torch.testing.assert_close(ours, ref, **tol, msg=f"alpha={alpha} gamma={gamma}")
            torch.testing.assert_close(ours_grad, ref_grad, **tol)
            assert torch.all(ours_grad[~kept] == 0)


@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_elementwise_equals_one_hot_form(gamma):
    logits, labels = make_inputs()
    kept = labels != IGNORE
    ours, ours_grad = value_and_grad(
        lambda x: sigmoid_focal_loss_labels(x, labels, 0.25, gamma, "none"), logits
    )
    x_kept, targets = one_hot_kept(logits, labels)
    ref = sigmoid_focal_loss(x_kept, targets, 0.25, gamma, "none")
    assert ours.shape == (60, K)
    torch.testing.assert_close(ours[kept], ref, rtol=1e-10, atol=1e-15)
    assert torch.all(ours[~kept] == 0)
    assert torch.all(ours_grad[~kept] == 0)


def test_ignored_rows_contribute_nothing_whatever_their_logits():
    logits, labels = make_inputs()
    ignored = labels == IGNORE
    poisoned = logits.clone()
    poisoned[ignored] = torch.tensor(
        [float("nan"), float("inf"), -float("inf"), 1e4, 0, 0, 0], dtype=torch.float64
    )
    for reduction in ("sum", "mean", "none"):
        clean, clean_grad = value_and_grad(
            lambda x, r=reduction: sigmoid_focal_loss_labels(x, labels, reduction=r), logits
        )
        dirty, dirty_grad = value_and_grad(
            lambda x, r=reduction: sigmoid_focal_loss_labels(x, labels, reduction=r), poisoned
        )
        torch.testing.assert_close(dirty, clean, rtol=0, atol=0)
        torch.testing.assert_close(dirty_grad, clean_grad, rtol=0, atol=0)
    # And the same loss as with those rows removed.
    alone = sigmoid_focal_loss_labels(logits[~ignored], labels[~ignored])
    torch.testing.assert_close(sigmoid_focal_loss_labels(logits, labels), alone)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_gradcheck_float64(gamma, reduction):
    logits, labels = make_inputs(rows=12)
    x = logits.clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda t: sigmoid_focal_loss_labels(t, labels, 0.25, gamma, reduction), (x,)
    )


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_many_chunks_equal_one_chunk(monkeypatch, reduction):
    logits, labels = make_inputs()
    one, one_grad = value_and_grad(
        lambda x: sigmoid_focal_loss_labels(x, labels, reduction=reduction), logits
    )
    # 2 rows of K float64 times 4 temporaries a chunk: 30 chunks
    monkeypatch.setitem(losses._kernels.CHUNK_BYTES, "cpu", 2 * K * 8 * 4)
    many, many_grad = value_and_grad(
        lambda x: sigmoid_focal_loss_labels(x, labels, reduction=reduction), logits
    )
    torch.testing.assert_close(many, one, rtol=1e-13, atol=0)
    torch.testing.assert_close(many_grad, one_grad, rtol=1e-14, atol=1e-18)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_extreme_logits_are_finite_and_exact(dtype):
    logits = torch.full((3, 2), 1e4, dtype=dtype)
    logits[1] = -1e4
    labels = torch.tensor([0, 0, BACKGROUND])
    # Row 0: class 0 right (0), class 1 wrong (0.75 · 1e4). Row 1: class 0 wrong (0.25 · 1e4),
    # class 1 right (0). Row 2: both wrong (2 · 0.75 · 1e4).
    loss, grad = value_and_grad(
        lambda x: sigmoid_focal_loss_labels(x, labels, 0.25, 2.0, "none"), logits
    )
    big = float(logits[0, 0])
    expected = torch.tensor([[0.0, 0.75], [0.25, 0.0], [0.75, 0.75]]) * big
    torch.testing.assert_close(loss.float(), expected, rtol=1e-3, atol=0)
    expected_grad = torch.tensor([[0.0, 0.75], [-0.25, 0.0], [0.75, 0.75]])
    torch.testing.assert_close(grad.float(), expected_grad, rtol=1e-3, atol=0)


def test_bfloat16_logits():
    logits, labels = make_inputs(torch.bfloat16)
    x = logits.clone().requires_grad_()
    total = sigmoid_focal_loss_labels(x, labels)
    total.backward()
    assert total.dtype == torch.float32 and x.grad.dtype == torch.bfloat16
    reference = sigmoid_focal_loss_labels(logits.double(), labels)
    torch.testing.assert_close(total.double(), reference, rtol=1e-6, atol=0)


def test_empty_and_all_ignored():
    x = torch.zeros(0, 80, requires_grad=True)
    total = sigmoid_focal_loss_labels(x, torch.zeros(0, dtype=torch.int64))
    assert total.item() == 0.0
    total.backward()
    assert x.grad.shape == (0, 80)
    x = torch.randn(5, 80, requires_grad=True)
    ignored = torch.full((5,), IGNORE)
    total = sigmoid_focal_loss_labels(x, ignored)
    assert total.item() == 0.0
    total.backward()
    assert torch.all(x.grad == 0)
    assert torch.isnan(sigmoid_focal_loss_labels(x, ignored, reduction="mean"))


def test_int32_labels():
    logits, labels = make_inputs()
    torch.testing.assert_close(
        sigmoid_focal_loss_labels(logits, labels.int()), sigmoid_focal_loss_labels(logits, labels)
    )


def test_bad_input():
    logits, labels = make_inputs()
    too_big, too_small = labels.clone(), labels.clone()
    too_big[[4, 9]] = K
    too_small[[5, 9]] = -3
    with pytest.raises(ValueError, match=r"labels must be in 0..6 \(K = 7 classes\), BACKGROUND"):
        sigmoid_focal_loss_labels(logits, too_big)
    with pytest.raises(ValueError, match=r"2 are not, the first 7 at row 4"):
        sigmoid_focal_loss_labels(logits, too_big)
    with pytest.raises(
        ValueError, match=r"\(-2\) or IGNORE \(-1\); 2 are not, the first -3 at row 5"
    ):
        sigmoid_focal_loss_labels(logits, too_small)
    with pytest.raises(ValueError, match=r"labels must have shape \(M,\) = \(60,\)"):
        sigmoid_focal_loss_labels(logits, labels[:-1])
    with pytest.raises(ValueError, match="labels must be an integer tensor"):
        sigmoid_focal_loss_labels(logits, labels.float())
    with pytest.raises(ValueError, match=r"logits must have shape \(M, K\)"):
        sigmoid_focal_loss_labels(logits[None], labels)
    with pytest.raises(ValueError, match="at least one class"):
        sigmoid_focal_loss_labels(logits[:, :0], labels.clamp(max=-1))
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        sigmoid_focal_loss_labels(logits, labels, gamma=-0.5)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        sigmoid_focal_loss_labels(logits, labels, alpha=2.0)
    with pytest.raises(ValueError, match="unknown reduction 'max'"):
        sigmoid_focal_loss_labels(logits, labels, reduction="max")


def test_focal_loss_module():
    logits, labels = make_inputs()
    module = FocalLoss(alpha=0.25, gamma=2.0)
    assert repr(module) == "FocalLoss(alpha=0.25, gamma=2.0)"
    torch.testing.assert_close(module(logits, labels), sigmoid_focal_loss_labels(logits, labels))


def test_label_values_are_checked_unless_the_caller_vouches_for_them(monkeypatch):
    """The public functions and modules reject bad labels by default (a host read); with
    ``validate_labels=False`` (the criterion, whose labels the labeler makes) the values are
    not read back, and the shapes are still checked."""
    logits, labels = make_inputs()
    too_big = labels.clone()
    too_big[4] = K
    with pytest.raises(ValueError, match=r"the first 7 at row 4"):
        FocalLoss()(logits, too_big)
    with pytest.raises(ValueError, match=r"the first 7 at row 4"):
        sigmoid_focal_loss_labels(logits, too_big, reduction="none")
    expected = sigmoid_focal_loss_labels(logits, labels)

    def no_host_read(*args):
        raise AssertionError("label values read back to the host")

    monkeypatch.setattr(losses._chunked, "check_label_values", no_host_read)
    with pytest.raises(AssertionError, match="read back"):
        FocalLoss()(logits, labels)
    torch.testing.assert_close(FocalLoss()(logits, labels, validate_labels=False), expected)
    with pytest.raises(ValueError, match=r"labels must have shape \(M,\) = \(60,\)"):
        FocalLoss()(logits, labels[:-1], validate_labels=False)
    with pytest.raises(ValueError, match="labels must be an integer tensor"):
        sigmoid_focal_loss_labels(logits, labels.float(), validate_labels=False)


def test_focal_loss_module_as_alpha_balanced_ce():
    # Table 1a's CE baseline: FocalLoss(gamma=0, alpha=0.75).
    logits, labels = make_inputs()
    x_kept, targets = one_hot_kept(logits, labels)
    weight = 0.75 * targets + 0.25 * (1 - targets)
    expected = F.binary_cross_entropy_with_logits(x_kept, targets, weight=weight, reduction="sum")
    torch.testing.assert_close(FocalLoss(alpha=0.75, gamma=0)(logits, labels), expected)


def test_focal_loss_module_rejects_bad_hyperparameters():
    with pytest.raises(ValueError, match="gamma must be >= 0, got -2"):
        FocalLoss(gamma=-2)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\] or None, got 1.25"):
        FocalLoss(alpha=1.25)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_gpu_addressing_of_target_one_entries_on_cpu(monkeypatch, reduction):
    # GPUs address every row with a foreground mask instead of nonzero(); same numbers.
    logits, labels = make_inputs()
    compact, compact_grad = value_and_grad(
        lambda x: sigmoid_focal_loss_labels(x, labels, reduction=reduction), logits
    )
    monkeypatch.setattr(
        losses._chunked, "target_one_entries", losses._chunked.dense_target_one_entries
    )
    dense, dense_grad = value_and_grad(
        lambda x: sigmoid_focal_loss_labels(x, labels, reduction=reduction), logits
    )
    torch.testing.assert_close(dense, compact, rtol=1e-14, atol=0)
    torch.testing.assert_close(dense_grad, compact_grad, rtol=0, atol=0)
