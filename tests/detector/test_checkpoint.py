"""Checkpoint files: the usual file mode, and no temporary file left behind by a killed save."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from detector.checkpoint import load_checkpoint, remove_stale_temporaries, save_checkpoint

ROOT = Path(__file__).resolve().parents[2]

CKPT = {
    "format_version": 1,
    "model": {"w": torch.arange(3.0)},
    "model_config": {},
    "classes": [],
}


@pytest.fixture
def umask() -> Iterator[None]:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_checkpoint_gets_the_usual_mode(tmp_path: Path, umask: None, mask: int, mode: int) -> None:
    os.umask(mask)
    path = save_checkpoint(tmp_path / "last.pt", CKPT)
    assert path.stat().st_mode & 0o777 == mode
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.arange(3.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_remove_stale_temporaries_keeps_checkpoints(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "last.pt", CKPT)
    stale = [tmp_path / ".last.pt.1a2b3c4d.tmp", tmp_path / ".best.pt.deadbeef.tmp"]
    for path in stale:
        path.write_bytes(b"torn")
    (tmp_path / "notes.tmp").write_text("not hidden: not ours")
    (tmp_path / ".dir.tmp").mkdir()
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".dir.tmp", "last.pt", "notes.tmp"]
    assert remove_stale_temporaries(tmp_path / "missing") == []


def test_a_killed_save_leaves_a_temporary_that_cleanup_removes(tmp_path: Path) -> None:
    """A real SIGKILL in the middle of ``torch.save``: the old file survives, the torn temporary
    stays until the next run's cleanup."""
    save_checkpoint(tmp_path / "last.pt", CKPT)
    script = textwrap.dedent(
        f"""
        import os, signal, torch
        from detector.checkpoint import save_checkpoint
        real_save = torch.save
        def torn_save(obj, f):
            f.write(b"half a checkpoint")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save = torn_save
        save_checkpoint({str(tmp_path / "last.pt")!r}, {{"model": {{}}}})
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", script], env=env, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    torn = [p for p in tmp_path.iterdir() if p.name != "last.pt"]
    assert len(torn) == 1 and torn[0].name.startswith(".last.pt.") and torn[0].suffix == ".tmp"
    assert torch.equal(load_checkpoint(tmp_path / "last.pt")["model"]["w"], torch.arange(3.0))
    assert remove_stale_temporaries(tmp_path) == torn
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
