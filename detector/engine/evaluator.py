"""COCO evaluation: run the detector over a loader, gather across ranks, score COCO-style.

Metrics are pycocotools' 12 summary numbers (AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100,
ARs, ARm, ARl) on a 0–100 scale, plus AP per class. A split with no ground truth in an area range
gives -1 there, as pycocotools does. A model that detects nothing scores 0 instead of crashing
in ``COCO.loadRes([])``.

Detections travel as one ``(D, 7)`` float64 array per evaluation, in pycocotools' numpy results
layout ``[image_id, x, y, w, h, score, category_id]`` (:data:`DETECTION_COLUMNS`), never as D
Python dicts: at COCO scale (5,000 images × 100 detections) the dicts cost seconds and hundreds
of MB. Scoring uses faster-coco-eval where installed (its C++ evaluate/accumulate give the same
arrays as pycocotools), else pycocotools; ``backend=pycocotools`` forces the reference.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn

from data.ranks import rank_and_world_size
from detector.engine.distributed import all_gather_objects
from detector.engine.precision import MixedPrecision

logger = logging.getLogger(__name__)

STAT_NAMES = (
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)  # fmt: skip
"""Names of ``COCOeval.stats`` in order."""

DETECTION_COLUMNS = ("image_id", "x", "y", "w", "h", "score", "category_id")
"""Columns of a detections array (pycocotools' ``loadNumpyAnnotations`` layout; xywh pixels)."""

EVAL_BACKENDS = ("auto", "faster_coco_eval", "pycocotools")
"""``auto``: faster-coco-eval where installed, else pycocotools (the reference)."""

_SUMMARY_LINES = (
    ("Average Precision", "0.50:0.95", "all", 100),
    ("Average Precision", "0.50", "all", 100),
    ("Average Precision", "0.75", "all", 100),
    ("Average Precision", "0.50:0.95", "small", 100),
    ("Average Precision", "0.50:0.95", "medium", 100),
    ("Average Precision", "0.50:0.95", "large", 100),
    ("Average Recall", "0.50:0.95", "all", 1),
    ("Average Recall", "0.50:0.95", "all", 10),
    ("Average Recall", "0.50:0.95", "all", 100),
    ("Average Recall", "0.50:0.95", "small", 100),
    ("Average Recall", "0.50:0.95", "medium", 100),
    ("Average Recall", "0.50:0.95", "large", 100),
)


@dataclass
class Sample:
    """One validation image kept for drawing: its pixels and boxes in input coordinates."""

    image: torch.Tensor
    """uint8 ``(3, h, w)`` (the valid part of the padded batch)."""
    detections: dict[str, torch.Tensor]
    target: dict[str, Any]


@dataclass
class CocoScores:
    """What COCOeval accumulated: the arrays behind the summary, PR curves and per-class tables.

    T IoU thresholds (.5:.05:.95), R recall points (101), K categories, A area ranges (all, small,
    medium, large), M max-detection limits (1, 10, 100); -1 marks an undefined entry (no ground
    truth), as in pycocotools.
    """

    stats: np.ndarray
    """``(12,)`` the summary numbers on a 0–1 scale, in :data:`STAT_NAMES` order."""
    precision: np.ndarray
    """``(T, R, K, A, M)`` interpolated precision at each recall point."""
    recall: np.ndarray
    """``(T, K, A, M)`` the highest recall reached."""
    iou_thrs: np.ndarray
    rec_thrs: np.ndarray
    cat_ids: list[int]
    max_dets: list[int]
    backend: str


@dataclass
class Predictions:
    """COCO-format detections of one rank (or of all, once gathered) and the kept samples."""

    detections: np.ndarray = field(default_factory=lambda: np.zeros((0, 7)))
    """``(D, 7)`` float64 in :data:`DETECTION_COLUMNS` order, original-image pixels."""
    image_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """``(I,)`` every image predicted on, with or without detections."""
    samples: list[Sample] = field(default_factory=list)
    scores: CocoScores | None = None
    """Rank 0's COCOeval arrays once :func:`evaluate` has scored (``None`` elsewhere)."""

    @property
    def results(self) -> list[dict[str, Any]]:
        """The detections as COCO result dicts (for ``predictions.json``)."""
        return coco_results(self.detections)


def to_coco_array(
    detections: Sequence[dict[str, torch.Tensor]],
    image_ids: Sequence[int],
    label_to_cat_id: Sequence[int],
) -> np.ndarray:
    """N images' detections (``boxes (D_i, 4)`` xyxy, ``scores (D_i,)``, ``labels (D_i,)``) as
    one ``(ΣD_i, 7)`` array in :data:`DETECTION_COLUMNS` order with the dataset's category ids.

    One device-to-host copy for the whole batch; widths and heights are taken in float64 from
    the float32 corners.
    """
    if not detections:
        return np.zeros((0, 7))
    # boxes, score and label side by side on the device, then a single copy to the host
    # (labels < 2**24 are exact in float32).
    packed = torch.cat(
        [torch.cat([d["boxes"].float(), d["scores"].float()[:, None], d["labels"][:, None]], 1)
         for d in detections]
    ).cpu().numpy().astype(np.float64)  # fmt: skip
    counts = [len(d["scores"]) for d in detections]
    out = np.empty((len(packed), 7))
    out[:, 0] = np.repeat(np.asarray(image_ids, dtype=np.float64), counts)
    out[:, 1:3] = packed[:, :2]
    out[:, 3:5] = packed[:, 2:4] - packed[:, :2]
    out[:, 5] = packed[:, 4]
    out[:, 6] = np.asarray(label_to_cat_id, dtype=np.float64)[packed[:, 5].astype(np.int64)]
    return out


def coco_results(detections: np.ndarray) -> list[dict[str, Any]]:
    """A ``(D, 7)`` detections array as COCO result dicts (``bbox`` xywh, dataset category ids)."""
    return [
        {"image_id": int(r[0]), "category_id": int(r[6]), "bbox": r[1:5], "score": r[5]}
        for r in detections.tolist()
    ]


def to_coco_results(
    detections: dict[str, torch.Tensor], image_id: int, label_to_cat_id: Sequence[int]
) -> list[dict[str, Any]]:
    """One image's detections (``boxes (D, 4)`` xyxy, ``scores (D,)``, ``labels (D,)``) as COCO
    result entries with ``bbox`` in xywh and the dataset's category ids."""
    return coco_results(to_coco_array([detections], [image_id], label_to_cat_id))


def detections_array(results: np.ndarray | Sequence[dict[str, Any]]) -> np.ndarray:
    """COCO results (a ``(D, 7)`` array or result dicts) as a ``(D, 7)`` float64 array."""
    if isinstance(results, np.ndarray):
        if results.ndim != 2 or results.shape[1] != 7:
            raise ValueError(f"detections array must be (D, 7), got {results.shape}")
        return results.astype(np.float64, copy=False)
    rows = [[r["image_id"], *r["bbox"], r["score"], r["category_id"]] for r in results]
    return np.asarray(rows, dtype=np.float64).reshape(-1, 7)


def _scale_to_input(detections: dict[str, torch.Tensor], target: dict[str, Any]) -> dict:
    (h, w), (oh, ow) = target["size"], target["orig_size"]
    scale = torch.tensor([w / ow, h / oh, w / ow, h / oh], device=detections["boxes"].device)
    return {**detections, "boxes": detections["boxes"] * scale}


@torch.no_grad()
def predict(
    model: nn.Module,
    postprocessor: nn.Module,
    loader: Iterable,
    label_to_cat_id: Sequence[int],
    device: torch.device,
    precision: MixedPrecision | None = None,
    keep_samples: int = 0,
) -> Predictions:
    """Detections of this rank's share of ``loader`` (batches of ``data.Batch``), as COCO results.

    Boxes are in each image's original pixels (the post-processor undoes the data resize).
    """
    was_training = model.training
    model.eval()
    precision = precision or MixedPrecision(device)
    out = Predictions()
    chunks: list[np.ndarray] = []
    image_ids: list[int] = []
    try:
        for batch in loader:
            images = batch.images.to(device, non_blocking=True)
            sizes = batch.image_sizes.to(device)
            with precision.autocast():
                outputs = model(images, sizes)
            orig_sizes = torch.tensor([t["orig_size"] for t in batch.targets], device=device)
            detections = postprocessor(outputs, orig_sizes)
            ids = [t["image_id"] for t in batch.targets]
            chunks.append(to_coco_array(detections, ids, label_to_cat_id))
            image_ids += ids
            for i, (det, target) in enumerate(zip(detections, batch.targets, strict=True)):
                if len(out.samples) < keep_samples:
                    h, w = target["size"]
                    det_cpu = {k: v.cpu() for k, v in _scale_to_input(det, target).items()}
                    out.samples.append(Sample(batch.images[i, :, :h, :w], det_cpu, target))
    finally:
        model.train(was_training)
    out.detections = np.concatenate(chunks) if chunks else np.zeros((0, 7))
    out.image_ids = np.asarray(image_ids, dtype=np.int64)
    return out


def predict_images(
    predictor: Any, dataset: Any, label_to_cat_id: Sequence[int], batch_size: int = 8
) -> Predictions:
    """Detections of ``predictor`` (a :class:`detector.Predictor`, e.g. an exported file's) on
    every image of ``dataset`` (a :class:`data.coco.CocoDetection`), decoded from its file and
    resized by the predictor's own transforms, as COCO results."""
    chunks: list[np.ndarray] = []
    image_ids = [dataset.image_id(i) for i in range(len(dataset))]
    for start in range(0, len(dataset), batch_size):
        indices = range(start, min(start + batch_size, len(dataset)))
        found = predictor.predict_arrays([dataset.load(i)[0] for i in indices])
        detections = [{"boxes": d.boxes, "scores": d.scores, "labels": d.labels} for d in found]
        chunks.append(to_coco_array(detections, image_ids[indices.start : indices.stop],
                                    label_to_cat_id))  # fmt: skip
    out = Predictions(image_ids=np.asarray(image_ids, dtype=np.int64))
    out.detections = np.concatenate(chunks) if chunks else np.zeros((0, 7))
    return out


def gather_predictions(local: Predictions) -> Predictions:
    """Merge every rank's predictions; images a padded sampler gave twice are counted once.

    A single process gets its own array back (no copy).
    """
    parts: list[np.ndarray] = []
    seen = np.zeros(0, dtype=np.int64)
    for detections, image_ids in all_gather_objects((local.detections, local.image_ids)):
        new = np.setdiff1d(image_ids, seen)
        keep = np.isin(detections[:, 0], new)
        parts.append(detections if keep.all() else detections[keep])
        seen = np.union1d(seen, new)
    merged = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return Predictions(merged, seen, local.samples)


def resolve_backend(backend: str) -> str:
    """The scoring backend ``backend`` names (``auto`` resolved); one-line error if unusable."""
    if backend not in EVAL_BACKENDS:
        raise ValueError(f"eval backend must be one of {', '.join(EVAL_BACKENDS)}, got {backend!r}")
    installed = importlib.util.find_spec("faster_coco_eval") is not None
    if backend == "faster_coco_eval" and not installed:
        raise ValueError(
            "eval backend faster_coco_eval is not installed (pip install faster-coco-eval), "
            "choose auto or pycocotools"
        )
    if backend == "auto":
        return "faster_coco_eval" if installed else "pycocotools"
    return backend


def _results_coco(coco_cls: type, coco_gt: Any, detections: np.ndarray) -> Any:
    """What ``coco_gt.loadRes`` builds for bbox results, from the array in one pass (and for an
    empty array too, where pycocotools' ``loadRes([])`` raises IndexError)."""
    known = np.asarray(coco_gt.getImgIds(), dtype=np.float64)
    unknown = np.setdiff1d(detections[:, 0], known)
    if unknown.size:
        raise ValueError(
            f"detections name image ids the ground truth does not have: {unknown[:5].astype(int)}"
        )
    area = detections[:, 3] * detections[:, 4]
    rows = np.column_stack([detections, area]).tolist()
    annotations = [
        {"image_id": int(i), "bbox": [x, y, w, h], "score": s, "category_id": int(c), "area": a,
         "id": n, "iscrowd": 0}
        for n, (i, x, y, w, h, s, c, a) in enumerate(rows, start=1)
    ]  # fmt: skip
    coco_dt = coco_cls()
    coco_dt.dataset = {
        "images": list(coco_gt.dataset["images"]),
        "categories": [dict(c) for c in coco_gt.dataset["categories"]],
        "annotations": annotations,
    }
    coco_dt.createIndex()
    return coco_dt


def build_cocoeval(coco_gt: COCO, detections: np.ndarray, backend: str) -> Any:
    """A COCOeval of ``backend`` (resolved, see :func:`resolve_backend`) over the ``(D, 7)``
    ``detections``, ready for ``evaluate``, ``accumulate`` and ``summarize``."""
    if backend == "faster_coco_eval":
        import faster_coco_eval

        gt = faster_coco_eval.COCO(coco_gt.dataset)  # shares the annotation dicts, no copy
        dt = _results_coco(faster_coco_eval.COCO, gt, detections)
        return faster_coco_eval.COCOeval_faster(gt, dt, "bbox", print_function=lambda *a: 0)
    return COCOeval(coco_gt, _results_coco(COCO, coco_gt, detections), iouType="bbox")


def coco_score(
    coco_gt: COCO, results: np.ndarray | Sequence[dict[str, Any]], backend: str = "auto"
) -> CocoScores:
    """Score COCO results (:func:`detections_array` input) with the bbox evaluation of
    ``backend``; returns the summary and the accumulated arrays."""
    name = resolve_backend(backend)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = build_cocoeval(coco_gt, detections_array(results), name)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    params = evaluator.params
    return CocoScores(
        stats=np.asarray(evaluator.stats[:12], dtype=np.float64),
        precision=np.asarray(evaluator.eval["precision"]),
        recall=np.asarray(evaluator.eval["recall"]),
        iou_thrs=np.asarray(params.iouThrs),
        rec_thrs=np.asarray(params.recThrs),
        cat_ids=[int(c) for c in params.catIds],
        max_dets=[int(m) for m in params.maxDets],
        backend=name,
    )


# The metrics' ``warning`` for a split without boxes (logged by :func:`evaluate`).
NO_GROUND_TRUTH = "the validation set has no ground-truth boxes, so AP and AR are undefined (-1)"


def class_labels(categories: Sequence[dict[str, Any]]) -> dict[int, str]:
    """Category id → the label that per-class metrics and reports use: the category's name, or
    ``"name (id)"`` for the categories whose name another category shares (so none is lost)."""
    counts = Counter(c["name"] for c in categories)
    return {
        c["id"]: c["name"] if counts[c["name"]] == 1 else f"{c['name']} ({c['id']})"
        for c in categories
    }


def scores_to_metrics(scores: CocoScores, coco_gt: COCO, num_detections: int) -> dict[str, Any]:
    """``AP`` … ``ARl`` (×100; -1 where undefined), ``per_class_AP`` (class label of
    :func:`class_labels` → AP×100, ``None`` for a class without ground truth),
    ``num_detections``, and a ``warning`` (:data:`NO_GROUND_TRUTH`) when there is no box to
    score against."""
    metrics: dict[str, Any] = {
        name: float(v * 100) if v >= 0 else -1.0
        for name, v in zip(STAT_NAMES, scores.stats, strict=True)
    }
    # Area "all", 100 detections, as the summary's first line.
    precision = scores.precision[:, :, :, 0, -1]
    labels = class_labels(coco_gt.dataset["categories"])
    per_class: dict[str, float | None] = {}
    for k, cat_id in enumerate(scores.cat_ids):
        valid = precision[:, :, k][precision[:, :, k] > -1]
        per_class[labels[cat_id]] = float(np.mean(valid) * 100) if valid.size else None
    metrics.update(per_class_AP=per_class, num_detections=num_detections)
    if not any(not a.get("iscrowd", 0) for a in coco_gt.dataset["annotations"]):
        metrics["warning"] = NO_GROUND_TRUTH
    return metrics


def coco_evaluate(
    coco_gt: COCO, results: np.ndarray | Sequence[dict[str, Any]], backend: str = "auto"
) -> dict[str, Any]:
    """Score COCO-format ``results`` against ``coco_gt``; see :func:`scores_to_metrics`."""
    return scores_to_metrics(coco_score(coco_gt, results, backend), coco_gt, len(results))


def format_summary(metrics: dict[str, Any]) -> str:
    """pycocotools' 12-line summary, then AP per class, from :func:`coco_evaluate`'s metrics."""
    lines = []
    for name, (title, iou, area, max_dets) in zip(STAT_NAMES, _SUMMARY_LINES, strict=True):
        kind = "(AP)" if title.startswith("Average Precision") else "(AR)"
        value = metrics[name] / 100 if metrics[name] >= 0 else -1.0
        lines.append(
            f" {title:<18} {kind} @[ IoU={iou:<9} | area={area:>6s} | maxDets={max_dets:>3d} ]"
            f" = {value:0.3f}"
        )
    width = max((len(n) for n in metrics["per_class_AP"]), default=5)
    lines.append("per-class AP:")
    for name, ap in metrics["per_class_AP"].items():
        lines.append(f"  {name:<{width}}  {'n/a' if ap is None else f'{ap:.2f}':>6}")
    if "warning" in metrics:
        lines.append(f"warning: {metrics['warning']}")
    return "\n".join(lines)


def evaluate(
    model: nn.Module,
    postprocessor: nn.Module,
    loader: Iterable,
    coco_gt: COCO | None,
    label_to_cat_id: Sequence[int],
    device: torch.device,
    precision: MixedPrecision | None = None,
    keep_samples: int = 0,
    backend: str = "auto",
) -> tuple[dict[str, Any] | None, Predictions]:
    """Predict on every rank, gather, and score on rank 0 (other ranks get ``None`` metrics;
    ``coco_gt`` is read on rank 0 only, so the others may pass ``None``).

    Rank 0's returned predictions carry the COCOeval arrays in ``scores`` (for the report).
    """
    local = predict(model, postprocessor, loader, label_to_cat_id, device, precision, keep_samples)
    merged = gather_predictions(local)
    rank, _ = rank_and_world_size()
    if rank != 0:
        return None, merged
    merged.scores = coco_score(coco_gt, merged.detections, backend)
    metrics = scores_to_metrics(merged.scores, coco_gt, len(merged.detections))
    if "warning" in metrics:
        logger.warning(metrics["warning"])
    return metrics, merged
