"""Checkpoint files: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors and Python primitives (see ``docs/design.md``), so it can
be read without unpickling arbitrary objects.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1

REQUIRED_KEYS = ("format_version", "model", "model_config", "classes")


TEMPORARY_SUFFIX = ".tmp"
"""Checkpoints are written to ``.<name>.<random>.tmp`` beside the target, then renamed."""


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable or not a focaldet checkpoint."""


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new, empty temporary file beside ``path``: ``(descriptor, its path)``.

    Not ``tempfile.mkstemp``: that creates mode 0600, and the renamed checkpoint would keep it.
    ``os.open`` with 0666 gets the usual mode, 0666 less the umask (0644 under umask 022).
    """
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{TEMPORARY_SUFFIX}"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary file name beside {path}")


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that interrupted saves left in ``directory``; return them.

    A kill during :func:`save_checkpoint` leaves its ``.<name>.<random>.tmp`` file (as large as
    a checkpoint). Call this when a run starts, before it saves anything into ``directory``.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = [
        p for p in directory.glob(f".*{TEMPORARY_SUFFIX}") if p.is_file() and not p.is_symlink()
    ]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def save_checkpoint(path: str | os.PathLike, obj: dict[str, Any]) -> Path:
    """Write ``obj`` to ``path`` atomically: a temporary file in the same folder, then a rename.

    A crash while saving leaves the previous file intact, never a truncated one (a kill leaves
    the temporary file: :func:`remove_stale_temporaries`). The file gets the usual mode (0666
    less the umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a focaldet checkpoint with ``weights_only=True`` and check its format."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing here
        raise CheckpointError(f"checkpoint {path} could not be read: {e}") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a dict")
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} is not a focaldet checkpoint: missing {', '.join(missing)}"
        )
    if obj["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format {obj['format_version']}; this focaldet reads up to "
            f"{FORMAT_VERSION}"
        )
    return obj
