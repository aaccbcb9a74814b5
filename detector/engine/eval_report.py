"""The numbers behind an evaluation's report: PR curves, a per-class table, F1 against confidence
and a confusion matrix (``eval_report_files`` draws and writes them).

PR curves and the per-class AP/AR come from COCOeval's accumulated arrays (:class:`CocoScores`),
so they are pycocotools' numbers. F1 and the confusion matrix need each detection's fate, so they
match detections to ground truth here, as COCOeval does at one IoU threshold τ: per image and
class, detections in descending score order (the 100 best, COCO's ``maxDets``) take the unmatched
box of highest IoU ≥ τ; a detection with no such box that covers a crowd region (intersection
over the detection's area ≥ τ) is ignored, neither true nor false positive. K classes, G ground
truth boxes, D detections, C confidence thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pycocotools.coco import COCO

from detector.engine.evaluator import CocoScores, class_labels

F1_GRID = np.linspace(0.0, 1.0, 1001)
"""Confidence thresholds of the F1 curve (a detection counts when its score is above one)."""
FALLBACK_SCORE_THRESH = 0.5
"""Confusion-matrix threshold when none is chosen and no threshold gives a true positive."""


@dataclass
class Boxes:
    """Boxes sorted by image (stable), COCO xywh in float64 as pycocotools' IoU reads them."""

    image: np.ndarray
    """``(B,)`` int64 image ids."""
    label: np.ndarray
    """``(B,)`` int64 class index into the evaluation's categories (0..K-1)."""
    xywh: np.ndarray
    """``(B, 4)``."""
    score: np.ndarray
    """``(B,)`` detection score (1 for ground truth)."""
    crowd: np.ndarray
    """``(B,)`` bool: a crowd region (ground truth only)."""


