"""The embedded synthetic dataset: deterministic, valid COCO, regenerated when incomplete."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from data.coco import CocoDetection
from data.synthetic import ensure_synthetic, is_complete, make_synthetic_coco, render_image
from data.synthetic_dial import CLASSES, PALETTE, Dial
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


# SHA-256 of the annotation files of make_synthetic_coco(seed=0, num_train=12, num_val=4), taken
# before the imbalance dial existed: its defaults must draw the same dataset (the demo's AP).
DEFAULT_TRAIN_SHA = "8b34a8211844820db59a073dce9858910cd369f3b402376aa6dad44fc9988360"
DEFAULT_VAL_SHA = "6e005e732a6745022ac16e28188604f5b7dbc6f7ce5773a23ffce1b8ff9b4685"


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_default_dial_draws_the_dataset_it_always_drew(tmp_path):
    paths = make_synthetic_coco(tmp_path / "a", seed=0, **SMALL)
    assert (sha(paths.train_ann), sha(paths.val_ann)) == (DEFAULT_TRAIN_SHA, DEFAULT_VAL_SHA)
    explicit = Dial().__dict__  # the defaults passed explicitly, as configs/data/synthetic.yaml
    paths = make_synthetic_coco(tmp_path / "b", seed=0, **SMALL, **explicit)
    assert (sha(paths.train_ann), sha(paths.val_ann)) == (DEFAULT_TRAIN_SHA, DEFAULT_VAL_SHA)
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["params"] == {"version": 1, "seed": 0, "num_train": 12, "num_val": 4}


def test_more_classes_are_shape_colour_pairs_all_drawn(tmp_path):
    classes = Dial(num_classes=80).classes()
    assert (
        len({(c["shape"], c["color"]) for c in classes}) == 80 == len({c["name"] for c in classes})
    )
    assert [c["name"] for c in classes[:6]] == [*(c["name"] for c in CLASSES), "blue circle"]
    assert classes[79] == {"id": 80, "name": "yellow cross", "shape": "cross", "color": PALETTE[3]}
    probs = Dial(num_classes=10).class_probs()  # each shape's frequency split over its 2 colours
    assert probs.tolist() == pytest.approx([0.13, 0.12, 0.11, 0.11, 0.03] * 2, abs=1e-15)
    paths = make_synthetic_coco(tmp_path, seed=0, num_train=60, num_val=1, num_classes=10)
    coco = json.loads(paths.train_ann.read_text())
    assert [c["id"] for c in coco["categories"]] == list(range(1, 11))
    assert {a["category_id"] for a in coco["annotations"]} == set(range(1, 11))


def test_absent_classes_reach_num_classes_without_annotations(tmp_path):
    paths = make_synthetic_coco(tmp_path, seed=0, **SMALL, absent_classes=3)
    coco = json.loads(paths.train_ann.read_text())
    assert [c["name"] for c in coco["categories"][5:]] == ["absent 0", "absent 1", "absent 2"]
    assert {a["category_id"] for a in coco["annotations"]} <= {1, 2, 3, 4, 5}
    # The images and boxes are those of the default dataset: only the label space grew.
    default = json.loads(make_synthetic_coco(tmp_path / "d", seed=0, **SMALL).train_ann.read_text())
    assert coco["annotations"] == default["annotations"]
    assert CocoDetection(paths.train_ann, paths.train_img_dir).num_classes == 8
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["params"]["absent_classes"] == 3
    assert is_complete(tmp_path, seed=0, **SMALL, absent_classes=3)
    assert not is_complete(tmp_path, seed=0, **SMALL)


def test_image_size_and_objects_per_image():
    for index in range(40):
        image, objects = render_image(np.random.default_rng((0, 0, index)), Dial(image_size=512))
        assert image.shape[:2] in {(384, 512), (448, 448), (512, 384)}
        _, objects = render_image(np.random.default_rng((0, 0, index)), Dial(max_objects=1))
        assert len(objects) <= 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"colours": 3}, "unknown option 'colours' (choose from num_classes, absent_classes"),
        ({"num_classes": 81}, "num_classes must be from 1 to 80, got 81"),
        ({"absent_classes": -1}, "absent_classes must be >= 0, got -1"),
        ({"max_objects": 2.5}, "max_objects must be an integer, got 2.5"),
    ],
)
def test_bad_dial_is_one_line_before_anything_is_written(tmp_path, options, message):
    with pytest.raises(DatasetError, match=message.replace("(", r"\(")):
        ensure_synthetic(tmp_path / "x", **SMALL, **options)
    assert not list(tmp_path.iterdir())
