"""The embedded synthetic dataset: deterministic, valid COCO, regenerated when incomplete."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data.coco import CocoDetection
from data.synthetic import CLASSES, ensure_synthetic, make_synthetic_coco, render_image
from data.validate import DatasetError, validate_coco

SMALL = {"num_train": 12, "num_val": 4}


def test_same_seed_same_files(tmp_path):
    a = make_synthetic_coco(tmp_path / "a", seed=1, **SMALL)
    b = make_synthetic_coco(tmp_path / "b", seed=1, **SMALL)
    c = make_synthetic_coco(tmp_path / "c", seed=2, **SMALL)
    assert a.train_ann.read_text() == b.train_ann.read_text()
    assert (a.train_img_dir / "000003.jpg").read_bytes() == (
        b.train_img_dir / "000003.jpg"
    ).read_bytes()
    assert a.train_ann.read_text() != c.train_ann.read_text()
    assert sorted(p.name for p in a.val_img_dir.iterdir()) == [f"{i:06d}.jpg" for i in range(4)]


def test_valid_coco_that_the_dataset_reads(tmp_path):
    paths = make_synthetic_coco(tmp_path, seed=0, **SMALL)
    for ann, img_dir in (
        (paths.train_ann, paths.train_img_dir),
        (paths.val_ann, paths.val_img_dir),
    ):
        report = validate_coco(ann, img_dir)
        assert report.problems == [], report.summary()
    dataset = CocoDetection(paths.train_ann, paths.train_img_dir, bad_box_policy="error")
    assert [c["name"] for c in dataset.classes] == ["circle", "square", "triangle", "ring", "cross"]
    image, target = dataset[0]
    assert image.shape[0] == 3 and target["size"] == target["orig_size"]
    assert dataset.stats["boxes_dropped"] == 0


def test_statistics_of_the_default_mix():
    """Over 300 rendered images: empty images, small objects and the rare class are all present."""
    sizes, labels, empty = [], [], 0
    for index in range(300):
        image, objects = render_image(np.random.default_rng((0, 0, index)))
        assert image.dtype == np.uint8 and image.shape[2] == 3
        empty += not objects
        for obj in objects:
            x1, y1, x2, y2 = obj["bbox"]
            assert 0 <= x1 < x2 <= image.shape[1] and 0 <= y1 < y2 <= image.shape[0]
            sizes.append(max(x2 - x1, y2 - y1))
            labels.append(obj["label"])
    counts = np.bincount(labels, minlength=len(CLASSES)) / len(labels)
    assert 0.08 < empty / 300 < 0.25
    assert 0.03 < counts[4] < 0.09 and counts[:4].min() > 0.15  # cross is the rare class
    assert min(sizes) >= 8 and max(sizes) <= 66 and np.mean(np.array(sizes) < 20) > 0.2


def test_ensure_generates_once_and_repairs(tmp_path):
    root = tmp_path / "synthetic"
    paths = ensure_synthetic(root, seed=0, **SMALL)
    stamp = paths.train_ann.stat().st_mtime_ns
    assert ensure_synthetic(root, seed=0, **SMALL) == paths
    assert paths.train_ann.stat().st_mtime_ns == stamp  # complete: not regenerated
    (paths.val_img_dir / "000001.jpg").unlink()  # half-written / damaged
    ensure_synthetic(root, seed=0, **SMALL)
    assert (paths.val_img_dir / "000001.jpg").is_file()
    assert json.loads((root / "manifest.json").read_text())["params"]["seed"] == 0
    ensure_synthetic(root, seed=3, **SMALL)  # other parameters: regenerated
    assert json.loads((root / "manifest.json").read_text())["params"]["seed"] == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".synthetic.tmp")]


def test_ensure_refuses_foreign_folder(tmp_path):
    (tmp_path / "thesis.tex").write_text("precious")
    with pytest.raises(DatasetError, match=r"holds other files \(thesis.tex\); refusing"):
        ensure_synthetic(tmp_path, **SMALL)
    assert (tmp_path / "thesis.tex").read_text() == "precious"
