"""The evaluation report: hand-computed confusion matrix and F1 threshold, the per-class table and
PR curves against pycocotools, COCO's matching against pycocotools' own, empty cases, the files,
TensorBoard PR curves, results.csv, and the report of each evaluation during training."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from omegaconf import DictConfig
from pycocotools.coco import COCO
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from detector.engine.config import ConfigError
from detector.engine.eval_report import (
    FALLBACK_SCORE_THRESH,
    build_report,
    detection_boxes,
    ground_truth,
    match_within_class,
)
from detector.engine.eval_report_files import (
    EvalSettings,
    ResultsLog,
    eval_settings,
    write_eval_report,
    write_report,
)
from detector.engine.evaluator import Predictions, coco_score
from detector.engine.events import EventWriter
from detector.engine.run import run_training

REPORT_FILES = {
    "pr_curve.png", "confusion_matrix.png", "confusion_matrix_normalized.png", "f1_curve.png",
    "per_class.csv", "per_class.md", "confusion_matrix.csv", "pr_curves.csv", "report.json",
}  # fmt: skip


def _coco(images: list[int], anns: list[tuple], names=("cat", "dog", "eel")) -> COCO:
    """Ground truth from ``(image_id, category_id, [x, y, w, h], iscrowd)`` tuples."""
    coco = COCO()
    coco.dataset = {
        "images": [{"id": i, "width": 200, "height": 200, "file_name": f"{i}.jpg"} for i in images],
        "categories": [{"id": k + 1, "name": n} for k, n in enumerate(names)],
        "annotations": [
            {"id": n + 1, "image_id": i, "category_id": c, "bbox": list(b), "area": b[2] * b[3],
             "iscrowd": crowd}
            for n, (i, c, b, crowd) in enumerate(anns)
        ],
    }  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


# cat A and dog B in image 1 with a crowd region of cats, dog C in image 2, nothing in image 3;
# no eel anywhere.
HAND_GT = [
    (1, 1, (0, 0, 10, 10), 0),  # A
    (1, 2, (20, 20, 10, 10), 0),  # B
    (1, 1, (50, 50, 40, 40), 1),  # crowd of cats
    (2, 2, (0, 0, 20, 20), 0),  # C
]
# image_id, x, y, w, h, score, category_id
HAND_DETECTIONS = np.array(
    [
        [1, 0, 0, 10, 10, 0.9, 1],  # cat on A: true positive
        [1, 1, 0, 10, 10, 0.8, 1],  # cat on A again (IoU .82): duplicate, false detection
        [1, 20, 20, 10, 10, 0.7, 1],  # cat on dog B: dog confused for cat
        [1, 60, 60, 10, 10, 0.6, 1],  # cat inside the crowd region: ignored
        [1, 100, 0, 10, 10, 0.5, 2],  # dog on nothing: false detection
        [3, 0, 0, 5, 5, 0.95, 1],  # cat in the empty image: false detection
        [2, 0, 0, 20, 18, 0.2, 2],  # dog on C (IoU .9) at a low score: true positive
    ]
)


def _report(gt: COCO, detections: np.ndarray, thresh: float | None = None):
    return build_report(gt, detections, coco_score(gt, detections), thresh)


def test_confusion_matrix_of_a_hand_computed_case() -> None:
    report = _report(_coco([1, 2, 3], HAND_GT), HAND_DETECTIONS, thresh=0.3)
    # rows: true cat, dog, eel, background; columns: predicted cat, dog, eel, background (missed)
    np.testing.assert_array_equal(
        report.confusion, [[1, 0, 0, 0], [1, 0, 0, 1], [0, 0, 0, 0], [2, 1, 0, 0]]
    )
    assert report.confusion_thresh == 0.3
    high = _report(_coco([1, 2, 3], HAND_GT), HAND_DETECTIONS, thresh=0.85)
    np.testing.assert_array_equal(
        high.confusion, [[1, 0, 0, 0], [0, 0, 0, 2], [0, 0, 0, 0], [1, 0, 0, 0]]
    )


def test_f1_threshold_of_a_hand_computed_case() -> None:
    """Six counted detections (the crowd one is not), three boxes: keeping all gives the best
    F1 = 2·2 / (6 + 3) = 4/9, so the threshold falls halfway below the lowest score, 0.1."""
    report = _report(_coco([1, 2, 3], HAND_GT), HAND_DETECTIONS)
    f1 = report.f1
    assert f1.best_thresh == pytest.approx(0.1)
    assert f1.best_f1 == pytest.approx(4 / 9)
    assert (f1.best_precision, f1.best_recall) == pytest.approx((2 / 6, 2 / 3))
    assert f1.f1[0] == pytest.approx(4 / 9)  # score > 0: all six
    assert f1.f1[850] == pytest.approx(2 * 1 / (2 + 3))  # score > .85: .95 and .9
    assert f1.f1[960] == 0.0  # nothing kept, three boxes missed
    assert f1.per_class[:, 0] == pytest.approx([2 / 5, 2 / 4, np.nan], nan_ok=True)
    # The confusion matrix is drawn at that threshold: dog C is now found.
    np.testing.assert_array_equal(
        report.confusion, [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [2, 1, 0, 0]]
    )
    # Without the low-scoring dog, stopping after the .9 cat is best: 2·1 / (2 + 3) = 0.4.
    f1 = _report(_coco([1, 2, 3], HAND_GT), HAND_DETECTIONS[:-1]).f1
    assert (f1.best_thresh, f1.best_f1) == pytest.approx((0.85, 0.4))


def _random_case(seed: int) -> tuple[COCO, np.ndarray]:
    """Twenty images (the last four empty) with crowd regions; class "eel" has no boxes;
    detections jitter the boxes, some with the wrong class, none at all on images 1 and 2."""
    rng = np.random.default_rng(seed)
    anns = []
    for image in range(1, 17):
        for _ in range(rng.integers(1, 7)):
            w, h = rng.uniform(5, 80, 2)
            box = (float(rng.uniform(0, 200 - w)), float(rng.uniform(0, 200 - h)), w, h)
            anns.append((image, int(rng.choice([1, 2])), box, int(rng.uniform() < 0.2)))
    rows = []
    for image, cat, (x, y, w, h), _ in anns:
        for _ in range(int(rng.integers(0, 4)) if image > 2 else 0):
            jitter = rng.normal(0, 0.15, 4) * [w, h, w, h]
            label = cat if rng.uniform() < 0.8 else int(rng.choice([1, 2, 3]))
            rows.append([image, x + jitter[0], y + jitter[1], w + abs(jitter[2]),
                         h + abs(jitter[3]), rng.uniform(), label])  # fmt: skip
    for image in range(3, 21):
        rows.append([image, *rng.uniform(0, 100, 2), *rng.uniform(5, 60, 2), rng.uniform(), 1])
    return _coco(list(range(1, 21)), anns), np.asarray(rows)


@pytest.mark.parametrize("seed", [0, 1])
def test_per_class_table_and_curves_equal_pycocotools_per_class(
    seed: int, pycocotools_eval: Callable
) -> None:
    gt, detections = _random_case(seed)
    report = _report(gt, detections)
    assert [row["class"] for row in report.table] == ["cat", "dog", "eel", "all"]
    anns = gt.dataset["annotations"]
    for k, row in enumerate(report.table[:3], start=1):
        boxes = [a for a in anns if a["category_id"] == k and not a["iscrowd"]]
        assert row["boxes"] == len(boxes)
        assert row["crowd"] == sum(a["iscrowd"] for a in anns if a["category_id"] == k)
        assert row["images"] == len({a["image_id"] for a in boxes})
        assert row["detections"] == int((detections[:, 6] == k).sum())
        alone = pycocotools_eval(gt, detections, cat_ids=[k])
        if not boxes:
            assert [row[c] for c in ("AP", "AP50", "AP75", "AR100")] == [None] * 4
            assert np.isnan(report.pr.per_class[k - 1]).all()
            continue
        expected = [alone.stats[i] * 100 for i in (0, 1, 2, 8)]
        assert [row[c] for c in ("AP", "AP50", "AP75", "AR100")] == pytest.approx(expected)
        np.testing.assert_allclose(
            report.pr.per_class[k - 1], alone.eval["precision"][0, :, 0, 0, 2]
        )
    reference = pycocotools_eval(gt, detections)
    total = report.table[-1]
    assert [total[c] for c in ("AP", "AP50", "AP75", "AR100")] == pytest.approx(
        [reference.stats[i] * 100 for i in (0, 1, 2, 8)]
    )
    # The "all" curves average to AP50 and AP, as pycocotools' summary does.
    assert report.pr.iou50.mean() == pytest.approx(reference.stats[1])
    assert report.pr.iou50_95.mean() == pytest.approx(reference.stats[0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matching_equals_pycocotools(seed: int, pycocotools_eval: Callable) -> None:
    """True positives and ignored detections at IoU .5, detection by detection (scores are
    unique, so they identify detections), against COCOeval's own ``evalImgs``."""
    gt, detections = _random_case(seed)
    reference = pycocotools_eval(gt, detections)
    expected = {}
    num_images = len(reference.params.imgIds)
    for e in reference.evalImgs[: len(reference.params.catIds) * 4 * num_images]:
        if e is None or e["aRng"] != reference.params.areaRng[0]:
            continue
        for dt_id, match, ignore in zip(
            e["dtIds"], e["dtMatches"][0], e["dtIgnore"][0], strict=True
        ):
            score = reference.cocoDt.anns[dt_id]["score"]
            expected[score] = (bool(match) and not ignore, bool(ignore))
    dt = detection_boxes(detections, reference.params.catIds)
    matched, ignored = match_within_class(dt, ground_truth(gt, reference.params.catIds), 0.5)
    got = {
        s: (m >= 0 and not i, bool(i)) for s, m, i in zip(dt.score, matched, ignored, strict=True)
    }
    assert got == expected
    assert sum(tp for tp, _ in got.values()) > 10 and sum(i for _, i in got.values()) > 0


