"""The imbalance meter: hand-counted anchors on a tiny grid, the ratio's arithmetic, the tool."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from data.synthetic import ensure_synthetic
from detector.anchors import AnchorGenerator
from detector.labeling import BACKGROUND, IGNORE, AnchorLabeler
from detector.matcher import Matcher
from detector.paper.imbalance import (
    COCO_AREA_BUCKETS,
    COCO_RESIZE,
    Counts,
    ce_loss_ratio,
    coco_like_boxes,
    count_labels,
    format_report,
    image_anchors,
    measure,
    paper_counts,
    sum_counts,
)

ROOT = Path(__file__).resolve().parents[3]

# One level, stride 16, one 16 px square anchor per cell: a 32 × 32 image has a 2 × 2 grid of
# anchors centred on the cells' top-left corners.
GRID = AnchorGenerator(sizes=[16], strides=[16], scales=[1.0], ratios=[1.0])
GRID_ANCHORS = [[-8, -8, 8, 8], [8, -8, 24, 8], [-8, 8, 8, 24], [8, 8, 24, 24]]
# fg IoU ≥ .5, bg < .3, no low-quality matches: IoU in [.3, .5) is ignored.
LABELER = AnchorLabeler(
    Matcher(fg_iou_thresh=0.5, bg_iou_thresh=0.3, allow_low_quality_matches=False)
)


def target(boxes: list[list[float]], labels: list[int]) -> dict:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


def test_tiny_grid_anchors_and_padding() -> None:
    assert image_anchors(GRID, 32, 32, 32).tolist() == GRID_ANCHORS
    # 20 × 30 pads to 32 × 32 (the model pads to size_divisibility): the same four anchors.
    assert image_anchors(GRID, 32, 20, 30).tolist() == GRID_ANCHORS
    assert image_anchors(GRID, 32, 33, 32).shape == (8, 4)  # pads to 64 × 32: 4 × 2 cells


def test_hand_counted_labels() -> None:
    # Box 1 is anchor 3 exactly (IoU 1: positive, class 2). Box 2, [-8, -8, 8, -2], covers 96 of
    # anchor 0's 256 px² (IoU .375: ignored) and touches no other anchor. Anchors 1, 2: background.
    t = target([[8, 8, 24, 24], [-8, -8, 8, -2]], [2, 0])
    labels, _ = LABELER(image_anchors(GRID, 32, 32, 32), t)
    assert labels.tolist() == [IGNORE, BACKGROUND, BACKGROUND, 2]
    counts = count_labels(labels, num_classes=3)
    assert counts == Counts(anchors=4, positives=1, ignored=1, num_classes=3)
    assert counts.background == 2
    # 2 background anchors × 3 classes + the 2 other classes of the positive anchor.
    assert counts.negative_terms == 8
    assert ce_loss_ratio(counts) == pytest.approx(8 * math.log(0.99) / math.log(0.01), rel=1e-14)
    assert ce_loss_ratio(counts, alpha=0.25) == pytest.approx(3 * ce_loss_ratio(counts), rel=1e-15)
    assert ce_loss_ratio(counts, alpha=0.5) == ce_loss_ratio(counts)


def test_empty_image_and_sums() -> None:
    anchors = image_anchors(GRID, 32, 32, 32)
    samples = [((32, 32), target([], [])), ((32, 32), target([[8, 8, 24, 24]], [0]))]
    per_image = measure(samples, LABELER, GRID, 32, num_classes=3)
    assert per_image == [Counts(4, 0, 0, 3), Counts(4, 1, 0, 3)]
    assert ce_loss_ratio(per_image[0]) == math.inf  # no positive: nothing to compare with
    assert per_image[0].negative_terms == 12
    total = sum_counts(per_image)
    assert total == Counts(8, 1, 0, 3)
    assert total.negative_terms == 12 + 3 * 3 + 2 == 23
    assert total.scaled(0.5) == Counts(4, 0.5, 0, 3)
    assert LABELER(anchors, target([], []))[0].tolist() == [BACKGROUND] * 4
    with pytest.raises(ValueError, match="3 and 80 K"):
        _ = Counts(1, 0, 0, 3) + Counts(1, 0, 0, 80)


def test_ratio_of_paper_sized_counts() -> None:
    # 100 anchors, 2 positive, 8 ignored, 80 classes: 90 × 80 + 2 × 79 = 7358 negative terms.
    counts = Counts(100, 2, 8, 80)
    assert counts.negative_terms == 7358
    expected = 7358 * math.log1p(-0.01) / (2 * math.log(0.01))
    assert ce_loss_ratio(counts) == pytest.approx(expected, rel=1e-15)
    assert ce_loss_ratio(counts, alpha=0.75) == pytest.approx(expected / 3, rel=1e-15)
    assert ce_loss_ratio(counts, prior=0.5) == pytest.approx(7358 / 2, rel=1e-15)


def test_paper_setting_anchor_count_and_positives() -> None:
    # 800 × 1333 pads to 896 × 1408: P3–P7 grids 112×176, 56×88, 28×44, 14×22, 7×11, 9 anchors.
    paper = paper_counts(AnchorLabeler(Matcher()), AnchorGenerator(), images=3)
    assert paper.anchors == 9 * (112 * 176 + 56 * 88 + 28 * 44 + 14 * 22 + 7 * 11) == 236_313
    assert paper.num_classes == 80
    assert paper == paper_counts(AnchorLabeler(Matcher()), AnchorGenerator(), images=3)
    # Each box has at least its best anchor (low-quality matches), and 7.3 boxes per image.
    assert 7.3 <= paper.positives <= 7.3 * 60


def test_coco_like_boxes_follow_the_area_mix() -> None:
    boxes = coco_like_boxes(np.random.default_rng(0), 20_000, 800, 1333).numpy()
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 1333).all() and (boxes[:, 3] <= 800).all()
    side = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])) / COCO_RESIZE
    shares = np.array([b[0] for b in COCO_AREA_BUCKETS])
    assert np.mean(side < 32) == pytest.approx(shares[0] / shares.sum(), abs=0.015)
    assert np.mean((side >= 32) & (side < 96)) == pytest.approx(shares[1] / shares.sum(), abs=0.015)


def test_report_lists_images_total_and_paper() -> None:
    report = format_report([Counts(4, 1, 1, 3), Counts(4, 0, 0, 3)], Counts(10, 1, 0, 3), 0.25)
    lines = report.splitlines()
    assert lines[1].split()[:3] == ["0", "1.0", "8"]
    assert lines[2].split()[2:4] == ["12", "inf"]
    assert lines[3].split()[:3] == ["total", "1.0", "20"]
    ratio = 20 * -math.log(0.99) / -math.log(0.01)
    assert lines[3].split()[3:] == [f"{ratio:.1f}", f"{3 * ratio:.1f}"]
    assert lines[5].split()[:2] == ["paper", "(mean)"]
    assert lines[-1] == f"this data's CE ratio is {20 / 29:.3g} × the paper's"


def test_tool_counts_absent_classes_and_rejects_bad_images(tmp_path, capsys, load_tool) -> None:
    tool = load_tool("imbalance")
    root = tmp_path / "synthetic"
    ensure_synthetic(root, seed=0, num_train=4, num_val=2, absent_classes=3)
    args = [f"data.root={root}", "data.generate.num_train=4", "data.generate.num_val=2"]
    args += ["data.generate.absent_classes=3", "loss=ce", "images=2", "paper_images=1"]
    assert tool.main(args) == 0
    out = capsys.readouterr().out
    assert "8 classes, first 2 images" in out  # 5 real + 3 absent
    assert "(α = 0.75, π = 0.01)" in out
    assert tool.main([f"data.root={root}", "images=0"]) == 2
    assert (
        capsys.readouterr().err
        == "focaldet: config error: images must be a positive integer, got 0\n"
    )
