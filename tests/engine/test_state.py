"""Checkpoint state and resume: the schedule, the optimizer and every RNG continue exactly."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig
from torch import nn

from detector.checkpoint import load_checkpoint, save_checkpoint
from detector.engine.optim import build_lr_scheduler, build_sgd
from detector.engine.precision import MixedPrecision
from detector.engine.run import build_run, run_training
from detector.engine.state import restore_training_state, training_checkpoint

MAX_ITER = 12
"""Warmup over 3 steps (max_iter // 4), then ÷10 at steps 6 and 9."""


Objects = tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]


def _objects() -> Objects:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    optimizer = build_sgd(model, lr=0.1, momentum=0.9, weight_decay=1e-4)
    scheduler = build_lr_scheduler(
        optimizer, MAX_ITER, steps=[0.5, 0.75], gamma=0.1, warmup_iters=100, warmup_factor=0.1
    )
    return model, optimizer, scheduler


def _steps(objects: Objects, start: int, stop: int) -> list[float]:
    """Steps ``start..stop-1`` on inputs that depend on the step only; the lr of each step."""
    model, optimizer, scheduler = objects
    lrs = []
    for step in range(start, stop):
        x = torch.arange(3.0) + step
        optimizer.zero_grad()
        model(x).pow(2).sum().backward()
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def _save(path: Path, objects: Objects, iteration: int) -> None:
    model, optimizer, scheduler = objects
    scaler = MixedPrecision(torch.device("cpu")).scaler
    checkpoint = training_checkpoint(
        model, optimizer, scheduler, scaler, iteration, model_config={}, postprocess_config={},
        classes=[], config={}, metrics={},
    )  # fmt: skip
    save_checkpoint(path, checkpoint)


def _restore(path: Path, objects: Objects) -> int:
    model, optimizer, scheduler = objects
    scaler = MixedPrecision(torch.device("cpu")).scaler
    return restore_training_state(load_checkpoint(path), model, optimizer, scheduler, scaler)


def test_resume_continues_warmup_and_step_decay(tmp_path: Path) -> None:
    straight_objects = _objects()
    straight = _steps(straight_objects, 0, MAX_ITER)
    # Warmup 0.01 → 0.1 over 3 steps, decay at 6 and 9: the schedule the resume must continue.
    expected = [0.01, 0.04, 0.07] + [0.1] * 3 + [0.01] * 3 + [0.001] * 3
    assert straight == pytest.approx(expected, rel=1e-12)

    first = _objects()
    interrupted = _steps(first, 0, 2)  # stopped inside the warmup
    _save(tmp_path / "last.pt", first, 2)
    resumed_objects = _objects()
    start = _restore(tmp_path / "last.pt", resumed_objects)
    assert start == 2
    resumed = interrupted + _steps(resumed_objects, start, MAX_ITER)
    assert resumed == straight
    for a, b in zip(straight_objects[0].parameters(), resumed_objects[0].parameters(), strict=True):
        assert torch.equal(a, b)


def test_resume_restores_every_random_generator(tmp_path: Path) -> None:
    objects = _objects()
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    torch.rand(5), np.random.rand(5), random.random()  # advance them past their seeds
    _save(tmp_path / "last.pt", objects, 0)
    expected = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])

    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    _restore(tmp_path / "last.pt", objects)
    assert torch.equal(torch.rand(4), expected[0])
    assert np.array_equal(np.random.rand(4), expected[1])
    assert [random.random() for _ in range(4)] == expected[2]


def test_resumed_loader_keeps_the_forkserver_context(
    tiny_config: Callable[..., DictConfig], tmp_path: Path
) -> None:
    # Plain fork can deadlock a worker on its first resize (data/loader.py): the loader of a
    # resumed run, positioned after the batches already seen, must use forkserver too.
    run_training(tiny_config("train.max_iter=1", "train.vis_images=0"), tmp_path)
    run = build_run(
        tiny_config("train.max_iter=2", "train.resume=true", "train.workers=2"), tmp_path
    )
    run.writer.close()
    assert run.start_iter == 1
    assert run.train_loader.num_workers == 2
    assert run.train_loader.multiprocessing_context.get_start_method() == "forkserver"
