"""The α-balanced sigmoid focal loss (Lin et al., 2017, eq. 5), lean in memory and stable.

``FL(p_t) = -α_t (1 - p_t)^γ log(p_t)``, elementwise over independent sigmoid classifiers (§3.2:
the sigmoid, not a softmax, over K classes). Both entry points are ``torch.autograd.Function``s
that save only their inputs and recompute the rest in backward (see ``losses/_chunked.py``; the
label form's passes are compiled kernels, ``losses/_kernels.py``, the float-target form walks
chunks within a memory budget): on a (240000, 80) float32 input, forward+backward peaks at a
fraction of ``torchvision.ops.sigmoid_focal_loss`` (figures in ``docs/benchmarks.md``).

Numerics: ``log p`` comes from ``logsigmoid`` and ``log(1 - p)`` from ``softplus``, so nothing
overflows for logits of ±1e4; the gradient is the closed form of Appendix B, arranged so that no
``0 × inf`` appears where ``1 - p_t`` underflows; fp16/bf16 inputs are computed in float32.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import FunctionCtx, once_differentiable

from losses._args import (
    check_alpha,
    check_floating,
    check_gamma,
    check_reduction,
    check_same_shape,
)
from losses._chunked import label_loss, softplus
from losses._kernels import chunk_numel, compute_dtype, spans

FLOAT_TARGET_TEMPORARIES = 10
"""Chunk-sized tensors alive at once in ``_focal_grads`` (p, ce, m, their powers and products, the
compute-dtype copies of x and y): the eager chunk holds this many within the memory budget."""


def _focal_parts(
    x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``p = σ(x)``, the cross-entropy ``ce = -log p_t`` and ``m = 1 - p_t`` for soft targets y."""
    log_p = F.logsigmoid(x)
    # -[y log p + (1 - y) log(1 - p)] with log(1 - p) = log p - x.
    ce = torch.addcmul(x, x, y, value=-1.0).sub_(log_p)
    p = log_p.exp_()
    # 1 - p_t = y (1 - p) + (1 - y) p = y + p (1 - 2y)   (p_t as in eq. 2, extended to soft y)
    m = torch.addcmul(y, p, torch.mul(y, -2.0).add_(1.0))
    return p, ce, m


def _alpha_t(y: torch.Tensor, alpha: float) -> torch.Tensor:
    """``α_t = α y + (1 - α)(1 - y)`` (eq. 3, extended to soft y)."""
    return torch.mul(y, 2.0 * alpha - 1.0).add_(1.0 - alpha)


def _focal_elementwise(
    x: torch.Tensor, y: torch.Tensor, alpha: float | None, gamma: float
) -> torch.Tensor:
    """Eq. 5 elementwise: ``α_t (1 - p_t)^γ ce``."""
    _, ce, m = _focal_parts(x, y)
    loss = m.pow_(gamma).mul_(ce)
    return loss if alpha is None else loss.mul_(_alpha_t(y, alpha))


