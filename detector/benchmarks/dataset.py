"""Dataset start-up and memory at COCO train2017 scale: the compact arrays against the old design.

Usage (standalone until ``tools/benchmark.py what=dataset`` dispatches here)::

    python -m detector.benchmarks.dataset scales=0.25,1,4 workers=0,2,8 out=/tmp/focaldet_bench
    python -m detector.benchmarks.dataset scale=1.0

Generates (once per scale, kept in ``out``) a COCO instances file with train2017's counts times
``scale`` (118,287 images, 860,001 boxes with 24-point polygons, 1 % crowds with RLE counts; no
pixels) and measures each design in a fresh process:

- ``build_s``: construction time (``compact``: first with an empty cache, then
  ``cached_build_s``, a second start from the cache);
- ``main_mb``: resident memory the dataset adds to the main process (VmRSS after construction
  minus VmRSS after the imports; ``cached_main_mb`` for the second start), ``peak_mb`` the
  high-water mark over the same baseline;
- ``pickle_mb``: bytes a DataLoader worker receives (``pickle.dumps`` of the dataset), and the
  time to pickle (``pickle_s``) and unpickle (``unpickle_s``, in the main process) them;
- ``start_s``: from ``iter(loader)`` until every worker has returned its first batch (forkserver
  start, unpickling, one batch each), the workers sharing the machine's cores;
- ``start_extra_s``: ``start_s`` minus the same for the 16-image dataset (what the dataset adds
  to a worker's start; the rest is the worker importing torch, NumPy and OpenCV);
- ``worker_mb``: the largest VmRSS of the workers once each has served a batch, minus the VmRSS
  of a worker of a 16-image dataset measured the same way (its imports and buffers), which is
  ``worker_base_mb``.

Workers serve targets only (``annotations(i)``: boxes, labels, crowd flags; no image decoding), so
the figures are the dataset's, not the decoder's. The old design is ``data/coco.py`` at
``legacy_ref`` read with ``git show`` (a pycocotools ``COCO`` plus a dict per image).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

TRAIN2017_IMAGES = 118_287
TRAIN2017_BOXES = 860_001
COCO_CAT_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
IMAGE_SHAPES = ((480, 640), (640, 480), (427, 640), (640, 427), (512, 512))
POLYGON_POINTS = 24
LEGACY_MODULE = "focaldet_legacy_coco"
MIB = 1 << 20


def generate(path: Path, scale: float, seed: int = 0, chunk: int = 50_000) -> Path:
    """Write a train2017-shaped instances file with ``scale`` × its images and boxes.

    Annotations are drawn and written ``chunk`` at a time, so memory stays bounded at any scale.
    """
    rng = np.random.default_rng(seed)
    num_images, num_boxes = round(TRAIN2017_IMAGES * scale), round(TRAIN2017_BOXES * scale)
    shapes = np.array(IMAGE_SHAPES)[rng.integers(0, len(IMAGE_SHAPES), num_images)]
    owner = np.sort(rng.integers(0, num_images, num_boxes))
    images = [
        {"license": 1, "file_name": f"{i + 1:012d}.jpg", "height": int(h), "width": int(w),
         "date_captured": "2013-11-14 17:02:52", "id": i + 1}
        for i, (h, w) in enumerate(shapes.tolist())
    ]  # fmt: skip
    categories = [{"supercategory": "s", "id": c, "name": f"class{c}"} for c in COCO_CAT_IDS]
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with partial.open("w") as handle:
        handle.write('{"info": {}, "licenses": [], "images": ' + json.dumps(images))
        handle.write(', "annotations": [')
        for first in range(0, num_boxes, chunk):
            ids = np.arange(first, min(first + chunk, num_boxes))
            handle.write(", " if first else "")
            handle.write(", ".join(map(json.dumps, _annotations(rng, ids, owner[ids], shapes))))
        handle.write('], "categories": ' + json.dumps(categories) + "}")
    partial.replace(path)
    return path


def _annotations(
    rng: np.random.Generator, ids: np.ndarray, owner: np.ndarray, shapes: np.ndarray
) -> list[dict[str, Any]]:
    """Annotations ``ids`` (0-based) of images ``owner``: polygons, every 100th a crowd (RLE)."""
    height, width = shapes[owner, 0], shapes[owner, 1]
    bw, bh = rng.uniform(4, width / 2), rng.uniform(4, height / 2)
    x, y = rng.uniform(0, width - bw), rng.uniform(0, height - bh)
    unit = rng.uniform(0, 1, (len(ids), POLYGON_POINTS, 2))
    polygons = np.round(unit * np.stack([bw, bh], 1)[:, None] + np.stack([x, y], 1)[:, None], 2)
    bbox = np.round(np.stack([x, y, bw, bh], 1), 2).tolist()
    out = []
    for k, ann_id in enumerate(ids.tolist()):
        crowd = ann_id % 100 == 0
        segmentation: Any = [polygons[k].ravel().tolist()]
        if crowd:
            segmentation = {"counts": [int(v) for v in unit[k, :, 0] * 500], "size": [1, 1]}
        out.append(
            {"segmentation": segmentation, "area": round(bbox[k][2] * bbox[k][3], 2),
             "iscrowd": int(crowd), "image_id": int(owner[k]) + 1, "bbox": bbox[k],
             "category_id": COCO_CAT_IDS[ann_id % len(COCO_CAT_IDS)], "id": ann_id + 1}
        )  # fmt: skip
    return out


class TargetsOnly(torch.utils.data.Dataset):
    """Serves image ``i``'s boxes, labels and crowd flags without reading its pixels."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if hasattr(self.dataset, "records"):  # the old design: a dict per image
            record = self.dataset.records[index]
            return {key: record[key] for key in ("boxes", "labels", "iscrowd")}
        return self.dataset.annotations(index)


