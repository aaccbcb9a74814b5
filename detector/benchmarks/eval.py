"""COCO evaluation at COCO scale: scoring with each backend, and the evaluator's own handling.

``python -m detector.benchmarks.eval [images=5000] [boxes=7] [detections=100] [repeat=3]
[report=true]`` (later ``python tools/benchmark.py what=eval ...``) generates a COCO-like
validation set (N images of 640×480 at most, a Poisson number of boxes averaging ``boxes`` over
80 sparse category ids as COCO's, 1% crowd regions) and ``detections`` per image (jittered copies
of the boxes, some of the wrong class, and false detections), then times, ``repeat`` times each
(medians reported):

- scoring with every backend, split into building the COCO objects, ``evaluate`` and
  ``accumulate`` + ``summarize``, and checks that the backends' numbers are identical;
- the evaluator's gathering and conversion of the post-processor's outputs for all images
  (``to_coco_array`` per batch of 8, then ``gather_predictions``) with its peak of new Python
  and NumPy memory, against the per-image result dicts it used to build;
- the report's numbers (``build_report``: matching, F1, confusion matrix) and its files.
"""

from __future__ import annotations

import contextlib
import io
import os
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO

from detector.engine.eval_report import build_report
from detector.engine.eval_report_files import write_report
from detector.engine.evaluator import (
    Predictions,
    build_cocoeval,
    coco_score,
    gather_predictions,
    resolve_backend,
    to_coco_array,
)

COCO_CATEGORY_IDS = [i for i in range(1, 91) if i not in {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}]
"""COCO's 80 sparse category ids."""