def _focal_grads(
    x: torch.Tensor, y: torch.Tensor, alpha: float | None, gamma: float, need_dy: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``dFL/dx`` and (if ``need_dy``) ``dFL/dy`` elementwise, without the incoming gradient.

    With ``m = 1 - p_t``: ``dFL/dx = α_t [γ m^(γ-1) (1 - 2y) p (1 - p) ce + m^γ (p - y)]``, which
    for ``y ∈ {0, 1}`` is Appendix B's ``y (1 - p_t)^γ (γ p_t log(p_t) + p_t - 1)``. Where ``m``
    underflows to 0 so does ``p (1 - p)``; clamping ``m`` to the smallest normal number keeps
    ``m^(γ-1)`` finite for ``γ < 1``, so the product is 0 rather than NaN.
    """
    p, ce, m = _focal_parts(x, y)
    modulating = m.pow(gamma)
    dx = torch.sub(p, y).mul_(modulating)
    d_modulating = None
    if gamma != 0.0:
        d_modulating = m.clamp_min_(torch.finfo(m.dtype).tiny).pow_(gamma - 1.0).mul_(gamma)
        dm_dx = torch.mul(y, -2.0).add_(1.0).mul_(p).mul_(1.0 - p)
        dx.add_(dm_dx.mul_(d_modulating).mul_(ce))
    dy = None
    if need_dy:
        # dce/dy = -x, dm/dy = 1 - 2p, dα_t/dy = 2α - 1.
        dy = torch.mul(modulating, x).neg_()
        if d_modulating is not None:
            dy.add_(torch.mul(p, -2.0).add_(1.0).mul_(d_modulating).mul_(ce))
    if alpha is not None:
        alpha_t = _alpha_t(y, alpha)
        dx.mul_(alpha_t)
        if dy is not None:
            dy.mul_(alpha_t).add_(modulating.mul_(ce).mul_(2.0 * alpha - 1.0))
    return dx, dy


class _SigmoidFocalLossFunction(torch.autograd.Function):
    """Chunked eq. 5 over flattened logits and float targets; saves only the two inputs."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
        logits: torch.Tensor,
        targets: torch.Tensor,
        alpha: float | None,
        gamma: float,
        reduction: str,
    ) -> torch.Tensor:
        cdt = compute_dtype(logits.dtype)
        x, y = logits.reshape(-1), targets.reshape(-1)
        pieces = spans(x.numel(), chunk_numel(x, FLOAT_TARGET_TEMPORARIES))
        if reduction == "none":
            out = logits.new_empty(logits.shape)
            flat = out.view(-1)
            for start, end in pieces:
                flat[start:end] = _focal_elementwise(
                    x[start:end].to(cdt), y[start:end].to(cdt), alpha, gamma
                )
        else:
            partial = x.new_zeros(len(pieces), dtype=cdt)
            for i, (start, end) in enumerate(pieces):
                partial[i] = _focal_elementwise(
                    x[start:end].to(cdt), y[start:end].to(cdt), alpha, gamma
                ).sum()
            out = partial.sum()
            if reduction == "mean":
                out = out / x.numel()
        ctx.save_for_backward(logits, targets)
        ctx.alpha, ctx.gamma, ctx.reduction = alpha, gamma, reduction
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        logits, targets = ctx.saved_tensors
        alpha, gamma, reduction = ctx.alpha, ctx.gamma, ctx.reduction
        need_dx, need_dy = ctx.needs_input_grad[:2]
        cdt = compute_dtype(logits.dtype)
        x, y = logits.reshape(-1), targets.reshape(-1)
        elementwise = reduction == "none"
        if elementwise:
            grad_out = grad_out.reshape(-1)
        elif reduction == "mean":
            grad_out = grad_out / x.numel()
        grad_x = logits.new_empty(logits.shape) if need_dx else None
        grad_y = targets.new_empty(targets.shape) if need_dy else None
        for start, end in spans(x.numel(), chunk_numel(x, FLOAT_TARGET_TEMPORARIES)):
            dx, dy = _focal_grads(x[start:end].to(cdt), y[start:end].to(cdt), alpha, gamma, need_dy)
            g = grad_out[start:end].to(cdt) if elementwise else grad_out
            if grad_x is not None:
                grad_x.view(-1)[start:end] = dx.mul_(g)
            if grad_y is not None and dy is not None:
                grad_y.view(-1)[start:end] = dy.mul_(g)
        return grad_x, grad_y, None, None, None


