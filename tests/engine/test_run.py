"""End to end: a few iterations of the tiny model leave every artefact; resume is exact."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from data.coco import CocoDetection
from detector.checkpoint import load_checkpoint
from detector.engine.evaluator import STAT_NAMES, Predictions
from detector.engine.loop import NonFiniteLossError, Trainer
from detector.engine.run import Driver, build_run, run_training


def test_few_iterations_leave_every_artefact(
    tiny_config: Callable[..., DictConfig], tmp_path: Path
) -> None:
    cfg = tiny_config("train.max_iter=8", "optim.lr=0.02", "train.clip_grad_norm=null")
    result = run_training(cfg, tmp_path)

    losses = [h["loss/total"] for h in result.history]
    assert len(losses) == 8
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    # By a margin, not by noise: the last three steps average under 85% of the first three.
    assert sum(losses[-3:]) < 0.85 * sum(losses[:3]), losses
    # The lr after each step: 0.02 per 16 images scaled to the batch of 4, ÷10 at round(2/3 × 8)
    # = 5 and round(8/9 × 8) = 7 (no warmup in the tiny config).
    assert [h["iteration"] for h in result.history] == list(range(1, 9))
    lrs = [h["lr"] for h in result.history]
    assert lrs == pytest.approx([0.005] * 4 + [0.0005] * 2 + [0.00005] * 2, rel=1e-9)

    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoints",
        "config.yaml",
        "eval",
        next(p.name for p in tmp_path.glob("events.out.tfevents.*")),
        "metrics.json",
        "results.csv",
        "results.png",
    ]
    # One evaluation, at the end.
    assert [p.name for p in (tmp_path / "eval").iterdir()] == ["8"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best.pt", "last.pt"]

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


def test_final_evaluation_failure_keeps_the_trained_model(
    tiny_config: Callable[..., DictConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = build_run(tiny_config("train.max_iter=2", "train.vis_images=0"), tmp_path)

    def broken_evaluation(*args: object, **kwargs: object) -> None:
        assert (tmp_path / "checkpoints" / "last.pt").is_file()  # saved before it runs
        raise OSError("validation image unreadable")

    monkeypatch.setattr("detector.engine.run.evaluate", broken_evaluation)
    with pytest.raises(OSError, match="validation image unreadable"):
        Driver(run)()
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert last["iteration"] == 2
    trained = run.model.state_dict()
    assert last["model"].keys() == trained.keys()
    for key, value in last["model"].items():
        assert torch.equal(value, trained[key].cpu()), key


def test_resume_without_checkpoint_is_an_error(
    tiny_config: Callable[..., DictConfig], tmp_path: Path
) -> None:
    with pytest.raises(FileNotFoundError, match="train.resume=true but .*last.pt does not exist"):
        run_training(tiny_config("train.max_iter=2", "train.resume=true"), tmp_path)


def test_resume_continues_the_warmup_and_decay_schedule(
    tiny_config: Callable[..., DictConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Warmup over min(4, 4 // 4) = 1 step from 0.1 × lr, ÷10 at steps 3 and 4; the run is
    # interrupted after the checkpoint of step 1. A resumed run that started its schedule over
    # would warm up again at step 1 and decay one step late.
    common = [
        "train.max_iter=4",
        "optim.warmup_iters=4",
        "optim.warmup_factor=0.1",
        "data.train.transforms=[${data.val.transforms.0}]",
        "train.vis_images=0",
    ]
    straight = run_training(tiny_config(*common), tmp_path / "straight")
    run_dir = tmp_path / "resumed"
    step = Trainer.step

    def interrupted_step(
        self: Trainer, batch: object, iteration: int, want_grad_norm: bool
    ) -> dict:
        if iteration == 1:
            raise KeyboardInterrupt
        return step(self, batch, iteration, want_grad_norm)

    monkeypatch.setattr(Trainer, "step", interrupted_step)
    with pytest.raises(KeyboardInterrupt):
        run_training(tiny_config(*common, "train.checkpoint_period=1"), run_dir)
    monkeypatch.setattr(Trainer, "step", step)
    resumed = run_training(tiny_config(*common, "train.resume=true"), run_dir)

    lrs = [h["lr"] for h in straight.history]
    assert lrs == pytest.approx([0.005, 0.005, 0.0005, 0.00005], rel=1e-9)
    assert [h["iteration"] for h in resumed.history] == [2, 3, 4]
    assert [h["lr"] for h in resumed.history] == lrs[1:]
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=key)


def test_non_finite_image_stops_the_run_before_anything_is_saved(
    tiny_config: Callable[..., DictConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A NaN pixel (a float image from a custom dataset) is a recorded divergence: the run stops
    at the next log naming the iteration and the loss terms, and writes no checkpoint."""
    getitem = CocoDetection.__getitem__

    def poisoned(self: CocoDetection, index: int) -> tuple[torch.Tensor, dict]:
        image, target = getitem(self, index)
        image = image.float() / 255
        image[:, 0, 0] = float("nan")
        return image, target

    monkeypatch.setattr(CocoDetection, "__getitem__", poisoned)
    with pytest.raises(NonFiniteLossError) as info:
        run_training(tiny_config("train.max_iter=4", "train.log_period=2"), tmp_path / "stop")
    assert str(info.value).startswith(
        "non-finite loss at iteration 0: loss_cls=nan, loss_box=nan; stopping"
    )
    assert not (tmp_path / "stop" / "checkpoints").exists()

    with pytest.raises(NonFiniteLossError, match=r"iteration 1: .*2 such steps exceed .*=1$"):
        run_training(tiny_config("train.max_iter=4", "train.skip_nonfinite=1"), tmp_path / "skip")
    assert not (tmp_path / "skip" / "checkpoints").exists()


def test_best_checkpoint_keeps_the_highest_ap(
    tiny_config: Callable[..., DictConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scripted = iter([5.0, 3.0, 7.0, 6.0])

    def fake_evaluate(*args: object, **kwargs: object) -> tuple[dict, Predictions]:
        return {"AP": next(scripted), "AP50": 0.0, "per_class_AP": {}}, Predictions()

    monkeypatch.setattr("detector.engine.run.evaluate", fake_evaluate)
    monkeypatch.setattr("detector.engine.run.record_evaluation", lambda *args: None)
    run = build_run(tiny_config("train.max_iter=10", "train.vis_images=0"), tmp_path)
    driver = Driver(run)
    best = []
    for iteration in (1, 2, 3):
        driver.evaluate(iteration)
        saved = load_checkpoint(run.best_path)
        best.append((saved["iteration"], saved["metrics"]["AP"]))
    assert best == [(1, 5.0), (1, 5.0), (3, 7.0)]
    assert run.metrics["AP"] == 7.0 and run.metrics["iteration"] == 3
    driver.save_last(3)
    run.writer.close()

    resumed = build_run(tiny_config("train.max_iter=10", "train.resume=true"), tmp_path)
    assert (resumed.start_iter, resumed.best_ap) == (3, 7.0)
    Driver(resumed).evaluate(4)  # AP 6 < 7: best.pt stays at iteration 3
    assert load_checkpoint(resumed.best_path)["iteration"] == 3
    resumed.writer.close()
