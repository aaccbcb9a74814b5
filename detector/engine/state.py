"""What a training checkpoint holds beyond the weights, and how a run resumes from it.

The file format is the one of ``docs/design.md`` (``detector/checkpoint.py`` writes it atomically
and reads it with ``weights_only=True``), so every value here is a tensor or a Python primitive:
the NumPy and Python RNG states are converted to tensors and lists. The data stream needs no
state of its own: the batches and their augmentations are functions of the seed and the iteration
(``data.loader.build_train_loader(start_batch=...)``).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from detector.checkpoint import FORMAT_VERSION


def capture_rng_state() -> dict[str, Any]:
    """The torch (CPU and CUDA), NumPy and Python generator states as checkpointable values."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": np_kind,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (or ``model`` itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def inference_checkpoint(
    model: nn.Module,
    model_config: dict[str, Any],
    postprocess_config: dict[str, Any],
    classes: list[dict[str, Any]],
) -> dict[str, Any]:
    """The part of the format that evaluate and infer need to rebuild and run the model."""
    return {
        "format_version": FORMAT_VERSION,
        "model": unwrap(model).state_dict(),
        "model_config": model_config,
        "postprocess_config": postprocess_config,
        "classes": classes,
    }


def training_checkpoint(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    iteration: int,
    *,
    model_config: dict[str, Any],
    postprocess_config: dict[str, Any],
    classes: list[dict[str, Any]],
    config: dict[str, Any],
    metrics: dict[str, Any],
) -> dict[str, Any]:
    """A full checkpoint: ``iteration`` is the number of optimizer steps already taken."""
    checkpoint = inference_checkpoint(model, model_config, postprocess_config, classes)
    checkpoint.update(
        optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict(),
        scaler=scaler.state_dict(),
        iteration=iteration,
        rng=capture_rng_state(),
        config=config,
        metrics=metrics,
    )
    return checkpoint


def restore_training_state(
    checkpoint: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
) -> int:
    """Load every state of a :func:`training_checkpoint`; return the iteration to start from."""
    missing = [k for k in ("optimizer", "scheduler", "iteration", "rng") if k not in checkpoint]
    if missing:
        raise KeyError(f"checkpoint has no training state to resume from: missing {missing}")
    unwrap(model).load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    if isinstance(scheduler, LambdaLR):
        # The schedule is the resumed run's own (its max_iter may differ from the interrupted
        # run's): take the next step's lr from it, not from the saved optimizer.
        for group, base_lr, factor in zip(
            optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True
        ):
            group["lr"] = base_lr * factor(scheduler.last_epoch)
    if checkpoint.get("scaler"):
        scaler.load_state_dict(checkpoint["scaler"])
    restore_rng_state(checkpoint["rng"])
    return int(checkpoint["iteration"])
