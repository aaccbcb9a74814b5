"""``kill -9`` of ``tools/train.py`` with 2 workers: nothing is left running, and a resumed run
(with 2 workers, or after a change to 0) ends with the uninterrupted run's weights, bit for bit,
under the default random flip."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from detector.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow  # five tiny training runs in subprocesses

ROOT = Path(__file__).resolve().parents[2]
MAX_ITER = 5

RUN = [
    "data.train.transforms.0.short_sizes=[64]",
    "data.train.transforms.0.max_size=96",
    "data.val.transforms.0.short_sizes=[64]",
    "data.val.transforms.0.max_size=96",
    "data.val.batch_size=4",
    "model.fpn.out_channels=32",
    "model.head.num_convs=1",
    "train.batch_size=4",
    f"train.max_iter={MAX_ITER}",
    "train.device=cpu",
    "train.amp=false",
    "train.log_period=1",
    "train.eval_period=0",
    "train.checkpoint_period=1",
    "train.progress=false",
    "train.vis_images=0",
    "optim.warmup_iters=0",
    "evaluation.report=false",
]
"""The tiny model of tests/engine/conftest.py (its TINY list, repeated as command-line arguments:
test modules cannot import the conftest under pytest's importlib mode) with the default train
transforms (resize, then a horizontal flip with p = 0.5) and a checkpoint after every step."""


def _command(data_root: Path, run_dir: Path, *overrides: str) -> list[str]:
    return [
        sys.executable, str(ROOT / "tools" / "train.py"), f"data.root={data_root}", *RUN,
        f"hydra.run.dir={run_dir}", *overrides,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    # One intra-op thread in every run: the weights are compared bit for bit.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _start(data_root: Path, run_dir: Path, *overrides: str) -> subprocess.Popen:
    # stderr to a file, not a pipe: processes a kill leaves behind would hold a pipe open.
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(run_dir.with_suffix(".stderr"), "w") as stderr:
        return subprocess.Popen(
            _command(data_root, run_dir, *overrides), cwd=ROOT, env=_env(),
            stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip


def _finish(proc: subprocess.Popen, run_dir: Path) -> None:
    proc.wait(timeout=600)
    assert proc.returncode == 0, run_dir.with_suffix(".stderr").read_text()


def _stat(pid: int) -> tuple[str, int, int] | None:
    """``(state, parent pid, start time)`` of a process from /proc, ``None`` once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return fields[0], int(fields[1]), int(fields[19])


def _descendants(pid: int) -> dict[int, int]:
    """Every process whose parent chain includes ``pid``: pid → start time."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            children.setdefault(stat[1], []).append(int(entry.name))
            starts[int(entry.name)] = stat[2]
    found, todo = {}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found[child] = starts[child]
            todo.append(child)
    return found


def _running(processes: dict[int, int]) -> list[int]:
    """The ``processes`` (pid → start time) still running: not gone, not a zombie (orphans may
    stay zombies where PID 1 does not reap), not a new process that reused the pid."""
    return [
        pid
        for pid, start in processes.items()
        if (stat := _stat(pid)) is not None and stat[0] != "Z" and stat[2] == start
    ]


@pytest.fixture(scope="module")
def runs(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An uninterrupted run, and a run killed with ``kill -9`` once a checkpoint is on disk;
    what the kill left running is recorded."""
    base = tmp_path_factory.mktemp("resume_kill")
    straight = _start(synthetic_root, base / "straight", "train.workers=2")
    # Evaluated at every step too, so that the validation loader's workers are running as well
    # (evaluating must not change the training either).
    killed = _start(synthetic_root, base / "killed", "train.workers=2", "train.eval_period=1")
    last = base / "killed" / "checkpoints" / "last.pt"
    while not last.exists():
        assert killed.poll() is None, (base / "killed.stderr").read_text()
        time.sleep(0.02)
    descendants = _descendants(killed.pid)
    names = {pid: Path(f"/proc/{pid}/comm").read_text().strip() for pid in descendants}
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    deadline = time.monotonic() + 10
    while _running(descendants) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = {pid: names[pid] for pid in _running(descendants)}
    for pid in left:  # leave no stray process behind, whatever the test says
        os.kill(pid, signal.SIGKILL)
    _finish(straight, base / "straight")
    return {"base": base, "names": names, "left": left, "killed": killed}


def test_kill_leaves_no_process_behind(runs: dict[str, Any]) -> None:
    assert runs["killed"].returncode == -signal.SIGKILL
    # The train and val workers, the forkserver that forked them and the resource tracker.
    assert list(runs["names"].values()).count("pt_data_worker") == 4, runs["names"]
    assert len(runs["names"]) >= 6, runs["names"]
    assert runs["left"] == {}


@pytest.mark.parametrize("workers", [2, 0])
def test_resume_after_kill_is_bit_exact(
    runs: dict[str, Any], synthetic_root: Path, workers: int
) -> None:
    base = runs["base"]
    run_dir = base / f"resumed_{workers}"
    shutil.copytree(base / "killed", run_dir)
    start = load_checkpoint(run_dir / "checkpoints" / "last.pt")["iteration"]
    assert 1 <= start < MAX_ITER
    resumed_run = _start(synthetic_root, run_dir, "train.resume=true", f"train.workers={workers}")
    _finish(resumed_run, run_dir)

    resumed = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    straight = load_checkpoint(base / "straight" / "checkpoints" / "last.pt")
    assert resumed["iteration"] == straight["iteration"] == MAX_ITER
    assert resumed["model"].keys() == straight["model"].keys()
    for key, value in straight["model"].items():
        assert torch.equal(resumed["model"][key], value), key
