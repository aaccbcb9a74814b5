"""End to end: a few iterations of the tiny model leave every artefact; resume is exact."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from detector.checkpoint import load_checkpoint
from detector.engine.evaluator import STAT_NAMES
from detector.engine.run import run_training


def test_few_iterations_leave_every_artefact(
    tiny_config: Callable[..., DictConfig], tmp_path: Path
) -> None:
    cfg = tiny_config("train.max_iter=8", "optim.lr=0.02", "train.clip_grad_norm=null")
    result = run_training(cfg, tmp_path)

    losses = [h["loss/total"] for h in result.history]
    assert len(losses) == 8
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses

    saved = OmegaConf.load(tmp_path / "config.yaml")
    assert saved.model.head.num_classes == 5 and list(saved.model.fpn.in_channels) == [
        128,
        256,
        512,
    ]

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(STAT_NAMES) <= set(metrics)
    assert all(-1 <= metrics[k] <= 100 for k in STAT_NAMES)
    assert set(metrics["per_class_AP"]) == {"circle", "square", "triangle", "ring", "cross"}
    assert metrics["iteration"] == 8

    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert last["iteration"] == best["iteration"] == 8
    assert last["model_config"]["head"]["num_classes"] == 5
    assert [c["name"] for c in last["classes"]] == ["circle", "square", "triangle", "ring", "cross"]
    assert last["postprocess_config"]["_target_"] == "detector.RetinaNetPostProcessor"
    assert last["metrics"]["AP"] == metrics["AP"]
    assert {"optimizer", "scheduler", "scaler", "rng", "config"} <= set(last)

    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0}).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"loss/loss_cls", "loss/loss_box", "loss/total", "lr", "grad_norm"} <= scalars
    assert {f"val/{k}" for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")} <= scalars
    assert "val_per_class_AP/circle" in scalars
    assert events.Tags()["images"] == ["val/image_0", "val/image_1"]
    assert [e.value for e in events.Scalars("loss/total")] == pytest.approx(losses, rel=1e-5)


def test_bf16_autocast_trains_on_cpu(
    tiny_config: Callable[..., DictConfig], tmp_path: Path
) -> None:
    result = run_training(tiny_config("train.max_iter=2", "train.amp=true"), tmp_path)
    assert all(torch.isfinite(torch.tensor(h["loss/total"])) for h in result.history)
    assert next(result.model.parameters()).dtype == torch.float32


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_resume_gives_the_same_weights(
    tiny_config: Callable[..., DictConfig], tmp_path: Path
) -> None:
    # A constant lr (no warmup, decay at the very end) so that max_iter=N and max_iter=2N follow
    # the same schedule; the train split has no random augmentation here.
    common = [
        "optim.steps=[1.0]",
        "data.train.transforms=[${data.val.transforms.0}]",
        "train.vis_images=0",
    ]
    straight = tmp_path / "straight"
    run_training(tiny_config("train.max_iter=4", *common), straight)
    resumed = tmp_path / "resumed"
    run_training(tiny_config("train.max_iter=2", *common), resumed)
    first = load_checkpoint(resumed / "checkpoints" / "last.pt")
    assert first["iteration"] == 2
    run_training(tiny_config("train.max_iter=4", "train.resume=true", *common), resumed)

    a, b = (
        _weights(straight / "checkpoints" / "last.pt"),
        _weights(resumed / "checkpoints" / "last.pt"),
    )
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=key)
    assert not torch.equal(first["model"]["head.cls_score.weight"], a["head.cls_score.weight"])
    assert load_checkpoint(resumed / "checkpoints" / "last.pt")["iteration"] == 4


def test_resume_without_checkpoint_is_an_error(
    tiny_config: Callable[..., DictConfig], tmp_path: Path
) -> None:
    with pytest.raises(FileNotFoundError, match="train.resume=true but .*last.pt does not exist"):
        run_training(tiny_config("train.max_iter=2", "train.resume=true"), tmp_path)