def test_matching_breaks_ties_as_pycocotools(pycocotools_eval: Callable) -> None:
    """A detection halfway between two cats (IoU .6 with each) takes the later one, as
    pycocotools does; the next detection then finds the first free: two true positives."""
    gt = _coco([1], [(1, 1, (0, 0, 10, 10), 0), (1, 1, (5, 0, 10, 10), 0)])
    detections = np.array([[1, 2.5, 0, 10, 10, 0.9, 1], [1, 0, 0, 10, 10, 0.8, 1]])
    dt = detection_boxes(detections, [1, 2, 3])
    matched, ignored = match_within_class(dt, ground_truth(gt, [1, 2, 3]), 0.5)
    assert matched.tolist() == [1, 0] and not ignored.any()
    assert pycocotools_eval(gt, detections).stats[1] == 1.0  # AP50: both found


def test_zero_detections_give_empty_values(tmp_path: Path) -> None:
    gt = _coco([1, 2, 3], HAND_GT)
    report = _report(gt, np.zeros((0, 7)))
    assert [(r["AP"], r["AP50"], r["AR100"], r["detections"]) for r in report.table] == [
        (0.0, 0.0, 0.0, 0), (0.0, 0.0, 0.0, 0), (None, None, None, 0), (0.0, 0.0, 0.0, 0)
    ]  # fmt: skip
    assert report.f1.best_thresh is None and report.f1.best_f1 == 0.0
    assert np.all(report.f1.f1 == 0)
    assert report.confusion_thresh == FALLBACK_SCORE_THRESH
    np.testing.assert_array_equal(report.confusion[:, 3], [1, 2, 0, 0])  # every box missed
    assert report.confusion.sum() == 3
    np.testing.assert_array_equal(report.pr.iou50, 0.0)
    write_report(report, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == REPORT_FILES
    summary = json.loads((tmp_path / "report.json").read_text())
    assert summary["f1_best_score_thresh"] is None and summary["f1_best"] == 0.0
    rows = list(csv.DictReader((tmp_path / "per_class.csv").open()))
    counts = {"images": "0", "boxes": "0", "crowd": "0", "detections": "0"}
    assert rows[2] == {"class": "eel", **counts, "AP": "", "AP50": "", "AP75": "", "AR100": ""}
    assert (
        "| eel | 0 | 0 | 0 | 0 | n/a | n/a | n/a | n/a |" in (tmp_path / "per_class.md").read_text()
    )


@pytest.mark.parametrize("detections", [np.zeros((0, 7)), HAND_DETECTIONS])
def test_no_ground_truth_at_all(detections: np.ndarray, tmp_path: Path) -> None:
    gt = _coco([1, 2, 3], [])
    report = _report(gt, detections)
    assert all(row[c] is None for row in report.table for c in ("AP", "AP50", "AP75", "AR100"))
    assert np.isnan(report.pr.iou50).all() and np.isnan(report.pr.per_class).all()
    assert report.f1.best_thresh is None
    assert report.confusion[:3].sum() == 0  # no true class; every detection is a false one
    assert report.confusion[3].sum() == (detections[:, 5] > report.confusion_thresh).sum()
    write_report(report, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == REPORT_FILES


def test_files_hold_the_report(tmp_path: Path) -> None:
    gt = _coco([1, 2, 3], HAND_GT)
    report = _report(gt, HAND_DETECTIONS, thresh=0.3)
    writer = EventWriter(tmp_path / "tb")
    paths = write_report(report, tmp_path / "report", writer, step=7)
    writer.close()
    assert {p.name for p in paths} == REPORT_FILES and all(p.stat().st_size > 0 for p in paths)
    out = tmp_path / "report"
    rows = list(csv.DictReader((out / "per_class.csv").open()))
    for row, expected in zip(rows, report.table, strict=True):
        for key, value in expected.items():
            if isinstance(value, float):
                assert float(row[key]) == value  # written exactly
            else:
                assert row[key] == ("" if value is None else str(value))
    confusion = list(csv.reader((out / "confusion_matrix.csv").open()))
    assert confusion[0] == ["true \\ predicted", "cat", "dog", "eel", "background"]
    assert [[int(v) for v in r[1:]] for r in confusion[1:]] == report.confusion.tolist()
    curves = np.genfromtxt(out / "pr_curves.csv", delimiter=",", skip_header=1)
    np.testing.assert_allclose(curves[:, 1], report.pr.iou50)
    summary = json.loads((out / "report.json").read_text())
    assert summary["f1_best_score_thresh"] == pytest.approx(0.1)
    assert summary["confusion_score_thresh"] == 0.3
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0}).Reload()
    tags = set(events.Tags()["tensors"])
    assert tags == {"pr_curve/all_iou50", "pr_curve/all_iou50_95", "pr_curve/cat", "pr_curve/dog"}
    event = events.Tensors("pr_curve/cat")[0]
    data = np.asarray(event.tensor_proto.float_val).reshape(6, -1)
    assert event.step == 7
    np.testing.assert_allclose(data[4], report.pr.per_class[0][::-1], atol=1e-6)  # precision
    np.testing.assert_allclose(data[5], report.pr.recall[::-1], atol=1e-6)  # recall


