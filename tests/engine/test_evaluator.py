"""COCO evaluation against pycocotools itself, including the no-detections case."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector.engine.evaluator import STAT_NAMES, coco_evaluate, format_summary, to_coco_results


def _coco(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


@pytest.fixture
def gt() -> COCO:
    """Three images, sparse category ids 3 ("cat") and 7 ("dog"), 9 ("eel") with no boxes."""
    rng = np.random.default_rng(0)
    anns = []
    for i in range(12):
        x, y = rng.uniform(0, 150, 2)
        w, h = rng.uniform(8, 90, 2)
        anns.append(
            {
                "id": i + 1,
                "image_id": i % 3 + 1,
                "category_id": (3, 7)[i % 2],
                "bbox": [x, y, w, h],
                "area": w * h,
                "iscrowd": 0,
            }
        )
    return _coco(
        {
            "images": [
                {"id": i, "width": 256, "height": 256, "file_name": f"{i}.jpg"} for i in (1, 2, 3)
            ],
            "categories": [
                {"id": 3, "name": "cat"},
                {"id": 7, "name": "dog"},
                {"id": 9, "name": "eel"},
            ],
            "annotations": anns,
        }
    )


def _noisy_results(gt: COCO) -> list[dict]:
    rng = np.random.default_rng(1)
    results = []
    for ann in gt.dataset["annotations"]:
        for _ in range(2):
            box = np.asarray(ann["bbox"]) + rng.normal(0, 4, 4)
            cat = ann["category_id"] if rng.uniform() < 0.8 else 7
            results.append(
                {
                    "image_id": ann["image_id"],
                    "category_id": cat,
                    "bbox": box.tolist(),
                    "score": float(rng.uniform()),
                }  # fmt: skip
            )
    return results


def _pycocotools(gt: COCO, results: list[dict], cat_ids: list[int] | None = None) -> COCOeval:
    with contextlib.redirect_stdout(io.StringIO()) as out:
        evaluator = COCOeval(gt, gt.loadRes(results), iouType="bbox")
        if cat_ids is not None:
            evaluator.params.catIds = cat_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    evaluator.printed = out.getvalue()
    return evaluator


def test_metrics_equal_pycocotools(gt: COCO) -> None:
    results = _noisy_results(gt)
    metrics = coco_evaluate(gt, results)
    reference = _pycocotools(gt, results)
    expected = [v * 100 if v >= 0 else -1 for v in reference.stats]
    assert [metrics[k] for k in STAT_NAMES] == pytest.approx(expected)
    assert 0 < metrics["AP"] < 100
    assert metrics["num_detections"] == len(results)
    # Per-class AP equals pycocotools run on that class alone.
    for cat_id, name in ((3, "cat"), (7, "dog")):
        alone = _pycocotools(gt, results, cat_ids=[cat_id])
        assert metrics["per_class_AP"][name] == pytest.approx(alone.stats[0] * 100)
    assert metrics["per_class_AP"]["eel"] is None
    # The printed summary is pycocotools' own, line for line.
    summary = format_summary(metrics).splitlines()
    assert summary[:12] == reference.printed.strip("\n").splitlines()[-12:]
    assert summary[12:] == [
        "per-class AP:",
        f"  cat  {metrics['per_class_AP']['cat']:6.2f}",
        f"  dog  {metrics['per_class_AP']['dog']:6.2f}",
        "  eel     n/a",
    ]


def test_perfect_detections_score_100(gt: COCO) -> None:
    results = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": 1.0,
        }
        for a in gt.dataset["annotations"]
    ]
    metrics = coco_evaluate(gt, results)
    assert metrics["AP"] == pytest.approx(100) and metrics["AP50"] == pytest.approx(100)


def test_no_detections_score_zero(gt: COCO) -> None:
    with pytest.raises(IndexError):  # the pycocotools behaviour coco_evaluate works around
        gt.loadRes([])
    metrics = coco_evaluate(gt, [])
    assert metrics["AP"] == metrics["AP50"] == metrics["AR100"] == 0.0
    assert metrics["per_class_AP"] == {"cat": 0.0, "dog": 0.0, "eel": None}
    assert metrics["num_detections"] == 0
    assert format_summary(metrics).splitlines()[0].endswith("= 0.000")


def test_to_coco_results_maps_labels_and_boxes() -> None:
    detections = {
        "boxes": torch.tensor([[10.0, 20.0, 40.0, 30.0], [0.0, 0.0, 5.0, 6.0]]),
        "scores": torch.tensor([0.9, 0.5]),
        "labels": torch.tensor([1, 0]),
    }
    assert to_coco_results(detections, 42, [3, 7]) == [
        {
            "image_id": 42,
            "category_id": 7,
            "bbox": [10.0, 20.0, 30.0, 10.0],
            "score": pytest.approx(0.9),
        },
        {"image_id": 42, "category_id": 3, "bbox": [0.0, 0.0, 5.0, 6.0], "score": 0.5},
    ]
