"""What training reads of a COCO instances file, in a few flat NumPy arrays, and their cache.

N images, B kept boxes, K categories. Per-image slices come from offsets: the boxes of image
``i`` are ``boxes[box_offsets[i]:box_offsets[i + 1]]``, its UTF-8 file name is
``names[name_offsets[i]:name_offsets[i + 1]]``. A DataLoader worker receives these arrays by
pickle (raw buffers, about 24 MB for COCO train2017) instead of a pycocotools ``COCO`` object and
a dict per image (hundreds of MB and seconds to unpickle; issue 17).

The arrays are cached in an ``.npz`` file (read with ``allow_pickle=False``) keyed by the
annotation file's path, size, mtime and inode, the image folder and :data:`CACHE_VERSION`, so a
second start, a resume or another rank skips the JSON. The first process to miss the cache builds
it under an exclusive ``flock``; the ranks that wait on the lock load the result. The bad-box
policy is not part of the key: the arrays do not depend on it, so the cache keeps the problem
listing and the dataset applies its policy (silent, log, raise) to it on every start.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import astuple, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from data.validate import (
    MIN_BOX_SIDE,
    OUTSIDE_TOLERANCE,
    DatasetError,
    Problem,
    check_structure,
    format_problems,
    load_coco_json,
    sanitize_box,
)

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
"""Part of the cache key: bump it when the arrays or the box cleaning change."""

STAT_KEYS = (
    "images",
    "images_without_boxes",
    "boxes",
    "crowd_boxes",
    "boxes_clipped",
    "boxes_dropped",
    "boxes_negative_size",
)
"""The counts of ``CocoDetection.stats``, in order."""

_ENCODING = ("utf-8", "surrogatepass")  # JSON strings may hold lone surrogates; keep them exact


def _pack(strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Strings as one uint8 buffer and int64 offsets ``(len + 1,)``."""
    encoded = [s.encode(*_ENCODING) for s in strings]
    offsets = _offsets(np.array([len(b) for b in encoded], np.int64))
    return np.frombuffer(b"".join(encoded), np.uint8).copy(), offsets


def _offsets(counts: np.ndarray) -> np.ndarray:
    """int64 ``(len + 1,)`` offsets of consecutive runs of ``counts`` items."""
    offsets = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets


def _unpack(buffer: np.ndarray, offsets: np.ndarray, index: int) -> str:
    return buffer[offsets[index] : offsets[index + 1]].tobytes().decode(*_ENCODING)