def test_write_eval_report_follows_the_settings(tmp_path: Path) -> None:
    gt = _coco([1, 2, 3], HAND_GT)
    scored = Predictions(HAND_DETECTIONS, scores=coco_score(gt, HAND_DETECTIONS))
    off = write_eval_report(tmp_path / "off", gt, scored, EvalSettings(report=False))
    assert off is None and not (tmp_path / "off").exists()
    report = write_eval_report(
        tmp_path / "on", gt, scored, EvalSettings(confusion_score_thresh=0.3)
    )
    assert report is not None and report.confusion_thresh == 0.3
    assert (tmp_path / "on" / "confusion_matrix.png").is_file()
    with pytest.raises(ValueError, match="needs scored predictions"):
        write_eval_report(tmp_path, gt, Predictions(HAND_DETECTIONS))


@pytest.mark.parametrize(
    ("node", "message"),
    [
        ({"backend": "fast"}, "evaluation.backend: eval backend must be one of"),
        ({"bakend": "auto"}, "evaluation.bakend: unknown key"),
        ({"report": "yes"}, "evaluation.report must be true or false"),
        ({"confusion_score_thresh": 1.5}, r"must be in \[0, 1\] or null, got 1.5"),
    ],
)
def test_bad_settings_are_one_line_config_errors(node: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        eval_settings(node)


def test_settings_defaults() -> None:
    assert eval_settings(None) == EvalSettings("auto", True, None)
    assert eval_settings({"confusion_score_thresh": 0.25}).confusion_score_thresh == 0.25


def test_results_log_merges_rows_and_resumes(tmp_path: Path) -> None:
    log = ResultsLog(tmp_path)
    log.log(10, {"loss/total": 1.5, "lr": 0.1, "note": "text"})
    log.log(20, {"loss/total": 1.0, "lr": 0.1})
    log.log(20, {"val/AP": 12.5, "val/AP50": 30.0}, plot=True)
    rows = list(csv.reader((tmp_path / "results.csv").open()))
    assert rows == [
        ["iteration", "loss/total", "lr", "val/AP", "val/AP50"],
        ["10", "1.5", "0.1", "", ""],
        ["20", "1.0", "0.1", "12.5", "30.0"],
    ]
    assert (tmp_path / "results.png").stat().st_size > 0
    resumed = ResultsLog(tmp_path, start_iter=10)
    resumed.log(15, {"loss/total": 1.25})
    rows = list(csv.reader((tmp_path / "results.csv").open()))
    assert [r[:2] for r in rows] == [["iteration", "loss/total"], ["10", "1.5"], ["15", "1.25"]]
    ResultsLog(None).log(1, {"loss/total": 1.0}, plot=True)  # other ranks: nothing to write


def test_training_leaves_a_report_per_evaluation(
    tiny_config: Callable[..., DictConfig], tmp_path: Path
) -> None:
    cfg = tiny_config("train.max_iter=2", "train.eval_period=1", "train.vis_images=0")
    run_training(cfg, tmp_path)
    for iteration in (1, 2):
        assert {p.name for p in (tmp_path / "eval" / str(iteration)).iterdir()} == REPORT_FILES
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [r["iteration"] for r in rows] == ["1", "2"]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert float(rows[-1]["val/AP"]) == metrics["AP"] and float(rows[-1]["loss/total"]) > 0
    assert (tmp_path / "results.png").is_file()
    events = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0}).Reload()
    assert "pr_curve/all_iou50" in events.Tags()["tensors"]
