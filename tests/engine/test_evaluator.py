"""COCO evaluation against pycocotools itself (both backends), including the no-detections case,
crowd regions and empty images; the vectorised conversion and gathering of detections."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from data.convert import voc_to_coco, write_coco
from detector.engine import evaluator
from detector.engine.evaluator import (
    NO_GROUND_TRUTH,
    STAT_NAMES,
    Predictions,
    class_labels,
    coco_evaluate,
    coco_results,
    coco_score,
    detections_array,
    format_summary,
    gather_predictions,
    resolve_backend,
    to_coco_array,
    to_coco_results,
)


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


def test_metrics_equal_pycocotools(gt: COCO, pycocotools_eval: Callable) -> None:
    results = _noisy_results(gt)
    metrics = coco_evaluate(gt, results)
    reference = pycocotools_eval(gt, results)
    expected = [v * 100 if v >= 0 else -1 for v in reference.stats]
    assert [metrics[k] for k in STAT_NAMES] == pytest.approx(expected)
    assert 0 < metrics["AP"] < 100
    assert metrics["num_detections"] == len(results)
    # Per-class AP equals pycocotools run on that class alone.
    for cat_id, name in ((3, "cat"), (7, "dog")):
        alone = pycocotools_eval(gt, results, cat_ids=[cat_id])
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


# --- scoring backends: the same numbers as pycocotools' own loadRes + COCOeval ------------------


def _perturbed(dataset: dict, seed: int, drop_images: int = 0) -> list[dict]:
    """Detections from ground truth: each non-crowd box twice with noise (sometimes the wrong
    class), a false detection per image, and nothing at all on the first ``drop_images``."""
    rng = np.random.default_rng(seed)
    cat_ids = [c["id"] for c in dataset["categories"]]
    images = {im["id"]: im for im in dataset["images"]}
    skipped = {im["id"] for im in dataset["images"][:drop_images]}
    results = []
    for ann in dataset["annotations"]:
        if ann["image_id"] in skipped or ann.get("iscrowd", 0):
            continue
        for _ in range(2):
            w, h = ann["bbox"][2:]
            x, y, w, h = (np.asarray(ann["bbox"]) + rng.normal(0, 0.08, 4) * [w, h, w, h]).tolist()
            cat = ann["category_id"] if rng.uniform() < 0.85 else int(rng.choice(cat_ids))
            results.append(
                {"image_id": ann["image_id"], "category_id": cat,
                 "bbox": [x, y, max(w, 1.0), max(h, 1.0)], "score": float(rng.uniform())}
            )  # fmt: skip
    for image_id, image in images.items():
        if image_id not in skipped:
            w, h = rng.uniform(10, 60, 2).tolist()
            x = float(rng.uniform(0, image["width"] - w))
            y = float(rng.uniform(0, image["height"] - h))
            results.append(
                {"image_id": image_id, "category_id": int(rng.choice(cat_ids)),
                 "bbox": [x, y, w, h], "score": float(rng.uniform())}
            )  # fmt: skip
    return results


def _crowd_case() -> dict:
    """Crowd regions (one class has only crowd), images without boxes, a class without boxes."""
    rng = np.random.default_rng(5)
    images = [{"id": i, "width": 320, "height": 240, "file_name": f"{i}.jpg"} for i in range(1, 31)]
    anns = []
    for image in images[:24]:  # images 25..30 have no ground truth
        for _ in range(int(rng.integers(1, 6))):
            w, h = rng.uniform(6, 150, 2).tolist()
            x, y = float(rng.uniform(0, 320 - w)), float(rng.uniform(0, 240 - h))
            cat = int(rng.choice([1, 2, 4]))
            anns.append(
                {"id": len(anns) + 1, "image_id": image["id"], "category_id": cat,
                 "bbox": [x, y, w, h], "area": w * h, "iscrowd": int(rng.uniform() < 0.15)}
            )  # fmt: skip
        if image["id"] % 6 == 0:
            anns.append(
                {"id": len(anns) + 1, "image_id": image["id"], "category_id": 3,
                 "bbox": [10.0, 10.0, 200.0, 150.0], "area": 30000.0, "iscrowd": 1}
            )  # fmt: skip
    categories = [{"id": i, "name": n} for i, n in ((1, "a"), (2, "b"), (3, "crowd_only"),
                                                    (4, "d"), (5, "none"))]  # fmt: skip
    return {"images": images, "categories": categories, "annotations": anns}


def _crowd_case_results(dataset: dict) -> list[dict]:
    """Perturbed ground truth (none on images 1–4) plus detections inside the crowd regions."""
    results = _perturbed(dataset, seed=6, drop_images=4)
    rng = np.random.default_rng(7)
    for ann in dataset["annotations"]:
        if ann["iscrowd"] and ann["image_id"] > 4:
            x, y, w, h = ann["bbox"]
            results.append(
                {"image_id": ann["image_id"], "category_id": ann["category_id"],
                 "bbox": [x + w / 4, y + h / 4, w / 3, h / 3], "score": float(rng.uniform())}
            )  # fmt: skip
    return results


def _load(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def _assert_backends_equal_pycocotools(gt: COCO, results: list[dict], reference: COCOeval) -> None:
    precision = reference.eval["precision"][:, :, :, 0, -1]
    names = {c["id"]: c["name"] for c in gt.dataset["categories"]}
    expected_per_class = {}
    for k, cat_id in enumerate(reference.params.catIds):
        valid = precision[:, :, k][precision[:, :, k] > -1]
        expected_per_class[names[cat_id]] = valid.mean() * 100 if valid.size else None
    for backend in ("pycocotools", "faster_coco_eval"):
        scores = coco_score(gt, results, backend)
        assert scores.backend == backend
        np.testing.assert_allclose(scores.stats, reference.stats, rtol=0, atol=1e-6)
        np.testing.assert_allclose(scores.precision, reference.eval["precision"], atol=1e-6)
        np.testing.assert_allclose(scores.recall, reference.eval["recall"], atol=1e-6)
        metrics = coco_evaluate(gt, detections_array(results), backend)
        assert [metrics[k] / 100 for k in STAT_NAMES] == pytest.approx(
            [v if v >= 0 else -0.01 for v in reference.stats], abs=1e-8
        )
        for name, expected in expected_per_class.items():
            got = metrics["per_class_AP"][name]
            assert (got is None) == (expected is None), name
            if expected is not None:
                assert got == pytest.approx(expected, abs=1e-6), name


def test_backends_equal_pycocotools_on_the_synthetic_data(
    synthetic_root: Path, pycocotools_eval: Callable
) -> None:
    ann = synthetic_root / "annotations" / "instances_train.json"
    gt = _load(ann)
    results = _perturbed(json.loads(ann.read_text()), seed=2, drop_images=1)
    assert 0 < coco_evaluate(gt, results, "pycocotools")["AP"] < 100
    _assert_backends_equal_pycocotools(gt, results, pycocotools_eval(gt, results))


def test_backends_equal_pycocotools_on_the_raccoon_photos(
    tmp_path: Path, pycocotools_eval: Callable, raccoon: Path
) -> None:
    dataset = voc_to_coco(raccoon / "annotations", raccoon / "images")
    gt = _load(write_coco(dataset, tmp_path / "raccoon.json"))
    assert len(gt.getImgIds()) == 200
    results = _perturbed(dataset, seed=3, drop_images=10)
    _assert_backends_equal_pycocotools(gt, results, pycocotools_eval(gt, results))


def test_backends_equal_pycocotools_with_crowd_and_empty_images(
    pycocotools_eval: Callable,
) -> None:
    dataset = _crowd_case()
    gt = _coco(dataset)
    results = _crowd_case_results(dataset)
    reference = pycocotools_eval(gt, results)
    assert -1 in reference.stats or (reference.eval["precision"] == -1).any()  # undefined parts
    _assert_backends_equal_pycocotools(gt, results, reference)


def test_auto_backend_and_bad_names(monkeypatch: pytest.MonkeyPatch, gt: COCO) -> None:
    assert resolve_backend("auto") == "faster_coco_eval"
    assert resolve_backend("pycocotools") == "pycocotools"
    with pytest.raises(ValueError, match="must be one of auto, faster_coco_eval, pycocotools"):
        resolve_backend("fast")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "faster_coco_eval" else real(name)
    )
    assert resolve_backend("auto") == "pycocotools"
    with pytest.raises(ValueError, match="faster_coco_eval is not installed"):
        resolve_backend("faster_coco_eval")
    assert coco_score(gt, _noisy_results(gt)).backend == "pycocotools"


def test_detections_of_unknown_images_are_one_line_errors(gt: COCO) -> None:
    bad = [{"image_id": 99, "category_id": 3, "bbox": [0, 0, 5, 5], "score": 0.5}]
    for backend in ("pycocotools", "faster_coco_eval"):
        with pytest.raises(ValueError, match=r"image ids the ground truth does not have: \[99\]"):
            coco_evaluate(gt, bad, backend)
    with pytest.raises(ValueError, match=r"must be \(D, 7\)"):
        coco_evaluate(gt, np.zeros((3, 6)))


# --- conversion and gathering -----------------------------------------------------------------


def test_to_coco_array_converts_a_batch_in_one_go() -> None:
    detections = [
        {"boxes": torch.tensor([[10.0, 20.0, 40.0, 30.0]]), "scores": torch.tensor([0.25]),
         "labels": torch.tensor([1])},
        {"boxes": torch.zeros((0, 4)), "scores": torch.zeros(0),
         "labels": torch.zeros(0, dtype=torch.long)},
        {"boxes": torch.tensor([[0.5, 1.0, 2.0, 4.5], [3.0, 3.0, 9.0, 8.0]]),
         "scores": torch.tensor([0.5, 0.75]), "labels": torch.tensor([0, 1])},
    ]  # fmt: skip
    array = to_coco_array(detections, [7, 8, 9], [3, 11])
    np.testing.assert_array_equal(
        array,
        [[7, 10, 20, 30, 10, 0.25, 11], [9, 0.5, 1, 1.5, 3.5, 0.5, 3], [9, 3, 3, 6, 5, 0.75, 11]],
    )
    assert array.dtype == np.float64
    assert coco_results(array)[1] == {
        "image_id": 9, "category_id": 3, "bbox": [0.5, 1.0, 1.5, 3.5], "score": 0.5
    }  # fmt: skip
    assert to_coco_array([], [], [3]).shape == (0, 7)


def test_gather_keeps_each_image_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A padded distributed sampler gives image 2 to both ranks: its detections count once."""
    rank0 = (np.array([[1, 0, 0, 1, 1, 0.9, 3], [2, 0, 0, 2, 2, 0.8, 3]]), np.array([1, 2]))
    rank1 = (np.array([[2, 0, 0, 2, 2, 0.8, 3], [3, 0, 0, 3, 3, 0.7, 7]]), np.array([3, 2]))
    monkeypatch.setattr(evaluator, "all_gather_objects", lambda obj: [rank0, rank1])
    merged = gather_predictions(Predictions(*rank0))
    np.testing.assert_array_equal(merged.detections[:, 0], [1, 2, 3])
    np.testing.assert_array_equal(merged.image_ids, [1, 2, 3])
    local = Predictions(*rank0)
    monkeypatch.setattr(evaluator, "all_gather_objects", lambda obj: [obj])
    assert gather_predictions(local).detections is local.detections  # one process: no copy


def test_categories_sharing_a_name_keep_one_entry_each(
    gt: COCO, pycocotools_eval: Callable
) -> None:
    gt.dataset["categories"][1]["name"] = "cat"  # ids 3 and 7 are both "cat"
    metrics = coco_evaluate(gt, _noisy_results(gt))
    assert list(metrics["per_class_AP"]) == ["cat (3)", "cat (7)", "eel"]
    assert metrics["per_class_AP"]["eel"] is None
    reference = pycocotools_eval(gt, _noisy_results(gt), cat_ids=[7])
    assert metrics["per_class_AP"]["cat (7)"] == pytest.approx(reference.stats[0] * 100)
    assert "warning" not in metrics
    assert class_labels(gt.dataset["categories"]) == {3: "cat (3)", 7: "cat (7)", 9: "eel"}


def test_no_ground_truth_boxes_give_a_warning(gt: COCO) -> None:
    empty = _coco({**gt.dataset, "annotations": []})
    metrics = coco_evaluate(empty, _noisy_results(gt))
    assert metrics["AP"] == -1.0 and metrics["warning"] == NO_GROUND_TRUTH
    assert format_summary(metrics).endswith(f"\nwarning: {NO_GROUND_TRUTH}")