@dataclass(frozen=True, eq=False)
class CompactAnnotations:
    """The cleaned annotations of one COCO file (see the module docstring for the layout)."""

    image_ids: np.ndarray
    """int64 ``(N,)``."""
    sizes: np.ndarray
    """int64 ``(N, 2)`` ``(height, width)`` from the JSON."""
    names: np.ndarray
    """uint8: the file names, UTF-8, concatenated."""
    name_offsets: np.ndarray
    """int64 ``(N + 1,)``."""
    boxes: np.ndarray
    """float32 ``(B, 4)`` xyxy, clipped to the image; dropped boxes are not here."""
    labels: np.ndarray
    """int32 ``(B,)`` contiguous labels ``0..K-1``."""
    iscrowd: np.ndarray
    """bool ``(B,)``."""
    box_offsets: np.ndarray
    """int64 ``(N + 1,)``."""
    cat_ids: np.ndarray
    """int64 ``(K,)`` COCO category ids, ascending (label ``k`` is ``cat_ids[k]``)."""
    cat_names: np.ndarray
    """uint8: the category names, UTF-8, concatenated."""
    cat_name_offsets: np.ndarray
    """int64 ``(K + 1,)``."""
    stats: np.ndarray
    """int64 ``(len(STAT_KEYS),)``."""
    box_problems: np.ndarray
    """uint8: UTF-8 lines listing the per-box problems (``format_problems`` without its header),
    empty when there is none; the bad-box policy is applied to it on every load."""

    def __len__(self) -> int:
        return len(self.image_ids)

    def file_name(self, index: int) -> str:
        """File name of image ``index`` as the JSON spells it."""
        return _unpack(self.names, self.name_offsets, index)

    def annotations(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Copies of image ``index``'s boxes float32 ``(M, 4)``, labels int64 ``(M,)`` and crowd
        flags bool ``(M,)`` (copies, so a transform writing in place cannot alter the dataset)."""
        start, stop = self.box_offsets[index], self.box_offsets[index + 1]
        return (
            self.boxes[start:stop].copy(),
            self.labels[start:stop].astype(np.int64),
            self.iscrowd[start:stop].copy(),
        )

    def classes(self) -> list[dict[str, Any]]:
        """``[{"id": cat_id, "name": name}, ...]`` in label order."""
        return [
            {"id": int(cat_id), "name": _unpack(self.cat_names, self.cat_name_offsets, k)}
            for k, cat_id in enumerate(self.cat_ids)
        ]

    def stats_dict(self) -> dict[str, int]:
        """The counts named by :data:`STAT_KEYS`."""
        return {key: int(value) for key, value in zip(STAT_KEYS, self.stats, strict=True)}

    def box_report(self) -> str:
        """The per-box problem lines, ``""`` when there is none."""
        return self.box_problems.tobytes().decode(*_ENCODING)

    def without(self, drop: Iterable[int]) -> CompactAnnotations:
        """These arrays less the images ``drop`` (indices) and their boxes; the categories, stats
        and problem listing are kept as they are."""
        keep = np.ones(len(self), bool)
        keep[list(drop)] = False
        box_counts, name_counts = np.diff(self.box_offsets), np.diff(self.name_offsets)
        boxes_kept = np.repeat(keep, box_counts)
        return replace(
            self,
            image_ids=self.image_ids[keep],
            sizes=self.sizes[keep],
            names=self.names[np.repeat(keep, name_counts)],
            name_offsets=_offsets(name_counts[keep]),
            boxes=self.boxes[boxes_kept],
            labels=self.labels[boxes_kept],
            iscrowd=self.iscrowd[boxes_kept],
            box_offsets=_offsets(box_counts[keep]),
        )

    def image_list_key(self) -> bytes:
        """A digest of the file names and sizes: what the image-check cache is valid for."""
        digest = hashlib.sha256()
        for array in (self.names, self.name_offsets, self.sizes):
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.digest()

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays."""
        return sum(array.nbytes for array in astuple(self))

    def save(self, path: Path) -> None:
        """Write the arrays to ``path`` (an uncompressed ``.npz``) atomically: a reader sees the
        old file or the complete new one, never a partial write."""
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(descriptor, "wb") as handle:
                np.savez(handle, **{f.name: getattr(self, f.name) for f in fields(self)})
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path) -> CompactAnnotations:
        """Read a file written by :meth:`save` (no pickle: ``allow_pickle=False``)."""
        with np.load(path, allow_pickle=False) as arrays:
            return cls(**{f.name: arrays[f.name] for f in fields(cls)})


def build_compact(dataset: Any, img_dir: str | Path, ann_file: str | Path) -> CompactAnnotations:
    """Check a loaded COCO dict and keep what training reads, cleaned as :func:`sanitize_box` says.

    Structural problems raise :class:`DatasetError` naming ``ann_file`` and ``img_dir``.
    Annotations keep their file order within each image (pycocotools' ``imgToAnns`` order).
    """
    problems = structural_problems(dataset, img_dir)
    if problems:
        header = f"dataset {ann_file} with images in {img_dir} is not usable:"
        # One problem fits on the header's line; several are listed one per line.
        one = len(problems) == 1
        raise DatasetError(f"{header} {problems[0]}" if one else format_problems(header, problems))
    categories = sorted(dataset["categories"], key=lambda category: category["id"])
    cat_names, cat_name_offsets = _pack([str(category["name"]) for category in categories])
    images = dataset["images"]
    names, name_offsets = _pack([image["file_name"] for image in images])
    sizes = np.array([(image["height"], image["width"]) for image in images], np.int64)
    sizes = sizes.reshape(-1, 2)
    boxes = _clean_boxes(dataset, sizes, {c["id"]: k for k, c in enumerate(categories)})
    return CompactAnnotations(
        image_ids=np.array([image["id"] for image in images], np.int64),
        sizes=sizes,
        names=names,
        name_offsets=name_offsets,
        cat_ids=np.array([category["id"] for category in categories], np.int64),
        cat_names=cat_names,
        cat_name_offsets=cat_name_offsets,
        **boxes,
    )