def ground_truth(coco_gt: COCO, cat_ids: list[int]) -> Boxes:
    """The annotations of ``coco_gt`` whose category is in ``cat_ids`` (sorted ids), as G boxes."""
    anns = [a for a in coco_gt.dataset.get("annotations", []) if a["category_id"] in cat_ids]
    image = np.asarray([a["image_id"] for a in anns], dtype=np.int64)
    order = np.argsort(image, kind="stable")
    cats = np.asarray([a["category_id"] for a in anns], dtype=np.int64)
    return Boxes(
        image=image[order],
        label=np.searchsorted(cat_ids, cats[order]).astype(np.int64),
        xywh=np.asarray([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)[order],
        score=np.ones(len(anns)),
        crowd=np.asarray([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)[order],
    )


def detection_boxes(detections: np.ndarray, cat_ids: list[int], max_dets: int = 100) -> Boxes:
    """The ``(D, 7)`` detections COCOeval scores: those of a known category, the ``max_dets``
    best per image and class (ties in input order), sorted by image then descending score."""
    detections = detections[np.isin(detections[:, 6], cat_ids)]
    image = detections[:, 0].astype(np.int64)
    label = np.searchsorted(cat_ids, detections[:, 6].astype(np.int64))
    score = detections[:, 5]
    grouped = np.lexsort((-score, label, image))  # stable: equal scores keep the input order
    key = image[grouped] * len(cat_ids) + label[grouped]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    rank = np.arange(len(key)) - np.repeat(starts, np.diff(np.r_[starts, len(key)]))
    kept = np.sort(grouped[rank < max_dets])
    order = kept[np.lexsort((-score[kept], image[kept]))]
    return Boxes(image[order], label[order], detections[order, 1:5], score[order],
                 np.zeros(len(order), dtype=bool))  # fmt: skip


def box_iou(dt: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """``(D, G)`` IoU of xywh boxes as pycocotools computes it; for a crowd column, the
    intersection over the detection's area."""
    iw = np.minimum(dt[:, None, 0] + dt[:, None, 2], gt[None, :, 0] + gt[None, :, 2])
    iw = iw - np.maximum(dt[:, None, 0], gt[None, :, 0])
    ih = np.minimum(dt[:, None, 1] + dt[:, None, 3], gt[None, :, 1] + gt[None, :, 3])
    ih = ih - np.maximum(dt[:, None, 1], gt[None, :, 1])
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    dt_area = (dt[:, 2] * dt[:, 3])[:, None]
    union = np.where(crowd[None, :], dt_area, dt_area + (gt[:, 2] * gt[:, 3])[None, :] - inter)
    return np.divide(inter, union, out=np.zeros_like(inter), where=inter > 0)


def greedy_match(
    iou: np.ndarray, allowed: np.ndarray, crowd: np.ndarray, thresh: float, taken: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """COCOeval's matching of one image's D detections (descending score) to its G boxes.

    Args:
        iou: ``(D, G)`` from :func:`box_iou`.
        allowed: ``(D, G)`` pairs that may match (same class, for COCO).
        crowd: ``(G,)`` crowd regions: matched any number of times, and only when no other box
            is free; the detection is then ignored.
        thresh: the IoU threshold τ.
        taken: ``(G,)`` boxes already matched; updated in place.

    Returns:
        ``(D,)`` the matched box (-1: none) and ``(D,)`` whether the detection is ignored.
    """
    matched = np.full(len(iou), -1, dtype=np.int64)
    ignored = np.zeros(len(iou), dtype=bool)
    candidates = allowed & (iou >= min(thresh, 1 - 1e-10))
    for d in np.flatnonzero(candidates.any(axis=1)):
        free = candidates[d] & ~taken
        regular = free & ~crowd
        pool = regular if regular.any() else free
        if not pool.any():
            continue
        values = np.where(pool, iou[d], -1.0)
        g = len(values) - 1 - int(np.argmax(values[::-1]))  # ties: the last, as pycocotools
        matched[d] = g
        ignored[d] = bool(crowd[g])
        taken[g] |= not crowd[g]
    return matched, ignored


def _image_spans(sorted_ids: np.ndarray, images: np.ndarray) -> np.ndarray:
    """``(len(images), 2)`` start and end of each image's rows in ``sorted_ids``."""
    return np.stack(
        [np.searchsorted(sorted_ids, images), np.searchsorted(sorted_ids, images, side="right")], 1
    )


def match_within_class(dt: Boxes, gt: Boxes, thresh: float) -> tuple[np.ndarray, np.ndarray]:
    """COCO's matching at IoU ``thresh`` over all images: ``(D,)`` matched ground-truth row (-1:
    none) and ``(D,)`` ignored (matched a crowd region)."""
    matched = np.full(len(dt.score), -1, dtype=np.int64)
    ignored = np.zeros(len(dt.score), dtype=bool)
    taken = np.zeros(len(gt.score), dtype=bool)
    images = np.intersect1d(dt.image, gt.image)
    for (d0, d1), (g0, g1) in zip(
        _image_spans(dt.image, images), _image_spans(gt.image, images), strict=True
    ):
        iou = box_iou(dt.xywh[d0:d1], gt.xywh[g0:g1], gt.crowd[g0:g1])
        same = dt.label[d0:d1, None] == gt.label[None, g0:g1]
        m, ig = greedy_match(iou, same, gt.crowd[g0:g1], thresh, taken[g0:g1])
        matched[d0:d1] = np.where(m >= 0, m + g0, -1)
        ignored[d0:d1] = ig
    return matched, ignored


@dataclass
class F1Curve:
    """F1 = 2·TP / (detections + ground truth) of the detections scoring above each threshold."""

    thresholds: np.ndarray
    """``(C,)``."""
    f1: np.ndarray
    """``(C,)`` all classes pooled; NaN where there are neither detections nor ground truth."""
    precision: np.ndarray
    """``(C,)`` pooled; NaN where no detection is above the threshold."""
    recall: np.ndarray
    """``(C,)`` pooled; NaN without ground truth."""
    per_class: np.ndarray
    """``(K, C)`` F1 of each class."""
    best_thresh: float | None
    """A ``postprocess.score_thresh`` that keeps exactly the F1-maximising detections (halfway
    between the lowest kept and the highest dropped score); ``None`` if no threshold gives a
    true positive."""
    best_f1: float
    best_precision: float
    best_recall: float


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.full(num.shape, np.nan), where=den > 0)


def f1_curve(dt: Boxes, tp: np.ndarray, valid: np.ndarray, num_gt: np.ndarray) -> F1Curve:
    """F1 against confidence from the matched detections.

    Args:
        dt: the D detections; ``tp`` ``(D,)`` whether each is a true positive; ``valid`` ``(D,)``
            whether it counts at all (not ignored); ``num_gt`` ``(K,)`` non-crowd boxes per class.
    """
    k = len(num_gt)
    scores, labels, hits = dt.score[valid], dt.label[valid], tp[valid]
    # Detections of class k above F1_GRID[j]: a histogram at each score's last grid point below
    # it, summed from the top down.
    last = np.searchsorted(F1_GRID, scores, side="left") - 1
    dets, tps = np.zeros((k, len(F1_GRID) + 1)), np.zeros((k, len(F1_GRID) + 1))
    np.add.at(dets, (labels, last + 1), 1)
    np.add.at(tps, (labels, last + 1), hits)
    dets, tps = dets[:, ::-1].cumsum(1)[:, ::-1][:, 1:], tps[:, ::-1].cumsum(1)[:, ::-1][:, 1:]
    total_gt = float(num_gt.sum())
    per_class = _ratio(2 * tps, dets + num_gt[:, None])
    pooled_tp, pooled_det = tps.sum(0), dets.sum(0)

    # The exact optimum: keep the detections scoring at least s, for each distinct score s.
    order = np.argsort(-scores, kind="stable")
    s, cum_tp = scores[order], np.cumsum(hits[order])
    ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True]) if len(s) else np.zeros(0, np.int64)
    f1 = _ratio(2 * cum_tp[ends], ends + 1 + total_gt)
    best_thresh, best = None, (0.0, np.nan, np.nan)
    if len(ends) and np.nanmax(f1) > 0:
        i = int(np.nanargmax(f1))  # first maximum: the highest threshold
        lower = s[ends[i] + 1] if ends[i] + 1 < len(s) else 0.0
        best_thresh = float((s[ends[i]] + lower) / 2)
        n_tp = float(cum_tp[ends[i]])
        best = (float(f1[i]), n_tp / (ends[i] + 1), n_tp / total_gt)
    return F1Curve(
        thresholds=F1_GRID,
        f1=_ratio(2 * pooled_tp, pooled_det + total_gt),
        precision=_ratio(pooled_tp, pooled_det),
        recall=_ratio(pooled_tp, np.full(pooled_tp.shape, total_gt)),
        per_class=per_class,
        best_thresh=best_thresh,
        best_f1=best[0],
        best_precision=best[1],
        best_recall=best[2],
    )


def confusion_matrix(
    dt: Boxes,
    gt: Boxes,
    matched: np.ndarray,
    ignored: np.ndarray,
    num_classes: int,
    thresh: float,
    iou: float = 0.5,
) -> np.ndarray:
    """``(K+1, K+1)`` counts at IoU ``iou`` of the detections scoring above ``thresh``: rows are
    the true class, columns the predicted one, the last of each is background (last column:
    missed boxes; last row: false detections). Crowd regions and ignored detections are left out.

    A detection first takes its own class's box (COCO's matching, ``matched`` and ``ignored``
    from :func:`match_within_class`); one that found none then takes the free box of another
    class it overlaps most (IoU ≥ ``iou``), in score order, and counts as confused; the rest are
    false detections.
    """
    k = num_classes
    counts = np.zeros((k + 1, k + 1), dtype=np.int64)
    kept = (dt.score > thresh) & ~ignored
    tp = kept & (matched >= 0)
    np.add.at(counts, (gt.label[matched[tp]], dt.label[tp]), 1)
    taken = gt.crowd.copy()  # crowd regions are nobody's to take
    taken[matched[tp]] = True
    other = np.full(len(dt.score), -1, dtype=np.int64)
    wrong = kept & (matched < 0)
    images = np.intersect1d(dt.image[wrong], gt.image[~taken])
    for (d0, d1), (g0, g1) in zip(
        _image_spans(dt.image, images), _image_spans(gt.image, images), strict=True
    ):
        rows = np.flatnonzero(wrong[d0:d1]) + d0
        overlap = box_iou(dt.xywh[rows], gt.xywh[g0:g1], gt.crowd[g0:g1])
        allowed = dt.label[rows, None] != gt.label[None, g0:g1]
        m, _ = greedy_match(overlap, allowed, gt.crowd[g0:g1], iou, taken[g0:g1])
        other[rows] = np.where(m >= 0, m + g0, -1)
    confused = wrong & (other >= 0)
    np.add.at(counts, (gt.label[other[confused]], dt.label[confused]), 1)
    np.add.at(counts, (k, dt.label[wrong & (other < 0)]), 1)
    np.add.at(counts, (gt.label[~taken], k), 1)
    return counts


def normalise_rows(counts: np.ndarray) -> np.ndarray:
    """Each row of a confusion matrix over its sum (NaN for an empty row)."""
    return _ratio(counts, np.broadcast_to(counts.sum(1, keepdims=True), counts.shape))


@dataclass
class PRCurves:
    """Precision at COCO's R recall points, area "all", 100 detections per image."""

    recall: np.ndarray
    """``(R,)`` 0, .01, …, 1."""
    iou50: np.ndarray
    """``(R,)`` mean over the classes with ground truth at IoU .5 (its mean is AP50)."""
    iou50_95: np.ndarray
    """``(R,)`` mean over classes and IoU .5:.95 (its mean is AP)."""
    per_class: np.ndarray
    """``(K, R)`` each class at IoU .5; NaN for a class without ground truth."""


def pr_curves(scores: CocoScores) -> PRCurves:
    """PR curves from COCOeval's ``precision`` array (-1 entries, classes without ground truth,
    are left out of the means)."""
    precision = scores.precision[:, :, :, 0, -1]  # (T, R, K)
    t50 = int(np.argmin(np.abs(scores.iou_thrs - 0.5)))
    defined = (precision > -1).all(axis=(0, 1))  # (K,): pycocotools marks whole classes
    per_class = np.where(defined[:, None], precision[t50].T, np.nan)
    if not defined.any():
        nan = np.full(len(scores.rec_thrs), np.nan)
        return PRCurves(scores.rec_thrs, nan, nan, per_class)
    iou50 = per_class[defined].mean(0)
    both = precision[:, :, defined].mean(axis=(0, 2))
    return PRCurves(scores.rec_thrs, iou50, both, per_class)


def _mean_defined(values: np.ndarray) -> float | None:
    """Mean of the entries > -1, ×100; ``None`` if there are none (pycocotools' -1)."""
    valid = values[values > -1]
    return float(valid.mean() * 100) if valid.size else None


def per_class_table(
    scores: CocoScores, gt: Boxes, dt: Boxes, names: list[str], num_images: int
) -> list[dict[str, object]]:
    """One row per class, then ``all``: images and boxes of ground truth (non-crowd), crowd
    regions, detections scored, and AP, AP50, AP75, AR100 ×100 (``None`` without ground truth)."""
    k = len(names)
    t50 = int(np.argmin(np.abs(scores.iou_thrs - 0.5)))
    t75 = int(np.argmin(np.abs(scores.iou_thrs - 0.75)))
    precision, recall = scores.precision[:, :, :, 0, -1], scores.recall[:, :, 0, -1]
    regular = ~gt.crowd
    boxes = np.bincount(gt.label[regular], minlength=k)
    crowd = np.bincount(gt.label[gt.crowd], minlength=k)
    dets = np.bincount(dt.label, minlength=k)
    rows: list[dict[str, object]] = []
    for c, name in enumerate(names):
        rows.append(
            {
                "class": name,
                "images": np.unique(gt.image[regular & (gt.label == c)]).size,
                "boxes": int(boxes[c]),
                "crowd": int(crowd[c]),
                "detections": int(dets[c]),
                "AP": _mean_defined(precision[:, :, c]),
                "AP50": _mean_defined(precision[t50, :, c]),
                "AP75": _mean_defined(precision[t75, :, c]),
                "AR100": _mean_defined(recall[:, c]),
            }
        )
    stats = [float(v * 100) if v >= 0 else None for v in scores.stats]
    totals = {"boxes": int(boxes.sum()), "crowd": int(crowd.sum()), "detections": len(dt.score)}
    rows.append(
        {"class": "all", "images": num_images, **totals, "AP": stats[0], "AP50": stats[1],
         "AP75": stats[2], "AR100": stats[8]}
    )  # fmt: skip
    return rows


@dataclass
class EvalReport:
    """Everything an evaluation's report shows (see :func:`build_report`)."""

    class_names: list[str]
    """K names in COCOeval's category order (ascending category id)."""
    table: list[dict[str, object]]
    pr: PRCurves
    f1: F1Curve
    confusion: np.ndarray
    """``(K+1, K+1)`` counts, rows true class, columns predicted, background last."""
    confusion_thresh: float
    iou_thresh: float
    backend: str


def build_report(
    coco_gt: COCO,
    detections: np.ndarray,
    scores: CocoScores,
    confusion_thresh: float | None = None,
    iou_thresh: float = 0.5,
) -> EvalReport:
    """The report of ``(D, 7)`` detections scored as ``scores`` against ``coco_gt``.

    ``confusion_thresh`` ``None`` draws the confusion matrix at the F1-maximising threshold.
    """
    labels = class_labels(coco_gt.dataset["categories"])  # unique, as in per_class_AP
    names = [labels[c] for c in scores.cat_ids]
    gt = ground_truth(coco_gt, scores.cat_ids)
    dt = detection_boxes(detections, scores.cat_ids, scores.max_dets[-1])
    matched, ignored = match_within_class(dt, gt, iou_thresh)
    num_gt = np.bincount(gt.label[~gt.crowd], minlength=len(names)).astype(np.float64)
    f1 = f1_curve(dt, matched >= 0, ~ignored, num_gt)
    if confusion_thresh is None:
        confusion_thresh = FALLBACK_SCORE_THRESH if f1.best_thresh is None else f1.best_thresh
    return EvalReport(
        class_names=names,
        table=per_class_table(scores, gt, dt, names, len(coco_gt.getImgIds())),
        pr=pr_curves(scores),
        f1=f1,
        confusion=confusion_matrix(
            dt, gt, matched, ignored, len(names), confusion_thresh, iou_thresh
        ),  # fmt: skip
        confusion_thresh=float(confusion_thresh),
        iou_thresh=iou_thresh,
        backend=scores.backend,
    )
