"""The iteration-based training loop: forward, loss, backward, step, with periodic hooks.

The step does not synchronise with the device except at log intervals: losses stay on the device
between logs, and a non-finite loss is recorded on the device (the first iteration and its loss
terms) and reported at the next log, checkpoint or evaluation, before anything is saved. Skipping
bad steps (``skip_nonfinite > 0``) needs the answer before the optimizer step, so that option
reads the loss on the host every step.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from detector.engine.distributed import all_gather_objects, all_ranks, reduce_mean
from detector.engine.events import EventWriter
from detector.engine.precision import MixedPrecision

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite (message: the iteration and every loss term)."""


@dataclass
class LoopSettings:
    """How long to train and how often to log, evaluate and checkpoint (0: only at the end)."""

    max_iter: int
    log_period: int = 20
    eval_period: int = 0
    checkpoint_period: int = 0
    skip_nonfinite: int = 0
    clip_grad_norm: float | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter}")
        if self.log_period < 1:
            raise ValueError(f"log_period must be >= 1, got {self.log_period}")
        for key in ("eval_period", "checkpoint_period", "skip_nonfinite"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise ValueError(f"clip_grad_norm must be > 0 or null, got {self.clip_grad_norm}")


def _describe(iteration: int, terms: dict[str, float]) -> str:
    values = ", ".join(f"{k}={v:.4g}" for k, v in terms.items())
    return f"non-finite loss at iteration {iteration}: {values}"


def move_targets(targets: list[dict[str, Any]], device: torch.device) -> list[dict[str, Any]]:
    """The per-image target dicts with their tensors on ``device``."""
    return [
        {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in t.items()}
        for t in targets
    ]


class Trainer:
    """Runs ``settings.max_iter`` optimizer steps of ``model`` + ``criterion`` on ``batches``.

    Args:
        model: the network (possibly DDP-wrapped); ``model(images, image_sizes)`` returns
            ``DenseOutputs``.
        criterion: ``criterion(outputs, targets)`` returns a dict of named scalar losses.
        optimizer, scheduler: stepped once per iteration (the scheduler is per-iteration).
        batches: an endless iterable of ``data.Batch`` positioned at the start iteration.
        precision: the autocast context and gradient scaler.
        device: where the step runs.
        settings: see :class:`LoopSettings`.
        on_evaluate: called with the iteration count at each evaluation point (and the end).
        on_checkpoint: called with the iteration count at each checkpoint point (and the end).
        on_log: called with the iteration count and the logged values at each log interval.
        writer: TensorBoard writer (disabled on ranks other than 0).
        is_main: whether this process shows the progress bar.
    """

    def __init__(
        self,
        model: nn.Module,
        criterion: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        batches: Iterable,
        precision: MixedPrecision,
        device: torch.device,
        settings: LoopSettings,
        on_evaluate: Callable[[int], None] | None = None,
        on_checkpoint: Callable[[int], None] | None = None,
        on_log: Callable[[int, dict[str, float]], None] | None = None,
        writer: EventWriter | None = None,
        is_main: bool = True,
    ) -> None:
        self.model = model
        self.criterion = criterion
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.batches = batches
        self.precision = precision
        self.device = device
        self.settings = settings
        self.on_evaluate = on_evaluate
        self.on_checkpoint = on_checkpoint
        self.on_log = on_log
        self.writer = writer or EventWriter(None)
        self.is_main = is_main
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.skipped = 0
        self.history: list[dict[str, float]] = []
        """The logged values at each log interval: losses averaged over the interval's steps and
        over ranks, the lr and grad norm of the interval's last step, timing."""
        self._bad_iter = torch.full((), -1, dtype=torch.int64, device=device)
        self._bad_terms: torch.Tensor | None = None
        self._loss_names: list[str] = []

    def step(self, batch: Any, iteration: int, want_grad_norm: bool) -> dict[str, torch.Tensor]:
        """One optimizer step on ``batch``; returns detached losses, ``total`` and, when asked or
        clipping, ``grad_norm`` (before clipping). A skipped step returns ``{}``."""
        images = batch.images.to(self.device, non_blocking=True)
        sizes = batch.image_sizes.to(self.device, non_blocking=True)
        targets = move_targets(batch.targets, self.device)
        with self.precision.autocast():
            outputs = self.model(images, sizes)
        # The outputs keep the autocast dtype: the losses compute in float32 chunk by chunk
        # (a float32 copy of the (N, R, K) logits is the memory they are written to avoid).
        losses = self.criterion(outputs, targets)
        total = sum(losses.values())
        self._loss_names = list(losses)
        terms = torch.stack([v.detach() for v in losses.values()])
        finite = torch.isfinite(total.detach())
        self.optimizer.zero_grad(set_to_none=True)
        scaler = self.precision.scaler
        # Every rank must take the same branch (a skipped backward would stall DDP's all-reduce).
        if self.settings.skip_nonfinite and not bool(all_ranks(finite)):
            self._skip(iteration, terms)
            self.scheduler.step()
            return {}
        self._record_nonfinite(iteration, finite, terms)
        scaler.scale(total).backward()
        result = {k: v.detach() for k, v in losses.items()}
        result["total"] = total.detach()
        if self.settings.clip_grad_norm is not None or want_grad_norm:
            scaler.unscale_(self.optimizer)
            max_norm = self.settings.clip_grad_norm or math.inf
            result["grad_norm"] = nn.utils.clip_grad_norm_(self.params, max_norm).detach()
        scaler.step(self.optimizer)
        scaler.update()
        self.scheduler.step()
        return result

    def _skip(self, iteration: int, terms: torch.Tensor) -> None:
        self.skipped += 1
        message = _describe(iteration, dict(zip(self._loss_names, terms.tolist(), strict=True)))
        if self.skipped > self.settings.skip_nonfinite:
            raise NonFiniteLossError(
                f"{message}; {self.skipped} such steps exceed train.skip_nonfinite="
                f"{self.settings.skip_nonfinite}"
            )
        logger.warning("%s; step skipped (%d of %d allowed)", message, self.skipped,
                       self.settings.skip_nonfinite)  # fmt: skip

    def _record_nonfinite(self, iteration: int, finite: torch.Tensor, terms: torch.Tensor) -> None:
        """Remember the first non-finite iteration on the device, without a host sync."""
        if self._bad_terms is None:
            self._bad_terms = torch.zeros_like(terms)
        first = ~finite & (self._bad_iter < 0)
        self._bad_iter = torch.where(first, iteration, self._bad_iter)
        self._bad_terms = torch.where(first, terms, self._bad_terms)

    def check_finite(self) -> None:
        """Raise :class:`NonFiniteLossError` if a step since the start had a non-finite loss.

        Under DDP the ranks compare notes first, so that they all stop together (the first bad
        iteration of any rank is reported, with that rank's loss terms).
        """
        terms = self._bad_terms.tolist() if self._bad_terms is not None else []
        reports = [r for r in all_gather_objects((int(self._bad_iter), terms)) if r[0] >= 0]
        if reports:
            bad, values = min(reports, key=lambda r: r[0])
            described = _describe(bad, dict(zip(self._loss_names, values, strict=True)))
            raise NonFiniteLossError(
                f"{described}; stopping (lower optim.lr, or set train.skip_nonfinite=K to skip up "
                "to K such steps)"
            )

    def _log(
        self,
        iteration: int,
        losses: dict[str, torch.Tensor],
        grad_norm: torch.Tensor | None,
        bar: tqdm,
        timing: dict,
    ) -> None:
        """Losses (means over the interval and over ranks), lr, grad norm and timing."""
        averaged = {k: float(v) for k, v in reduce_mean(losses).items()}
        values = {f"loss/{k}": v for k, v in averaged.items()}
        values["lr"] = self.optimizer.param_groups[0]["lr"]
        if grad_norm is not None:
            values["grad_norm"] = float(grad_norm)
        values.update(timing)
        self.history.append({"iteration": iteration, **values})
        self.writer.scalars(values, iteration)
        if self.on_log is not None:
            self.on_log(iteration, values)
        bar.set_postfix({k: f"{v:.3f}" for k, v in averaged.items()}, refresh=False)
        logger.debug("iter %d: %s", iteration, values)

    def train(self, start_iter: int = 0) -> int:
        """Train from ``start_iter`` completed steps to ``settings.max_iter``; return it."""
        s = self.settings
        self.model.train()
        batches = iter(self.batches)
        bar = tqdm(
            total=s.max_iter,
            initial=start_iter,
            disable=not (self.is_main and s.progress),
            dynamic_ncols=True,
            desc="train",
            unit="it",
        )
        data_time, last_log = 0.0, start_iter
        sums: dict[str, torch.Tensor] = {}
        counted = 0
        tick = time.perf_counter()
        with bar, logging_redirect_tqdm():
            for it in range(start_iter, s.max_iter):
                done = it + 1
                fetch_start = time.perf_counter()
                batch = next(batches)
                data_time += time.perf_counter() - fetch_start
                log_now = done % s.log_period == 0 or done == s.max_iter
                losses = self.step(batch, it, want_grad_norm=log_now)
                grad_norm = losses.pop("grad_norm", None)
                if losses:  # summed on the device; averaged over the interval when logged
                    sums = {k: sums.get(k, 0) + v for k, v in losses.items()}
                    counted += 1
                bar.update(1)
                if log_now:
                    self.check_finite()
                    steps = done - last_log
                    elapsed = time.perf_counter() - tick
                    timing = {"time/iter_s": elapsed / steps, "time/data_s": data_time / steps}
                    means = {k: v / counted for k, v in sums.items()}
                    self._log(done, means, grad_norm, bar, timing)
                    tick, data_time, last_log = time.perf_counter(), 0.0, done
                    sums, counted = {}, 0
                final = done == s.max_iter
                evaluate_now = final or (s.eval_period and done % s.eval_period == 0)
                checkpoint_now = final or (s.checkpoint_period and done % s.checkpoint_period == 0)
                if evaluate_now or checkpoint_now:
                    self.check_finite()
                if evaluate_now and self.on_evaluate is not None:
                    self.on_evaluate(done)
                    self.model.train()
                if checkpoint_now and self.on_checkpoint is not None:
                    self.on_checkpoint(done)
        self.writer.flush()
        return s.max_iter