def structural_problems(dataset: Any, img_dir: str | Path) -> list[Problem]:
    """The checks that stop the dataset's construction, on the one parsed JSON (no image read).

    The image headers are checked apart from this, on every start and not only when the JSON is
    parsed, since image files change without the JSON changing: see :func:`headers_cache_file`
    and :mod:`data.image_check`.
    """
    return check_structure(dataset, img_dir)


def _clean_boxes(
    dataset: dict[str, Any], sizes: np.ndarray, cat_to_label: dict[int, int]
) -> dict[str, np.ndarray]:
    """Boxes, labels, crowd flags, offsets, stats and problems: :func:`sanitize_box` vectorised.

    The arithmetic is the same float64 sequence as :func:`sanitize_box` (so the kept boxes are
    bit-identical); the messages of the flagged boxes come from :func:`sanitize_box` itself.
    """
    images, anns = dataset["images"], dataset["annotations"]
    index_of = {image["id"]: i for i, image in enumerate(images)}
    count = len(anns)
    owner = np.fromiter((index_of[ann["image_id"]] for ann in anns), np.int64, count)
    order = np.argsort(owner, kind="stable")  # image order, file order within an image
    owner = owner[order]
    xywh = np.array([anns[i]["bbox"] for i in order], np.float64).reshape(-1, 4)
    labels = np.fromiter((cat_to_label[anns[i]["category_id"]] for i in order), np.int32, count)
    iscrowd = np.fromiter((bool(anns[i].get("iscrowd", 0)) for i in order), bool, count)

    height, width = sizes[owner, 0].astype(np.float64), sizes[owner, 1].astype(np.float64)
    x1, y1 = xywh[:, 0], xywh[:, 1]
    x2, y2 = x1 + xywh[:, 2], y1 + xywh[:, 3]
    negative = (xywh[:, 2] < 0) | (xywh[:, 3] < 0)
    tol = OUTSIDE_TOLERANCE
    outside = (x1 < -tol) | (y1 < -tol) | (x2 > width + tol) | (y2 > height + tol)
    x1, x2 = (np.minimum(np.maximum(v, 0.0), width) for v in (x1, x2))
    y1, y2 = (np.minimum(np.maximum(v, 0.0), height) for v in (y1, y2))
    degenerate = ~negative & ((x2 - x1 < MIN_BOX_SIDE) | (y2 - y1 < MIN_BOX_SIDE))
    keep = ~(negative | degenerate)

    problems = []
    for i in np.flatnonzero(negative | outside | degenerate):
        ann, image = anns[order[i]], images[owner[i]]
        where = f"annotation {ann['id']} of image {image['id']} ({image['file_name']})"
        problems.append(sanitize_box(ann["bbox"], image["width"], image["height"], where)[1])
    report = format_problems("", problems).partition("\n")[2] if problems else ""

    per_image = np.bincount(owner[keep], minlength=len(images))
    box_offsets = _offsets(per_image)
    stats = {
        "images": len(images),
        "images_without_boxes": int((per_image == 0).sum()),
        "boxes": int(keep.sum()),
        "crowd_boxes": int(iscrowd[keep].sum()),
        "boxes_clipped": int((outside & keep).sum()),
        "boxes_dropped": int((~keep).sum()),
        "boxes_negative_size": int(negative.sum()),
    }
    return {
        "boxes": np.stack([x1, y1, x2, y2], axis=1)[keep].astype(np.float32),
        "labels": labels[keep],
        "iscrowd": iscrowd[keep],
        "box_offsets": box_offsets,
        "stats": np.array([stats[key] for key in STAT_KEYS], np.int64),
        "box_problems": np.frombuffer(report.encode(*_ENCODING), np.uint8).copy(),
    }


def file_key(ann_file: Path) -> tuple[int, int, int]:
    """``(size, mtime_ns, inode)`` of ``ann_file``: what says the file changed."""
    stat = ann_file.stat()
    return stat.st_size, stat.st_mtime_ns, stat.st_ino


