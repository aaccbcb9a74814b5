"""FL*, the alternative focal loss of the paper's Appendix A: ``-log(σ(γ x_t + β)) / γ``.

With ``x_t = x`` for a positive and ``-x`` for a negative (Appendix A), γ sharpens and β shifts the
loss curve as a function of ``x_t``.
``-log σ(z)`` is evaluated as ``softplus(-z)``, finite for any finite logit.
"""

import torch
from torch import nn

from losses._args import (
    check_alpha,
    check_floating,
    check_gamma,
    check_reduction,
    check_same_shape,
)
from losses._chunked import label_loss, softplus


def focal_loss_star(
    logits: torch.Tensor,
    targets: torch.Tensor,
    gamma: float = 2.0,
    beta: float = 1.0,
    alpha: float | None = None,
    reduction: str = "none",
) -> torch.Tensor:
    """FL* (Appendix A) for float targets, elementwise over any shape.

    For a soft target y the loss is ``y FL*(x_t = x) + (1 - y) FL*(x_t = -x)``, which is the
    paper's FL* for y ∈ {0, 1}.

    Args:
        logits: floating-point tensor of any shape ``S``.
        targets: floating-point tensor of shape ``S`` with values in [0, 1].
        gamma: γ > 0.
        beta: β, the shift of the loss curve.
        alpha: optional α-balancing as in eq. 3; ``None`` (the default, as in Appendix A) for none.
        reduction: ``"none"`` (shape ``S``), ``"sum"`` or ``"mean"``.

    Returns:
        The loss in float32 (float64 for float64 logits), differentiable in both inputs.
    """
    check_reduction(reduction)
    check_gamma(gamma, strictly_positive=True)
    check_alpha(alpha)
    check_floating(logits, "logits")
    check_floating(targets, "targets")
    check_same_shape(logits, targets, ("logits", "targets"))
    with torch.autocast(logits.device.type, enabled=False):
        dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        x, y = logits.to(dtype), targets.to(dtype)
        pos = softplus(-(gamma * x + beta))
        neg = softplus(gamma * x - beta)
        loss = (y * pos + (1.0 - y) * neg) / gamma
        if alpha is not None:
            loss = (alpha * y + (1.0 - alpha) * (1.0 - y)) * loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    return loss


class FocalStarNegativeBranch:
    """``f(x) = softplus(γ x - β) / γ``: FL* with ``x_t = -x``; ``f'(x) = σ(γ x - β)``."""

    def __init__(self, gamma: float, beta: float) -> None:
        self.gamma = gamma
        self.beta = beta

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        return softplus(torch.mul(x, self.gamma).sub_(self.beta)).div_(self.gamma)

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        return torch.mul(x, self.gamma).sub_(self.beta).sigmoid_()


def focal_loss_star_labels(
    logits: torch.Tensor,
    labels: torch.Tensor,
    gamma: float = 2.0,
    beta: float = 1.0,
    alpha: float | None = None,
    reduction: str = "sum",
    validate_labels: bool = True,
) -> torch.Tensor:
    """FL* (Appendix A) from integer labels per anchor, without one-hot targets.

    Args:
        logits: ``(M, K)`` floating-point class logits.
        labels: ``(M,)`` integers: a class in ``0..K-1``, ``BACKGROUND`` or ``IGNORE``.
        gamma: γ > 0.
        beta: β, the shift of the loss curve.
        alpha: optional α-balancing as in eq. 3; ``None`` for none.
        reduction: ``"sum"``, ``"mean"`` (over elements of rows that are not IGNORE) or
            ``"none"`` (``(M, K)``, IGNORE rows 0).
        validate_labels: reject label values outside ``0..K-1``, BACKGROUND and IGNORE with a
            ``ValueError`` (reads one min/max pair back to the host); the criterion switches it
            off because its labels are valid by construction.

    Returns:
        The loss, differentiable with respect to ``logits``.
    """
    check_gamma(gamma, strictly_positive=True)
    check_alpha(alpha)
    w_pos, w_neg = (1.0, 1.0) if alpha is None else (alpha, 1.0 - alpha)
    branch = FocalStarNegativeBranch(float(gamma), float(beta))
    return label_loss(logits, labels, branch, w_pos, w_neg, reduction, validate_labels)


class FocalLossStar(nn.Module):
    """FL* as the criterion's classification loss: summed over all non-ignored elements."""

    def __init__(self, gamma: float = 2.0, beta: float = 1.0) -> None:
        """
        Args:
            gamma: γ > 0 (Appendix A).
            beta: β (Appendix A).
        """
        super().__init__()
        check_gamma(gamma, strictly_positive=True)
        self.gamma = gamma
        self.beta = beta

    def forward(
        self, logits: torch.Tensor, labels: torch.Tensor, validate_labels: bool = True
    ) -> torch.Tensor:
        """``logits (M, K)``, ``labels (M,)`` → scalar sum (the criterion normalises it);
        ``validate_labels`` as in :func:`focal_loss_star_labels`."""
        return focal_loss_star_labels(
            logits, labels, self.gamma, self.beta, None, "sum", validate_labels
        )

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, beta={self.beta}"
