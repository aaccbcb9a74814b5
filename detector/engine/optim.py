"""SGD and its learning-rate schedule: linear warmup, then step decay (§4.1, Optimization).

The paper trains with SGD, momentum 0.9, weight decay 1e-4, lr 0.01 for a batch of 16, divided by
10 at 60k and 80k of 90k iterations. Here the decay points are fractions of ``max_iter`` (2/3 and
8/9) so shorter schedules keep the same shape, and the lr scales linearly with the batch size
(Goyal et al., 2017), with a linear warmup from ``warmup_factor * lr``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR


def scaled_lr(lr: float, base_batch_size: int, batch_size: int) -> float:
    """The linear scaling rule: ``lr`` is quoted for ``base_batch_size`` images per step."""
    if base_batch_size < 1:
        raise ValueError(f"base_batch_size must be >= 1, got {base_batch_size}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return lr * batch_size / base_batch_size


def build_sgd(
    model: nn.Module, lr: float, momentum: float = 0.9, weight_decay: float = 1e-4
) -> torch.optim.SGD:
    """SGD over the trainable parameters of ``model`` (frozen backbone stages are left out)."""
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def warmup_multistep_factor(
    iteration: int,
    milestones: Sequence[int],
    gamma: float = 0.1,
    warmup_iters: int = 0,
    warmup_factor: float = 0.001,
) -> float:
    """Multiplier of the base lr after ``iteration`` steps: ``gamma ** (#milestones passed)``,
    times a linear ramp from ``warmup_factor`` to 1 over the first ``warmup_iters`` steps."""
    decay = gamma ** sum(iteration >= m for m in milestones)
    if iteration >= warmup_iters:
        return decay
    alpha = iteration / warmup_iters
    return decay * (warmup_factor * (1 - alpha) + alpha)


def milestones(max_iter: int, fractions: Sequence[float]) -> list[int]:
    """Decay iterations from fractions of ``max_iter`` (2/3, 8/9 of 90k → 60k, 80k)."""
    return [round(f * max_iter) for f in fractions]


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    max_iter: int,
    steps: Sequence[float] = (2 / 3, 8 / 9),
    gamma: float = 0.1,
    warmup_iters: int = 500,
    warmup_factor: float = 0.001,
) -> LambdaLR:
    """Per-iteration scheduler (call ``step()`` after every optimizer step).

    The warmup is cut to ``max_iter // 4`` so that very short runs still reach the full lr.
    """
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    if warmup_iters < 0:
        raise ValueError(f"warmup_iters must be >= 0, got {warmup_iters}")
    if not 0 < warmup_factor <= 1:
        raise ValueError(f"warmup_factor must be in (0, 1], got {warmup_factor}")
    if not (all(0 < s <= 1 for s in steps) and list(steps) == sorted(steps)):
        raise ValueError(
            f"steps must be increasing fractions of max_iter in (0, 1], got {list(steps)}"
        )
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}")
    # A partial, not a callable object: LambdaLR then stores no schedule in its state_dict, so a
    # resumed run follows the schedule of its own config (e.g. a larger train.max_iter).
    schedule = functools.partial(
        warmup_multistep_factor,
        milestones=milestones(max_iter, steps),
        gamma=gamma,
        warmup_iters=min(warmup_iters, max_iter // 4),
        warmup_factor=warmup_factor,
    )
    return LambdaLR(optimizer, schedule)