def sigmoid_focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float | None = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
) -> torch.Tensor:
    """The α-balanced focal loss of eq. 5 for float targets, elementwise over any shape.

    Same values as ``torchvision.ops.sigmoid_focal_loss`` (``alpha=None`` there is ``alpha=-1``),
    with a fraction of its memory and stable for extreme logits.

    Args:
        logits: floating-point tensor of any shape ``S``.
        targets: floating-point tensor of shape ``S``: 0/1 (one-hot), or soft targets in [0, 1].
        alpha: weight α of the positives, ``1 - α`` of the negatives (eq. 3); ``None`` for none.
        gamma: focusing parameter γ >= 0; ``gamma=0`` is the α-balanced CE of Table 1a.
        reduction: ``"none"`` (shape ``S``, the dtype of ``logits``), ``"sum"`` or ``"mean"``
            (scalars in float32, float64 for float64 logits; the mean of nothing is NaN).

    Returns:
        The loss, differentiable with respect to ``logits`` and ``targets``.
    """
    check_reduction(reduction)
    check_alpha(alpha)
    check_gamma(gamma)
    check_floating(logits, "logits")
    check_floating(targets, "targets")
    check_same_shape(logits, targets, ("logits", "targets"))
    with torch.autocast(logits.device.type, enabled=False):
        return _SigmoidFocalLossFunction.apply(logits, targets, alpha, float(gamma), reduction)


class FocalNegativeBranch:
    """``f(x) = p^γ softplus(x)``, the y = 0 branch of eq. 5 (``p_t = 1 - p``, ``-log(1 - p)``)."""

    def __init__(self, gamma: float) -> None:
        self.gamma = gamma

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x).pow_(self.gamma).mul_(softplus(x))

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        # Appendix B with y = -1, p_t = 1 - p: p^γ (γ (1 - p) softplus(x) + p).
        p = torch.sigmoid(x)
        g = torch.addcmul(p, torch.sub(1.0, p), softplus(x), value=self.gamma)
        return g.mul_(p.pow_(self.gamma))


def sigmoid_focal_loss_labels(
    logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float | None = 0.25,
    gamma: float = 2.0,
    reduction: str = "sum",
    validate_labels: bool = True,
) -> torch.Tensor:
    """Eq. 5 from integer labels per anchor, equal to the one-hot form without building it.

    Args:
        logits: ``(M, K)`` floating-point class logits.
        labels: ``(M,)`` integers: a class in ``0..K-1`` (target 1 in that column, 0 elsewhere),
            ``BACKGROUND`` (all targets 0) or ``IGNORE`` (the row contributes exactly nothing).
        alpha: weight α of the positives, ``1 - α`` of the negatives; ``None`` for none.
        gamma: focusing parameter γ >= 0.
        reduction: ``"sum"`` (scalar), ``"mean"`` (over the elements of rows that are not
            IGNORE) or ``"none"`` (``(M, K)``, IGNORE rows 0). Reduced values are float32
            (float64 for float64 logits).
        validate_labels: reject label values outside ``0..K-1``, BACKGROUND and IGNORE with a
            ``ValueError`` (reads one min/max pair back to the host); the criterion switches it
            off because its labels are valid by construction.

    Returns:
        The loss, differentiable with respect to ``logits``.
    """
    check_alpha(alpha)
    check_gamma(gamma)
    w_pos, w_neg = (1.0, 1.0) if alpha is None else (alpha, 1.0 - alpha)
    branch = FocalNegativeBranch(float(gamma))
    return label_loss(logits, labels, branch, w_pos, w_neg, reduction, validate_labels)


class FocalLoss(nn.Module):
    """The classification loss the criterion takes: eq. 5 summed over all non-ignored elements.

    ``FocalLoss(alpha=0.75, gamma=0)`` is the α-balanced cross-entropy baseline (Table 1a).
    """

    def __init__(self, alpha: float | None = 0.25, gamma: float = 2.0) -> None:
        """
        Args:
            alpha: weight of the positives (eq. 3); ``None`` for none.
            gamma: focusing parameter γ >= 0 (§3.2).
        """
        super().__init__()
        check_alpha(alpha)
        check_gamma(gamma)
        self.alpha = alpha
        self.gamma = gamma

    def forward(
        self, logits: torch.Tensor, labels: torch.Tensor, validate_labels: bool = True
    ) -> torch.Tensor:
        """``logits (M, K)``, ``labels (M,)`` → scalar sum (the criterion normalises it);
        ``validate_labels`` as in :func:`sigmoid_focal_loss_labels`."""
        return sigmoid_focal_loss_labels(
            logits, labels, self.alpha, self.gamma, "sum", validate_labels
        )

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}"
