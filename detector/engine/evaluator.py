"""COCO evaluation: run the detector over a loader, gather across ranks, score with pycocotools.

Metrics are pycocotools' 12 summary numbers (AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100,
ARs, ARm, ARl) on a 0–100 scale, plus AP per class. A split with no ground truth in an area range
gives -1 there, as pycocotools does. A model that detects nothing scores 0 instead of crashing
in ``COCO.loadRes([])``.
"""

from __future__ import annotations

import contextlib
import io
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

STAT_NAMES = (
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)  # fmt: skip
"""Names of ``COCOeval.stats`` in order."""

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
class Predictions:
    """COCO-format results of one rank, and the samples it kept for drawing."""

    results: list[dict[str, Any]] = field(default_factory=list)
    image_ids: list[int] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)


def to_coco_results(
    detections: dict[str, torch.Tensor], image_id: int, label_to_cat_id: Sequence[int]
) -> list[dict[str, Any]]:
    """One image's detections (``boxes (D, 4)`` xyxy, ``scores (D,)``, ``labels (D,)``) as COCO
    result entries with ``bbox`` in xywh and the dataset's category ids."""
    boxes = detections["boxes"].float().cpu()
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    scores = detections["scores"].float().cpu().tolist()
    labels = detections["labels"].cpu().tolist()
    return [
        {"image_id": image_id, "category_id": label_to_cat_id[label], "bbox": box, "score": score}
        for box, score, label in zip(xywh, scores, labels, strict=True)
    ]


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
    try:
        for batch in loader:
            images = batch.images.to(device, non_blocking=True)
            sizes = batch.image_sizes.to(device)
            with precision.autocast():
                outputs = model(images, sizes)
            orig_sizes = torch.tensor([t["orig_size"] for t in batch.targets], device=device)
            detections = postprocessor(outputs, orig_sizes)
            for i, (det, target) in enumerate(zip(detections, batch.targets, strict=True)):
                out.results += to_coco_results(det, target["image_id"], label_to_cat_id)
                out.image_ids.append(target["image_id"])
                if len(out.samples) < keep_samples:
                    h, w = target["size"]
                    det_cpu = {k: v.cpu() for k, v in _scale_to_input(det, target).items()}
                    out.samples.append(Sample(batch.images[i, :, :h, :w], det_cpu, target))
    finally:
        model.train(was_training)
    return out


def gather_predictions(local: Predictions) -> Predictions:
    """Merge every rank's predictions; images a padded sampler gave twice are counted once."""
    merged = Predictions()
    seen: set[int] = set()
    for part in all_gather_objects(Predictions(local.results, local.image_ids)):
        new_ids = set(part.image_ids) - seen
        merged.results += [r for r in part.results if r["image_id"] in new_ids]
        merged.image_ids += sorted(new_ids)
        seen |= new_ids
    merged.samples = local.samples
    return merged


def _empty_results(coco_gt: COCO) -> COCO:
    """A results COCO with no detections (``loadRes`` indexes ``anns[0]`` and crashes on [])."""
    coco_dt = COCO()
    coco_dt.dataset = {
        "images": list(coco_gt.dataset["images"]),
        "categories": list(coco_gt.dataset["categories"]),
        "annotations": [],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt.createIndex()
    return coco_dt


def coco_evaluate(coco_gt: COCO, results: list[dict[str, Any]]) -> dict[str, Any]:
    """Score COCO-format ``results`` against ``coco_gt`` with pycocotools' bbox evaluation.

    Returns ``AP`` … ``ARl`` (×100; -1 where undefined), ``per_class_AP`` (class name → AP×100,
    ``None`` for a class without ground truth) and ``num_detections``.
    """
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results) if results else _empty_results(coco_gt)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    metrics: dict[str, Any] = {
        name: float(v * 100) if v >= 0 else -1.0
        for name, v in zip(STAT_NAMES, evaluator.stats, strict=True)
    }
    # precision: (T iou thresholds, R recall points, K classes, A areas, M max-dets); area "all",
    # 100 detections, as the summary's first line.
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    names = {c["id"]: c["name"] for c in coco_gt.dataset["categories"]}
    per_class: dict[str, float | None] = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        valid = precision[:, :, k][precision[:, :, k] > -1]
        per_class[names[cat_id]] = float(np.mean(valid) * 100) if valid.size else None
    metrics["per_class_AP"] = per_class
    metrics["num_detections"] = len(results)
    return metrics


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
) -> tuple[dict[str, Any] | None, Predictions]:
    """Predict on every rank, gather, and score on rank 0 (other ranks get ``None`` metrics;
    ``coco_gt`` is read on rank 0 only, so the others may pass ``None``)."""
    local = predict(model, postprocessor, loader, label_to_cat_id, device, precision, keep_samples)
    merged = gather_predictions(local)
    rank, _ = rank_and_world_size()
    metrics = coco_evaluate(coco_gt, merged.results) if rank == 0 else None
    return metrics, merged