def keep_list(batch: list) -> list:
    """Collate that returns the batch as it is."""
    return batch


def _rss_mb(pid: int | str = "self", key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def _serve(dataset: Any, workers: int) -> dict[str, float]:
    """Start ``workers`` forkserver workers, one batch each; their start time and memory."""
    loader = torch.utils.data.DataLoader(
        TargetsOnly(dataset), batch_size=2, num_workers=workers, collate_fn=keep_list,
        multiprocessing_context="forkserver" if workers else None,
        persistent_workers=workers > 0,
    )  # fmt: skip
    start = time.perf_counter()
    iterator = iter(loader)
    for _ in range(max(workers, 1)):  # batches go to the workers round-robin
        next(iterator)
    elapsed = time.perf_counter() - start
    pids = [w.pid for w in getattr(iterator, "_workers", [])]
    worker_mb = max((_rss_mb(pid) for pid in pids), default=0.0)
    del iterator
    return {"start_s": elapsed, "worker_rss_mb": worker_mb}


def measure(design: str, ann_file: str, workers: int, cache_dir: str) -> dict[str, float]:
    """One design in this (fresh) process: build, pickle, serve with ``workers`` workers."""
    if design == "legacy":
        from focaldet_legacy_coco import CocoDetection  # noqa: PLC0415 (written by run())
    else:
        from data.coco import CocoDetection  # noqa: PLC0415
    base = _rss_mb()
    start = time.perf_counter()
    img_dir = Path(ann_file).parent
    if design == "legacy":
        dataset = CocoDetection(ann_file, img_dir)
    else:
        dataset = CocoDetection(ann_file, img_dir, cache_dir=cache_dir)
    out = {"build_s": time.perf_counter() - start, "main_mb": _rss_mb() - base}
    out["peak_mb"] = _rss_mb(key="VmHWM") - base
    start = time.perf_counter()
    blob = pickle.dumps(dataset)
    out["pickle_mb"], out["pickle_s"] = len(blob) / MIB, time.perf_counter() - start
    start = time.perf_counter()
    pickle.loads(blob)  # what each worker does before its first sample
    out["unpickle_s"] = time.perf_counter() - start
    del blob
    out.update(_serve(dataset, workers))
    return out


def _child(design: str, ann_file: Path, workers: int, cache_dir: Path, legacy_dir: Path) -> dict:
    """:func:`measure` in a fresh interpreter (clean memory figures)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(legacy_dir), *sys.path])
    code = (
        "import json, sys; from detector.benchmarks.dataset import measure; "
        "print(json.dumps(measure(*sys.argv[1:3], int(sys.argv[3]), sys.argv[4])))"
    )
    args = [sys.executable, "-c", code, design, str(ann_file), str(workers), str(cache_dir)]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"{design} {ann_file} workers={workers}:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _legacy_module(legacy_ref: str, folder: Path) -> Path:
    source = subprocess.run(
        ["git", "show", f"{legacy_ref}:data/coco.py"], capture_output=True, text=True, check=True
    ).stdout
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{LEGACY_MODULE}.py").write_text(source)
    return folder


def run(
    scales: tuple[float, ...] = (0.25, 1.0, 4.0),
    workers: tuple[int, ...] = (0, 2, 8),
    designs: tuple[str, ...] = ("compact", "legacy"),
    out: str = "/tmp/focaldet_bench_dataset",
    legacy_ref: str = "945bd7e",
    skip: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Measure every ``design × scale × workers`` (``skip``: ``"legacy:4:8"``-style entries left
    out for memory); returns ``{"rows": [...], "uptime": ...}``."""
    root = Path(out)
    legacy_dir = _legacy_module(legacy_ref, root / "legacy")
    baseline = root / "baseline" / "ann.json"
    generate(baseline, 16 / TRAIN2017_IMAGES)  # 8 batches of 2: one for each of 8 workers
    rows, bases = [], {}
    for scale in scales:
        ann_file = root / f"scale{scale:g}" / "instances.json"
        if not ann_file.is_file():
            generate(ann_file, scale)
        for design in designs:
            for count in workers:
                if f"{design}:{scale:g}:{count}" in skip:
                    rows.append({"design": design, "scale": scale, "workers": count, "skipped": 1})
                    continue
                cache_dir = root / "cache" / f"{design}-{scale:g}-{count}"
                if (design, count) not in bases:
                    bases[design, count] = _child(design, baseline, count, cache_dir, legacy_dir)
                base = bases[design, count]
                shutil.rmtree(cache_dir, ignore_errors=True)  # the next build is a first one
                row = {"design": design, "scale": scale, "workers": count,
                       "json_mb": ann_file.stat().st_size / MIB}  # fmt: skip
                row.update(_child(design, ann_file, count, cache_dir, legacy_dir))
                row["worker_mb"] = row.pop("worker_rss_mb") - base["worker_rss_mb"]
                row["worker_base_mb"] = base["worker_rss_mb"]
                row["start_extra_s"] = row["start_s"] - base["start_s"]
                if design == "compact":  # a second start, reading the cache just written
                    cached = _child(design, ann_file, 0, cache_dir, legacy_dir)
                    row["cached_build_s"] = cached["build_s"]
                    row["cached_main_mb"] = cached["main_mb"]
                rows.append(row)
                print(json.dumps(row), flush=True)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return {"rows": rows, "uptime": uptime}


def format_table(result: dict[str, Any]) -> str:
    """A Markdown table of :func:`run`'s rows."""
    keys = ("build_s", "cached_build_s", "main_mb", "cached_main_mb", "peak_mb", "pickle_mb",
            "pickle_s", "unpickle_s", "start_s", "start_extra_s", "worker_mb",
            "worker_base_mb")  # fmt: skip
    lines = [
        "| design | scale | workers | " + " | ".join(keys) + " |",
        "|---" * (3 + len(keys)) + "|",
    ]
    for row in result["rows"]:
        cells = [f"{row[k]:.2f}" if k in row else "—" for k in keys]
        if row.get("skipped"):
            cells = ["skipped (memory)"] + [""] * (len(keys) - 1)
        lines.append(f"| {row['design']} | {row['scale']:g} | {row['workers']} | "
                     + " | ".join(cells) + " |")  # fmt: skip
    return "\n".join(lines + [f"\nuptime at the end: {result['uptime']}"])
