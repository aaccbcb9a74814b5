"""Chunked evaluation of dense classification losses with integer labels per anchor.

A detector's classification logits are large (about 16 M values per 800×1333 image with K = 80),
and an autograd graph of the textbook loss keeps about ten logits-sized temporaries alive until
backward. The losses here are ``torch.autograd.Function``s instead: forward saves only the logits
and the labels, backward recomputes what it needs, and both make one pass over the logits
(``losses/_kernels.py``: a compiled kernel without temporaries, or an eager loop over row chunks
no larger than a memory budget). Beyond its inputs, forward+backward then holds the gradient
(plus, for ``reduction="none"``, the loss and its incoming gradient) and at most a few chunks.

Integer labels never become one-hot targets: a binary-target loss ``ℓ(x, y)`` with ``y ∈ {0, 1}``
is evaluated as its ``y = 0`` branch on every element, and the one element per foreground row
whose target is 1 is then replaced by its ``y = 1`` branch (gathered and scattered, O(M)).
FL and FL* are both symmetric, ``ℓ(x, 1) = ℓ(-x, 0)`` up to the α weight, so one function of x
(``NegativeBranch``) describes each.
"""

from typing import Protocol

import torch
import torch.nn.functional as F
from torch.autograd.function import FunctionCtx, once_differentiable

from detector.labeling import IGNORE
from losses._args import (
    check_floating,
    check_label_shape,
    check_label_values,
    check_reduction,
)
from losses._kernels import (
    compute_dtype,
    negative_elementwise,
    negative_grad,
    negative_row_sums,
)


def softplus(x: torch.Tensor) -> torch.Tensor:
    """``log(1 + e^x)``, returning ``x`` itself only where that is exact in float64 (x > 40).

    torch's default switch-over at 20 is exact in float32 but off by ``e^-20`` in float64.
    """
    return F.softplus(x, threshold=40.0)


class NegativeBranch(Protocol):
    """The ``y = 0`` branch ``f(x)`` of a symmetric binary-target loss, without its α weight.

    The ``y = 1`` branch is ``f(-x)`` and its derivative is ``-f'(-x)``.
    """

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """``f(x)`` elementwise, in a new tensor (``x`` is left as it is)."""
        ...

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        """``f'(x)`` elementwise, in a new tensor."""
        ...


def target_one_entries(
    labels: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(rows, classes, mask)`` addressing the elements whose target is 1 (one per foreground row).

    On CPU only the foreground rows are listed (``nonzero`` costs nothing there, and gathering
    one value from each of the M rows costs a cache miss each); ``mask`` is None. On GPUs every
    row is listed with its clamped label and ``mask`` marks the foreground, which avoids the host
    synchronisation of ``nonzero``.
    """
    if labels.device.type == "cpu":
        rows = (labels >= 0).nonzero().squeeze(1)
        return rows, labels[rows], None
    return dense_target_one_entries(labels)


def dense_target_one_entries(
    labels: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``target_one_entries`` for GPUs: every row, its clamped label and the foreground mask."""
    rows = torch.arange(labels.shape[0], device=labels.device)
    return rows, labels.clamp(min=0), labels >= 0


class _LabelLossFunction(torch.autograd.Function):
    """Sum, mean or elementwise ``w_t ℓ(x, one_hot(labels))`` over rows that are not IGNORE."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
        logits: torch.Tensor,
        labels: torch.Tensor,
        branch: NegativeBranch,
        w_pos: float,
        w_neg: float,
        reduction: str,
    ) -> torch.Tensor:
        cdt = compute_dtype(logits.dtype)
        num_classes = logits.shape[1]
        keep = labels != IGNORE
        rows, cls, mask = target_one_entries(labels)
        x_one = logits[rows, cls].to(cdt)
        pos_loss = branch.loss(-x_one).mul_(w_pos)

        if reduction == "none":
            out = negative_elementwise(branch, logits, keep, w_neg)
            fixed = pos_loss.to(out.dtype)
            out[rows, cls] = fixed if mask is None else torch.where(mask, fixed, out[rows, cls])
        else:
            row_sums = negative_row_sums(branch, logits)
            correction = pos_loss - branch.loss(x_one).mul_(w_neg)
            if mask is not None:
                correction = torch.where(mask, correction, 0.0)
            # where, not a product: logits of IGNORE rows may be anything, even inf or NaN.
            out = torch.where(keep, row_sums, 0.0).sum().mul_(w_neg) + correction.sum()
            if reduction == "mean":
                out = out / (keep.sum() * num_classes)

        ctx.save_for_backward(logits, keep, rows, cls, mask)
        ctx.branch, ctx.w_pos, ctx.w_neg, ctx.reduction = branch, w_pos, w_neg, reduction
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        logits, keep, rows, cls, mask = ctx.saved_tensors
        branch, w_pos, w_neg, reduction = ctx.branch, ctx.w_pos, ctx.w_neg, ctx.reduction
        cdt = compute_dtype(logits.dtype)
        num_classes = logits.shape[1]
        if reduction == "mean":
            grad_out = grad_out / (keep.sum() * num_classes)
        elementwise = reduction == "none"
        # d/dx of the y = 1 branch w f(-x) is -w f'(-x).
        pos_grad = branch.grad(-logits[rows, cls].to(cdt)).mul_(-w_pos)
        pos_grad.mul_(grad_out[rows, cls] if elementwise else grad_out)

        grad = negative_grad(branch, logits, keep, grad_out.to(cdt) * w_neg)
        fixed = pos_grad.to(grad.dtype)
        grad[rows, cls] = fixed if mask is None else torch.where(mask, fixed, grad[rows, cls])
        return grad, None, None, None, None, None


def label_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    branch: NegativeBranch,
    w_pos: float,
    w_neg: float,
    reduction: str,
    validate_labels: bool = True,
) -> torch.Tensor:
    """Validate and evaluate a symmetric binary-target loss from integer labels.

    Args:
        logits: ``(M, K)`` floating-point class logits.
        labels: ``(M,)`` integers: a class in ``0..K-1``, ``BACKGROUND`` or ``IGNORE``.
        branch: the loss's ``y = 0`` branch and its derivative.
        w_pos, w_neg: weights of the elements whose target is 1 and 0.
        reduction: ``"none"`` gives ``(M, K)`` in the logits' dtype with IGNORE rows 0;
            ``"sum"`` a scalar; ``"mean"`` the sum over the ``M_kept × K`` elements of rows that
            are not IGNORE (NaN if there are none, as ``torch.mean`` of nothing). Reduced values
            are float32 (float64 for float64 logits) whatever the logits' dtype.
        validate_labels: check the label values (one host synchronisation); ``False`` only for
            labels valid by construction. Shapes and dtypes are always checked.

    Returns:
        The loss, differentiable with respect to ``logits``.
    """
    check_reduction(reduction)
    check_floating(logits, "logits")
    check_label_shape(logits, labels)
    if validate_labels:
        check_label_values(labels, logits.shape[1])
    labels = labels.to(device=logits.device, dtype=torch.int64)
    with torch.autocast(logits.device.type, enabled=False):
        return _LabelLossFunction.apply(logits, labels, branch, w_pos, w_neg, reduction)