def make_dataset(images: int, boxes: float, seed: int = 0) -> COCO:
    """A COCO-like ground truth: ``images`` images, Poisson(``boxes``) boxes each."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(320, [641, 481], size=(images, 2))
    counts = rng.poisson(boxes, images)
    image_of = np.repeat(np.arange(images), counts)
    wh = np.exp(rng.uniform(np.log(4), np.log(300), (len(image_of), 2)))
    wh = np.minimum(wh, sizes[image_of] - 1)
    xy = rng.uniform(0, 1, (len(image_of), 2)) * (sizes[image_of] - wh)
    cats = rng.choice(COCO_CATEGORY_IDS, len(image_of))
    crowd = rng.uniform(size=len(image_of)) < 0.01
    anns = [
        {"id": n, "image_id": int(i) + 1, "category_id": int(c), "bbox": [x, y, w, h],
         "area": w * h, "iscrowd": int(k)}
        for n, (i, c, x, y, w, h, k) in enumerate(
            zip(image_of, cats, *np.column_stack([xy, wh]).T.tolist(), crowd, strict=True), start=1
        )
    ]  # fmt: skip
    coco = COCO()
    coco.dataset = {
        "images": [
            {"id": i + 1, "width": int(w), "height": int(h), "file_name": f"{i + 1:012d}.jpg"}
            for i, (w, h) in enumerate(sizes.tolist())
        ],
        "categories": [{"id": c, "name": f"class{c}"} for c in COCO_CATEGORY_IDS],
        "annotations": anns,
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def make_outputs(coco: COCO, per_image: int, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    """What the post-processor returns for each image: ``per_image`` detections (boxes xyxy,
    scores in descending order, contiguous labels), about 3 jittered copies of each box."""
    rng = np.random.default_rng(seed)
    label_of = {c: k for k, c in enumerate(COCO_CATEGORY_IDS)}
    outputs = []
    for image_id in coco.getImgIds():
        anns = coco.imgToAnns[image_id]
        img = coco.imgs[image_id]
        gt = np.asarray([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        labels = np.asarray([label_of[a["category_id"]] for a in anns], dtype=np.int64)
        copies = min(3 * len(gt), per_image)
        pick = rng.integers(0, max(len(gt), 1), copies)
        boxes = np.empty((per_image, 4))
        if copies:
            jitter = rng.normal(0, 0.1, (copies, 4)) * gt[pick][:, [2, 3, 2, 3]]
            boxes[:copies] = gt[pick] + jitter
        wh = rng.uniform(4, 200, (per_image - copies, 2))
        boxes[copies:, :2] = rng.uniform(0, 1, (per_image - copies, 2)) * [
            img["width"],
            img["height"],
        ]
        boxes[copies:, 2:] = wh
        boxes[:, 2:] = np.abs(boxes[:, 2:]) + boxes[:, :2] + 1  # xywh -> xyxy
        out_labels = rng.integers(0, len(COCO_CATEGORY_IDS), per_image)
        right = rng.uniform(size=copies) < 0.8
        out_labels[:copies] = np.where(right, labels[pick], out_labels[:copies])
        scores = np.sort(rng.uniform(0.05, 1, per_image))[::-1].copy()
        outputs.append(
            {"boxes": torch.from_numpy(boxes).float(), "scores": torch.from_numpy(scores).float(),
             "labels": torch.from_numpy(out_labels)}
        )  # fmt: skip
    return outputs


def _median_time(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def _clocks() -> tuple[float, float]:
    """Wall and CPU seconds: on a shared machine the CPU time is the steadier of the two."""
    return time.perf_counter(), time.process_time()


def time_backend(coco: COCO, detections: np.ndarray, backend: str, repeat: int) -> dict[str, Any]:
    """Median seconds of each scoring phase with ``backend``, and its stats and precision."""
    phases: dict[str, list[float]] = {"load": [], "evaluate": [], "accumulate_summarize": []}
    cpu: list[float] = []
    evaluator = None
    for _ in range(repeat):
        with contextlib.redirect_stdout(io.StringIO()):
            t0, c0 = _clocks()
            evaluator = build_cocoeval(coco, detections, backend)
            t1 = time.perf_counter()
            evaluator.evaluate()
            t2 = time.perf_counter()
            evaluator.accumulate()
            evaluator.summarize()
            t3, c3 = _clocks()
        for key, seconds in zip(phases, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            phases[key].append(seconds)
        cpu.append(c3 - c0)
    result: dict[str, Any] = {k: statistics.median(v) for k, v in phases.items()}
    result["total"] = sum(result[k] for k in phases)
    result["cpu_total"] = statistics.median(cpu)
    result["stats"] = np.asarray(evaluator.stats[:12])
    result["precision"] = np.asarray(evaluator.eval["precision"])
    return result


def _convert_and_gather(outputs: list[dict[str, torch.Tensor]], batch: int) -> np.ndarray:
    chunks, ids = [], []
    for start in range(0, len(outputs), batch):
        part = outputs[start : start + batch]
        image_ids = list(range(start + 1, start + 1 + len(part)))
        chunks.append(to_coco_array(part, image_ids, COCO_CATEGORY_IDS))
        ids += image_ids
    local = Predictions(np.concatenate(chunks), np.asarray(ids))
    del chunks
    return gather_predictions(local).detections


def _per_image_dicts(outputs: list[dict[str, torch.Tensor]]) -> list[dict[str, Any]]:
    """The former conversion, for comparison: one result dict per detection, image by image."""
    results = []
    for image_id, det in enumerate(outputs, start=1):
        xyxy = det["boxes"].float()
        xywh = torch.cat([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], 1).tolist()
        for box, score, label in zip(
            xywh, det["scores"].tolist(), det["labels"].tolist(), strict=True
        ):
            results.append({"image_id": image_id, "category_id": COCO_CATEGORY_IDS[label],
                            "bbox": box, "score": score})  # fmt: skip
    return results


def time_gathering(outputs: list[dict[str, torch.Tensor]], repeat: int) -> dict[str, Any]:
    """Median seconds and peak traced memory of the conversion + gathering of ``outputs``."""
    seconds, detections = _median_time(lambda: _convert_and_gather(outputs, 8), repeat)
    del detections
    tracemalloc.start()
    detections = _convert_and_gather(outputs, 8)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    former, _ = _median_time(lambda: _per_image_dicts(outputs), repeat)
    return {"seconds": seconds, "peak_bytes": peak, "array_bytes": detections.nbytes,
            "former_dicts_seconds": former}  # fmt: skip


def run(
    images: int = 5000,
    boxes: float = 7.0,
    detections: int = 100,
    repeat: int = 3,
    backends: str = "pycocotools,faster_coco_eval",
    report: bool = True,
) -> dict[str, Any]:
    """Generate the data, time everything (medians of ``repeat``), return the figures."""
    names = [resolve_backend(b) for b in backends.split(",") if b]
    coco = make_dataset(images, boxes)
    outputs = make_outputs(coco, detections)
    figures: dict[str, Any] = {
        "images": images,
        "boxes": len(coco.dataset["annotations"]),
        "detections": images * detections,
        "repeat": repeat,
        "load_average_1min": os.getloadavg()[0],
        "cpus": os.cpu_count(),
        "gathering": time_gathering(outputs, repeat),
    }
    array = _convert_and_gather(outputs, 8)
    del outputs
    timed = {name: time_backend(coco, array, name, repeat) for name in names}
    reference = timed[names[0]]
    for result in timed.values():
        for key in ("stats", "precision"):
            result[f"max_{key}_difference"] = float(np.abs(result[key] - reference[key]).max())
        result["time_vs_first"] = result["total"] / reference["total"]
        result["cpu_vs_first"] = result["cpu_total"] / reference["cpu_total"]
    for result in timed.values():
        del result["stats"], result["precision"]
    figures["backends"] = timed
    if report:
        scores = coco_score(coco, array, names[-1])
        seconds, built = _median_time(lambda: build_report(coco, array, scores), repeat)
        with tempfile.TemporaryDirectory() as out:
            written, _ = _median_time(lambda: write_report(built, out), repeat)
        figures["report"] = {"build_seconds": seconds, "write_seconds": written}
    return figures


def format_figures(figures: dict[str, Any]) -> str:
    """The figures of :func:`run` as a few readable lines."""
    g = figures["gathering"]
    lines = [
        f"{figures['images']} images, {figures['boxes']} boxes, {figures['detections']} detections;"
        f" medians of {figures['repeat']}; load average {figures['load_average_1min']:.2f} on "
        f"{figures['cpus']} CPUs",
        f"gathering + conversion: {g['seconds']:.3f} s, peak {g['peak_bytes'] / 2**20:.1f} MiB "
        f"(the array: {g['array_bytes'] / 2**20:.1f} MiB); per-image dicts as before: "
        f"{g['former_dicts_seconds']:.3f} s",
        f"{'backend':<18}{'load':>8}{'evaluate':>10}{'acc+sum':>9}{'total':>8}{'× first':>9}"
        f"{'cpu':>8}{'× first':>9}{'Δstats':>10}{'Δprecision':>12}",
    ]
    for name, r in figures["backends"].items():
        lines.append(
            f"{name:<18}{r['load']:>8.2f}{r['evaluate']:>10.2f}{r['accumulate_summarize']:>9.2f}"
            f"{r['total']:>8.2f}{r['time_vs_first']:>9.3f}{r['cpu_total']:>8.2f}"
            f"{r['cpu_vs_first']:>9.3f}{r['max_stats_difference']:>10.1e}"
            f"{r['max_precision_difference']:>12.1e}"
        )
    if "report" in figures:
        r = figures["report"]
        lines.append(
            f"report: numbers {r['build_seconds']:.2f} s, files {r['write_seconds']:.2f} s"
        )
    return "\n".join(lines)
