"""The training loop on a toy model: non-finite losses, skipping, the lr schedule, autocast."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
import torch
from torch import nn

from data.loader import Batch
from detector import DenseOutputs
from detector.engine.loop import LoopSettings, NonFiniteLossError, Trainer
from detector.engine.optim import build_lr_scheduler, milestones, scaled_lr, warmup_multistep_factor
from detector.engine.precision import MixedPrecision


class Toy(nn.Module):
    """One conv as 'head': (N, 3, H, W) → logits (N, H*W, 2), deltas (N, H*W, 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 1)
        self.seen_dtype: torch.dtype | None = None

    def forward(self, images: torch.Tensor, image_sizes: torch.Tensor) -> DenseOutputs:
        out = self.conv(images.float() / 255)
        self.seen_dtype = out.dtype
        flat = out.flatten(2).transpose(1, 2)  # (N, R, 6)
        anchors = torch.zeros(flat.shape[1], 4)
        return DenseOutputs(flat[..., :2], flat[..., 2:], anchors, [flat.shape[1]], image_sizes)


class ToyCriterion(nn.Module):
    """Squared outputs, with NaN in ``loss_box`` at the steps listed in ``bad``."""

    def __init__(self, bad: set[int]) -> None:
        super().__init__()
        self.bad = bad
        self.calls = 0
        self.dtypes: list[torch.dtype] = []

    def forward(self, outputs: DenseOutputs, targets: list[dict]) -> dict[str, torch.Tensor]:
        self.dtypes.append(outputs.cls_logits.dtype)
        box = outputs.box_deltas.pow(2).mean()
        if self.calls in self.bad:
            box = box * float("nan")
        self.calls += 1
        return {"loss_cls": outputs.cls_logits.pow(2).mean(), "loss_box": box}


def _toy_trainer(
    criterion: nn.Module,
    settings: LoopSettings,
    amp: bool = False,
    **hooks: Callable[[int], None],
) -> Trainer:
    """The toy model under plain SGD (lr 0.1, no momentum or decay) on one repeated batch."""
    torch.manual_seed(0)
    model = Toy()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = build_lr_scheduler(optimizer, settings.max_iter, warmup_iters=0)
    batch = Batch(
        torch.randint(0, 255, (2, 3, 4, 4), dtype=torch.uint8),
        torch.tensor([[4, 4], [4, 4]]),
        [{"boxes": torch.zeros(0, 4)}, {"boxes": torch.zeros(0, 4)}],
    )
    device = torch.device("cpu")
    return Trainer(
        model, criterion, optimizer, scheduler, itertools.repeat(batch),
        MixedPrecision(device, enabled=amp), device, settings, **hooks,
    )  # fmt: skip


def _trainer(bad: set[int], max_iter: int, skip: int = 0, amp: bool = False) -> Trainer:
    settings = LoopSettings(max_iter=max_iter, log_period=5, skip_nonfinite=skip, progress=False)
    return _toy_trainer(ToyCriterion(bad), settings, amp=amp)


def test_non_finite_loss_stops_naming_iteration_and_terms() -> None:
    trainer = _trainer(bad={3, 4}, max_iter=20)
    with pytest.raises(NonFiniteLossError) as info:
        trainer.train()
    message = str(info.value)
    assert message.startswith("non-finite loss at iteration 3: loss_cls=")
    assert ", loss_box=nan; stopping" in message
    # Reported at the next log interval (5 steps), not later.
    assert trainer.criterion.calls == 5


def test_skip_nonfinite_skips_up_to_k_steps() -> None:
    trainer = _trainer(bad={2, 7}, max_iter=10, skip=2)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert trainer.skipped == 2
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert not torch.equal(before["conv.weight"], trainer.model.conv.weight)
    with pytest.raises(NonFiniteLossError, match=r"iteration 7: .*2 such steps exceed "):
        _trainer(bad={2, 7}, max_iter=10, skip=1).train()


