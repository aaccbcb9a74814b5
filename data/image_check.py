"""The image check at start: every image of a dataset exists, has a readable header of the size
the JSON says, and, for a JPEG, ends with its end-of-image marker.

N images. Only headers are read (PIL's lazy open) plus the last bytes of each JPEG, in a thread
pool (file I/O and PIL's header parsing release the GIL for part of the work). The result of each
image is cached with its file's size and mtime, so a second start re-reads only the images that
changed or failed: a COCO-size dataset then costs one ``stat`` per file.
"""

from __future__ import annotations

import logging
import os
import tempfile
import zipfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from data.decode import ImageDecodeError, jpeg_truncation, read_image_size

logger = logging.getLogger(__name__)

IMAGE_CHECK_WORKERS = min(32, (os.cpu_count() or 1) * 4)
"""Threads that read headers: mostly waiting on the disk, so more than the cores."""

_CHUNK = 256
"""Images per task of the pool (one task per image costs more in scheduling than in reading)."""


def image_problem(path: Path, height: int, width: int) -> tuple[str, str] | None:
    """``(kind, message)`` of what is wrong with the image at ``path`` that the JSON says is
    ``height`` × ``width``, or ``None`` when its header is fine.

    Kinds: ``missing_image``, ``unreadable_image``, ``truncated_image``, ``size_mismatch``.
    """
    try:
        actual = read_image_size(path)
        truncated = jpeg_truncation(path)
    except FileNotFoundError:
        return "missing_image", f"file {path} not found"
    except (ImageDecodeError, OSError) as error:
        return "unreadable_image", str(error)
    if truncated:
        return "truncated_image", f"file {path}: {truncated}"
    if actual != (height, width):
        return "size_mismatch", (
            f"file is {actual[1]}x{actual[0]} (w x h) but the JSON says {width}x{height}"
        )
    return None


def _stat(path: Path) -> tuple[int, int]:
    try:
        stat = path.stat()
    except OSError:
        return -1, -1  # never equal to a cached stat: the image is checked (and reported)
    return stat.st_size, stat.st_mtime_ns


def _check_chunk(
    paths: Sequence[Path], sizes: np.ndarray
) -> list[tuple[int, int, tuple[str, str] | None]]:
    """``(size, mtime_ns, problem)`` of each image of a chunk."""
    out = []
    for path, (height, width) in zip(paths, sizes.tolist(), strict=True):
        size, mtime = _stat(path)
        out.append((size, mtime, image_problem(path, height, width)))
    return out


def check_image_headers(
    paths: Sequence[Path],
    sizes: np.ndarray,
    cache_file: Path | None = None,
    cache_key: bytes = b"",
    workers: int = IMAGE_CHECK_WORKERS,
) -> dict[int, tuple[str, str]]:
    """The problems of N images, ``{index: (kind, message)}``, empty when every image is fine.

    ``paths``: the N image files; ``sizes``: int ``(N, 2)`` ``(height, width)`` from the JSON.
    ``cache_file`` (an ``.npz``): per image the file size, mtime (ns) and whether it passed; an
    image whose size and mtime equal the cached ones and that passed is not read again. The cache
    is rewritten atomically after the check; a cache that cannot be read or written is ignored.
    ``cache_key`` names the image list (a digest of the names and sizes): a cache written for
    another list is not used.
    """
    count = len(paths)
    stats = np.array([_stat(path) for path in paths], np.int64).reshape(count, 2)
    cached = _load_cache(cache_file, count, cache_key)
    todo = np.arange(count) if cached is None else np.flatnonzero(~_unchanged(cached, stats))
    ok = np.ones(count, bool)
    problems: dict[int, tuple[str, str]] = {}
    chunks = [todo[i : i + _CHUNK] for i in range(0, len(todo), _CHUNK)]
    with ThreadPoolExecutor(max(1, min(workers, len(chunks)))) as pool:
        results = pool.map(lambda c: _check_chunk([paths[i] for i in c], sizes[c]), chunks)
        for chunk, checked in zip(chunks, results, strict=True):
            for index, (size, mtime, problem) in zip(chunk.tolist(), checked, strict=True):
                stats[index] = (size, mtime)
                if problem is not None:
                    ok[index] = False
                    problems[index] = problem
    if cache_file is not None and (cached is None or len(todo)):
        _save_cache(cache_file, stats, ok, cache_key)
    return dict(sorted(problems.items()))


def _unchanged(cached: dict[str, np.ndarray], stats: np.ndarray) -> np.ndarray:
    """bool ``(N,)``: the image passed last time and its file has the same size and mtime."""
    return cached["ok"] & (cached["stats"] == stats).all(axis=1) & (stats[:, 0] >= 0)


def _load_cache(cache_file: Path | None, count: int, key: bytes) -> dict[str, np.ndarray] | None:
    if cache_file is None or not cache_file.is_file():
        return None
    try:
        with np.load(cache_file, allow_pickle=False) as arrays:
            cached = {name: arrays[name] for name in ("stats", "ok", "key")}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        logger.warning("ignoring the unreadable image-check cache %s: %s", cache_file, error)
        return None
    if (
        cached["key"].tobytes() != key
        or cached["stats"].shape != (count, 2)
        or cached["ok"].shape != (count,)
    ):
        return None
    return cached


def _save_cache(cache_file: Path, stats: np.ndarray, ok: np.ndarray, key: bytes) -> None:
    try:
        descriptor, temporary = tempfile.mkstemp(dir=cache_file.parent, suffix=".tmp")
        try:
            with os.fdopen(descriptor, "wb") as handle:
                np.savez(handle, stats=stats, ok=ok, key=np.frombuffer(key, np.uint8))
            os.replace(temporary, cache_file)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError as error:
        logger.warning("could not write the image-check cache %s: %s", cache_file, error)