def default_cache_dir(ann_file: Path) -> Path:
    """``.focaldet_cache/`` beside the annotation file (shared by every run, rank and resume that
    reads it), or the user's cache folder where that folder cannot be written."""
    beside = ann_file.parent / ".focaldet_cache"
    if os.access(beside if beside.is_dir() else ann_file.parent, os.W_OK):
        return beside
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "focaldet"


def _cache_paths(ann_file: Path, img_dir: Path, cache_dir: Path) -> tuple[Path, Path, str]:
    """The cache file, its lock file and the glob of older caches of the same file."""
    where = hashlib.sha256(f"{ann_file.resolve()}\0{img_dir.resolve()}".encode()).hexdigest()
    when = hashlib.sha256(repr((CACHE_VERSION, file_key(ann_file))).encode()).hexdigest()
    prefix = f"{ann_file.stem}.{where[:12]}"
    return cache_dir / f"{prefix}.{when[:12]}.npz", cache_dir / f"{prefix}.lock", f"{prefix}.*.npz"


def headers_cache_file(
    ann_file: str | Path, img_dir: str | Path, cache_dir: str | Path | None = None
) -> Path | None:
    """Where the image-check results of ``ann_file``'s images live (beside its arrays' cache), or
    ``None`` where that folder does not exist (the cache could not be made)."""
    ann_file, img_dir = Path(ann_file), Path(img_dir)
    folder = default_cache_dir(ann_file) if cache_dir is None else Path(cache_dir)
    _, lock_file, _ = _cache_paths(ann_file, img_dir, folder)
    # One file per annotation file and image folder (not per JSON version): the results are
    # per image file, and the digest of the image list stored inside says which list they are of.
    return lock_file.with_suffix(".headers") if folder.is_dir() else None


def _try_load(path: Path) -> CompactAnnotations | None:
    if not path.is_file():
        return None
    try:
        return CompactAnnotations.load(path)
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as error:
        logger.warning("ignoring the unreadable dataset cache %s: %s", path, error)
        return None


def build_from_file(ann_file: Path, img_dir: Path) -> CompactAnnotations:
    """Parse ``ann_file`` once (segmentations dropped as they are read) and build the arrays."""
    dataset = load_coco_json(ann_file, drop_keys=("segmentation",))
    return build_compact(dataset, img_dir, ann_file)


def load_compact(
    ann_file: str | Path,
    img_dir: str | Path,
    cache: bool = True,
    cache_dir: str | Path | None = None,
) -> CompactAnnotations:
    """The compact annotations of ``ann_file``, from the cache when it is current.

    ``cache``: read and write the cache; ``cache_dir``: where (default
    :func:`default_cache_dir`). A cache folder that cannot be written is logged and skipped.
    """
    ann_file, img_dir = Path(ann_file), Path(img_dir)
    if not ann_file.is_file():
        raise DatasetError(f"annotation file not found: {ann_file}")
    if not cache:
        return build_from_file(ann_file, img_dir)
    folder = default_cache_dir(ann_file) if cache_dir is None else Path(cache_dir)
    path, lock_file, older = _cache_paths(ann_file, img_dir, folder)
    compact = _try_load(path)  # no lock: the file appears whole (os.replace) or not at all
    if compact is not None:
        return compact
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = lock_file.open("a")
    except OSError as error:
        logger.warning("dataset cache %s not usable (%s); building without it", folder, error)
        return build_from_file(ann_file, img_dir)
    with lock:  # closing the file releases the flock, also when the build raises
        fcntl.flock(lock, fcntl.LOCK_EX)  # the first rank builds, the others wait here
        compact = _try_load(path)  # built by another rank while this one waited
        if compact is None:
            compact = build_from_file(ann_file, img_dir)
            _store(compact, path, folder.glob(older))
    return compact


def _store(compact: CompactAnnotations, path: Path, stale: Iterable[Path]) -> None:
    """Save ``compact`` to ``path`` and remove the caches of earlier versions of the file; a
    failed write (disk full) costs the next start a rebuild, not this run."""
    try:
        for old in stale:
            old.unlink(missing_ok=True)
        compact.save(path)
    except OSError as error:
        logger.warning("could not write the dataset cache %s: %s", path, error)
