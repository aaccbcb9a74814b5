"""VOC and YOLO converters, on small hand-made files and on the shared raccoon set."""

from __future__ import annotations

import pytest

from data.coco import CocoDetection
from data.convert import read_class_names, voc_to_coco, write_coco, yolo_to_coco
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
    assert len(dataset.coco.getImgIds()) == 200 and len(dataset.coco.getAnnIds()) == 217
    assert dataset.classes == [{"id": 1, "name": "raccoon"}]
    assert validate_coco(out, raccoon / "images").problems == []
    grayscale = {"raccoon-150.jpg", "raccoon-152.jpg", "raccoon-161.jpg"}
    boxes = 0
    for index, record in enumerate(dataset.records):
        if record["file_name"] in grayscale:
            image, target = dataset[index]  # decoding the three grayscale photos gives RGB
            assert image.shape == (3, *record["size"])
        boxes += len(record["boxes"])
    assert boxes == 217 and len(dataset) == 200
