"""VOC and YOLO converters, on small hand-made files and on the shared raccoon set."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from data.coco import CocoDetection
from data.convert import read_class_names, split_coco, voc_to_coco, write_coco, yolo_to_coco
from data.validate import DatasetError, validate_coco

VOC_XML = """<annotation><filename>{name}</filename>
<size><width>999</width><height>999</height><depth>3</depth></size>{objects}</annotation>"""
VOC_OBJECT = """<object><name>{cls}</name><difficult>{difficult}</difficult>
<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"""


def _voc(tmp_path, objects_per_image, write_image):
    for name, objects in objects_per_image.items():
        write_image(tmp_path / "img" / name, 20, 30)
        body = "".join(VOC_OBJECT.format(cls=c, difficult=d, b=b) for c, b, d in objects)
        (tmp_path / "xml").mkdir(exist_ok=True)
        (tmp_path / "xml" / f"{name}.xml").write_text(VOC_XML.format(name=name, objects=body))
    return tmp_path / "xml", tmp_path / "img"


def test_voc_exact(tmp_path, image_writer):
    ann_dir, img_dir = _voc(
        tmp_path,
        {
            "a.png": [("dog", (1, 1, 10, 5), 0), ("cat", (5, 6, 31, 20), 1)],
            "b.png": [],
        },
        image_writer,
    )
    coco = voc_to_coco(ann_dir, img_dir)
    assert coco["categories"] == [
        {"id": 1, "name": "cat", "supercategory": ""},
        {"id": 2, "name": "dog", "supercategory": ""},
    ]
    # Sizes from the file, not the stale 999 x 999 of the XML.
    assert coco["images"] == [
        {"id": 1, "file_name": "a.png", "height": 20, "width": 30},
        {"id": 2, "file_name": "b.png", "height": 20, "width": 30},
    ]
    dog, cat = coco["annotations"]
    assert dog["bbox"] == [0.0, 0.0, 10.0, 5.0] and dog["category_id"] == 2 and dog["iscrowd"] == 0
    assert cat["bbox"] == [4.0, 5.0, 26.0, 15.0] and cat["iscrowd"] == 1  # difficult, clipped to 30
    assert (
        voc_to_coco(ann_dir, img_dir, classes=["dog", "cat"])["annotations"][0]["category_id"] == 1
    )
    with pytest.raises(DatasetError, match=r"use classes \['cat'\] not in \['dog'\]"):
        voc_to_coco(ann_dir, img_dir, classes=["dog"])


def test_voc_missing_image_named(tmp_path, image_writer):
    ann_dir, img_dir = _voc(tmp_path, {"a.png": []}, image_writer)
    (img_dir / "a.png").unlink()
    with pytest.raises(DatasetError, match=r"a.png.xml: image a.png: image file not found"):
        voc_to_coco(ann_dir, img_dir)


def test_yolo_exact(tmp_path, image_writer):
    image_writer(tmp_path / "img" / "a.png", 20, 40)
    image_writer(tmp_path / "img" / "b.png", 20, 40)  # no label file: a negative image
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("1 0.5 0.5 0.5 0.5\n\n0 0.1 0.1 0.4 0.2\n")
    (tmp_path / "names.txt").write_text("cat\ndog\n")
    coco = yolo_to_coco(
        tmp_path / "labels", tmp_path / "img", read_class_names(tmp_path / "names.txt")
    )
    assert [image["file_name"] for image in coco["images"]] == ["a.png", "b.png"]
    first, second = coco["annotations"]
    assert first["bbox"] == [10.0, 5.0, 20.0, 10.0] and first["category_id"] == 2
    assert second["bbox"] == pytest.approx([0.0, 0.0, 12.0, 4.0])  # x from -4 clipped to 0
    (tmp_path / "labels" / "a.txt").write_text("2 0.5 0.5 0.1 0.1\n0 0.5 0.5\n")
    with pytest.raises(DatasetError) as error:
        yolo_to_coco(tmp_path / "labels", tmp_path / "img", ["cat", "dog"])
    assert "a.txt:1: class 2 not in 0..1" in str(error.value)
    assert "a.txt:2: expected 'class cx cy w h', got '0 0.5 0.5'" in str(error.value)


def test_class_names_file(tmp_path):
    (tmp_path / "n.txt").write_text("a\na\n")
    with pytest.raises(DatasetError, match="repeats a name"):
        read_class_names(tmp_path / "n.txt")


def test_raccoon_voc(tmp_path, raccoon):
    coco = voc_to_coco(raccoon / "annotations", raccoon / "images")
    out = write_coco(coco, tmp_path / "raccoon.json")
    dataset = CocoDetection(out, raccoon / "images", bad_box_policy="error")
    assert len(dataset.coco_gt.getImgIds()) == 200 and len(dataset.coco_gt.getAnnIds()) == 217
    assert dataset.classes == [{"id": 1, "name": "raccoon"}]
    assert validate_coco(out, raccoon / "images").problems == []
    grayscale = {"raccoon-150.jpg", "raccoon-152.jpg", "raccoon-161.jpg"}
    boxes = 0
    for index in range(len(dataset)):
        if dataset.file_name(index) in grayscale:
            image, target = dataset[index]  # decoding the three grayscale photos gives RGB
            assert image.shape == (3, *dataset.image_size(index))
        boxes += len(dataset.annotations(index)["boxes"])
    assert boxes == 217 and len(dataset) == 200


def _numbered(num_images: int) -> dict:
    """A COCO dict with image i holding i % 3 boxes (so some images have none)."""
    images = [
        {"id": 10 + i, "file_name": f"{i}.png", "width": 8, "height": 8} for i in range(num_images)
    ]
    annotations = [
        {
            "id": 100 * i + k,
            "image_id": 10 + i,
            "category_id": 1,
            "bbox": [0, 0, 4, 4],
            "area": 16,
            "iscrowd": 0,
        }
        for i in range(num_images)
        for k in range(i % 3)
    ]
    return {
        "info": {},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "x"}],
    }


def test_split_is_a_seeded_partition_by_image() -> None:
    dataset = _numbered(10)
    train, val = split_coco(dataset, 0.25, seed=3)
    assert len(val["images"]) == 2 and len(train["images"]) == 8  # round(2.5) == 2
    train_ids = {image["id"] for image in train["images"]}
    val_ids = {image["id"] for image in val["images"]}
    assert train_ids.isdisjoint(val_ids) and train_ids | val_ids == set(range(10, 20))
    for part, ids in ((train, train_ids), (val, val_ids)):
        assert {ann["image_id"] for ann in part["annotations"]} <= ids
        assert part["categories"] == dataset["categories"]
    assert len(train["annotations"]) + len(val["annotations"]) == len(dataset["annotations"]) == 9
    assert split_coco(dataset, 0.25, seed=3) == (train, val)
    assert any(split_coco(dataset, 0.25, seed=s)[1] != val for s in range(4, 8))


def test_split_keeps_an_image_on_each_side() -> None:
    assert len(split_coco(_numbered(3), 0.01)[1]["images"]) == 1
    assert len(split_coco(_numbered(3), 0.99)[0]["images"]) == 1


@pytest.mark.parametrize(
    ("num_images", "fraction", "message"),
    [
        (4, 0.0, "val_fraction must be between 0 and 1 (exclusive), not 0.0"),
        (4, 1.0, "val_fraction must be between 0 and 1 (exclusive), not 1.0"),
        (1, 0.5, "cannot split 1 image(s) into train and val"),
    ],
)
def test_split_bad_input(num_images: int, fraction: float, message: str) -> None:
    with pytest.raises(DatasetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        split_coco(_numbered(num_images), fraction)


def test_tool_splits_raccoon(tmp_path, raccoon) -> None:
    tool = Path(__file__).resolve().parents[2] / "tools" / "convert_dataset.py"
    args = [f"ann_dir={raccoon / 'annotations'}", f"img_dir={raccoon / 'images'}"]
    out = tmp_path / "instances.json"
    run = subprocess.run(
        [sys.executable, str(tool), "format=voc", *args, f"out={out}", "val_fraction=0.2"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"wrote {tmp_path / 'instances_train.json'}: 160 images" in run.stdout
    train = json.loads((tmp_path / "instances_train.json").read_text())
    val = json.loads((tmp_path / "instances_val.json").read_text())
    assert len(val["images"]) == 40
    assert len(train["annotations"]) + len(val["annotations"]) == 217
    assert not out.exists()
