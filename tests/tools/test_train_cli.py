"""tools/train.py from the command line: Hydra overrides, multirun, and one-line config errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import OmegaConf

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
LOSSES = sorted(p.stem for p in (CONFIG_DIR / "loss").glob("*.yaml"))

TINY = [
    "data.generate.num_train=2",
    "data.generate.num_val=2",
    "data.train.transforms.0.short_sizes=[64]",
    "data.train.transforms.0.max_size=96",
    "data.val.transforms.0.short_sizes=[64]",
    "data.val.transforms.0.max_size=96",
    "model.fpn.out_channels=32",
    "model.head.num_convs=1",
    "train.max_iter=2",
    "train.batch_size=2",
    "train.workers=0",
    "train.vis_images=1",
]


def test_multirun_sweeps_gamma(run_tool: Callable, tiny_data: Path, tmp_path: Path) -> None:
    proc = run_tool(
        "train.py", "-m", "loss.gamma=0,2", f"data.root={tiny_data}", *TINY,
        f"hydra.sweep.dir={tmp_path}", "hydra.sweep.subdir=gamma${loss.gamma}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for gamma in (0, 2):
        run = tmp_path / f"gamma{gamma}"
        assert OmegaConf.load(run / "config.yaml").loss.gamma == gamma
        assert (run / "checkpoints" / "last.pt").is_file()
        assert {"AP", "AP50", "per_class_AP"} <= set(json.loads((run / "metrics.json").read_text()))


CLI_ERRORS = [
    (["-m", "loss.gamma=0,1,-1"], "loss.gamma must be >= 0, got -1"),
    (["loss=hinge"], f"unknown loss 'hinge' (choose from {', '.join(LOSSES)})"),
]


@pytest.mark.parametrize(("args", "message"), CLI_ERRORS, ids=[" ".join(a) for a, _ in CLI_ERRORS])
def test_bad_config_exits_2_with_one_line(
    run_tool: Callable, tmp_path: Path, args: list[str], message: str
) -> None:
    proc = run_tool("train.py", *args, f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2
    assert proc.stderr == f"focaldet: config error: {message}\n"
    assert not (tmp_path / "run").exists()


def test_diverged_run_is_recorded_and_the_sweep_goes_on(
    run_tool: Callable, tiny_data: Path, tmp_path: Path
) -> None:
    proc = run_tool(
        "train.py", "-m", "optim.lr=1e30,0.01", f"data.root={tiny_data}", *TINY,
        "train.max_iter=3", "train.clip_grad_norm=null",
        f"hydra.sweep.dir={tmp_path}", "hydra.sweep.subdir=lr${optim.lr}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    diverged = json.loads((tmp_path / "lr1e+30" / "metrics.json").read_text())
    assert diverged["diverged"] is True
    assert diverged["error"].startswith("non-finite loss at iteration ")
    finished = json.loads((tmp_path / "lr0.01" / "metrics.json").read_text())
    assert "AP" in finished and "diverged" not in finished
