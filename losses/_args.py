"""Argument checks shared by the loss functions: each raises ``ValueError`` saying what is wrong."""

import math

import torch

from detector.labeling import BACKGROUND, IGNORE

REDUCTIONS = ("none", "mean", "sum")


def check_reduction(reduction: str) -> None:
    """Reject a reduction other than ``"none"``, ``"mean"`` or ``"sum"``."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}: expected one of {REDUCTIONS}")


def check_alpha(alpha: float | None) -> None:
    """Reject an α outside ``[0, 1]`` (``None`` switches α-weighting off)."""
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] or None, got {alpha}")


def check_gamma(gamma: float, *, strictly_positive: bool = False) -> None:
    """Reject γ < 0 (or γ <= 0 where the loss divides by γ) and an infinite γ (every term's
    modulating factor would be 0 or NaN: the loss would train nothing)."""
    if strictly_positive and not gamma > 0.0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    if not gamma >= 0.0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    if math.isinf(gamma):
        raise ValueError(f"gamma must be finite, got {gamma}")


def check_same_shape(a: torch.Tensor, b: torch.Tensor, names: tuple[str, str]) -> None:
    """Reject two tensors whose shapes differ."""
    if a.shape != b.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same shape, "
            f"got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def check_floating(t: torch.Tensor, name: str) -> None:
    """Reject a tensor that is not floating point."""
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")


def check_box_shape(t: torch.Tensor, name: str) -> None:
    """Reject a box tensor that is not ``(P, 4)``."""
    if t.dim() != 2 or t.shape[1] != 4:
        raise ValueError(f"{name} must have shape (P, 4), got {tuple(t.shape)}")


def check_label_shape(logits: torch.Tensor, labels: torch.Tensor) -> None:
    """Reject logits that are not ``(M, K)`` with K >= 1 and labels that are not ``(M,)`` integers.

    Reads only shapes and dtypes, never the values: no host synchronisation.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (M, K), got {tuple(logits.shape)}")
    if logits.shape[1] == 0:
        raise ValueError("logits must have at least one class column, got shape (M, 0)")
    if labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"labels must have shape (M,) = ({logits.shape[0]},) to match logits "
            f"{tuple(logits.shape)}, got {tuple(labels.shape)}"
        )
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")


def check_label_values(labels: torch.Tensor, num_classes: int) -> None:
    """Reject labels other than ``0..K-1``, ``BACKGROUND`` and ``IGNORE``.

    Reads back one min/max pair: a host synchronisation, which callers whose labels are valid by
    construction (the criterion, whose labels come from ``AnchorLabeler``) skip.
    """
    if labels.numel() == 0:
        return
    # The sentinels are the two integers just below 0, so a range check covers every case.
    low, high = (int(v) for v in torch.aminmax(labels))
    if low < min(BACKGROUND, IGNORE) or high >= num_classes:
        bad_rows = ((labels < min(BACKGROUND, IGNORE)) | (labels >= num_classes)).nonzero()
        first = int(bad_rows[0])
        raise ValueError(
            f"labels must be in 0..{num_classes - 1} (K = {num_classes} classes), "
            f"BACKGROUND ({BACKGROUND}) or IGNORE ({IGNORE}); {bad_rows.numel()} are not, "
            f"the first {int(labels[first])} at row {first}"
        )