def test_outputs_reach_the_criterion_uncopied_under_bf16_autocast(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The trainer makes no float32 copy of the (N, R, K) logits: the criterion's losses compute
    # in float32 chunk by chunk (tests/detector/test_criterion.py checks they are float32).
    # bf16 autocast runs on any CPU (emulated where oneDNN lacks kernels); force it on here.
    monkeypatch.setattr("detector.engine.precision.cpu_supports_bf16", lambda: True)
    trainer = _trainer(bad=set(), max_iter=2, amp=True)
    trainer.train()
    assert trainer.model.seen_dtype == torch.bfloat16
    assert trainer.criterion.dtypes == [torch.bfloat16, torch.bfloat16]
    assert len(trainer.history) == 1 and trainer.history[0]["iteration"] == 2


def test_schedule_matches_the_paper() -> None:
    # 90k iterations: ÷10 at 60k and 80k (§4.1), for a batch of 16 at lr 0.01.
    assert milestones(90_000, [2 / 3, 8 / 9]) == [60_000, 80_000]
    assert scaled_lr(0.01, 16, 16) == 0.01 and scaled_lr(0.01, 16, 4) == 0.0025
    f = lambda i: warmup_multistep_factor(i, [60_000, 80_000], 0.1, 500, 0.001)  # noqa: E731
    assert f(0) == pytest.approx(0.001)
    assert f(250) == pytest.approx(0.001 * 0.5 + 0.5)
    assert f(500) == f(59_999) == 1.0
    assert f(60_000) == pytest.approx(0.1) and f(80_000) == pytest.approx(0.01)
    model = nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02)
    scheduler = build_lr_scheduler(optimizer, 90, warmup_iters=500, warmup_factor=0.5)
    lrs = []
    for _ in range(90):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # The warmup is cut to max_iter // 4 = 22 steps for short runs.
    assert lrs[0] == pytest.approx(0.01) and lrs[22] == pytest.approx(0.02)
    assert lrs[59] == pytest.approx(0.02) and lrs[60] == pytest.approx(0.002)
    assert lrs[80] == pytest.approx(0.0002)


def test_amp_falls_back_to_float32_on_cpus_without_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    import detector.engine.precision as precision

    cpu = torch.device("cpu")
    assert repr(MixedPrecision(cpu, enabled=False)) == "MixedPrecision(float32, scaler=False)"
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: True)
    assert repr(MixedPrecision(cpu, enabled=True)) == "MixedPrecision(bfloat16, scaler=False)"
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: False)
    assert not MixedPrecision(cpu, enabled=True).enabled
    with pytest.raises(ValueError, match="fp16 mixed precision needs CUDA"):
        MixedPrecision(cpu, enabled=True, dtype="fp16")


class HugeCriterion(nn.Module):
    """A loss whose gradient norm is about 10⁶ (a spike such as the end of a warmup)."""

    def forward(self, outputs: DenseOutputs, targets: list[dict]) -> dict[str, torch.Tensor]:
        return {"loss_cls": 1e6 * outputs.cls_logits.sum(), "loss_box": outputs.box_deltas.sum()}


def _update_norm(clip: float | None) -> tuple[float, float]:
    """The norm of one SGD step's parameter update, and the logged (pre-clip) gradient norm."""
    settings = LoopSettings(max_iter=1, log_period=1, clip_grad_norm=clip, progress=False)
    trainer = _toy_trainer(HugeCriterion(), settings)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    after = list(trainer.model.parameters())
    update = torch.cat([(a.detach() - b).flatten() for a, b in zip(after, before, strict=True)])
    return float(update.norm()), trainer.history[0]["grad_norm"]


def test_gradient_clipping_bounds_the_update_by_lr_times_max_norm() -> None:
    norm, grad_norm = _update_norm(clip=1.0)
    assert grad_norm > 1e5  # logged before clipping
    # Plain SGD: the update is lr × the clipped gradient, whose norm is exactly max_norm.
    assert norm == pytest.approx(0.1 * 1.0, rel=1e-4)
    unclipped, _ = _update_norm(clip=None)
    assert unclipped == pytest.approx(0.1 * grad_norm, rel=1e-4)


def test_hooks_run_at_their_periods_and_at_the_end() -> None:
    evaluated: list[int] = []
    saved: list[int] = []
    settings = LoopSettings(
        max_iter=7, log_period=5, eval_period=3, checkpoint_period=2, progress=False
    )
    trainer = _toy_trainer(
        ToyCriterion(set()), settings, on_evaluate=evaluated.append, on_checkpoint=saved.append
    )
    assert trainer.train() == 7
    assert evaluated == [3, 6, 7]
    assert saved == [2, 4, 6, 7]
    assert [h["iteration"] for h in trainer.history] == [5, 7]
    # Resumed at 4 completed steps: the periods count from 0, not from the resume point.
    evaluated.clear(), saved.clear()
    trainer.train(start_iter=4)
    assert (evaluated, saved) == ([6, 7], [6, 7])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_iter": 0}, "max_iter must be >= 1, got 0"),
        ({"log_period": 0}, "log_period must be >= 1, got 0"),
        ({"eval_period": -1}, "eval_period must be >= 0, got -1"),
        ({"checkpoint_period": -2}, "checkpoint_period must be >= 0, got -2"),
        ({"skip_nonfinite": -1}, "skip_nonfinite must be >= 0, got -1"),
        ({"clip_grad_norm": 0.0}, "clip_grad_norm must be > 0 or null, got 0.0"),
    ],
)
def test_loop_settings_reject_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as info:
        LoopSettings(**{"max_iter": 1, **kwargs})
    assert str(info.value) == message
