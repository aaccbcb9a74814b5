"""validate_coco: each broken input is reported with its file, image or annotation."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from data.validate import DatasetError, validate_coco

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import validate_dataset  # noqa: E402


def _report(ann_file, img_dir, dataset):
    ann_file.write_text(json.dumps(dataset))
    return validate_coco(ann_file, img_dir)


def _messages(report):
    return [str(problem) for problem in report.problems]


def test_clean_dataset(tiny_coco):
    ann_file, img_dir, dataset = tiny_coco
    report = validate_coco(ann_file, img_dir)
    assert report.ok and (report.num_images, report.num_annotations, report.num_categories) == (
        3,
        5,
        2,
    )
    assert [p.kind for p in report.box_problems] == ["outside_image", "degenerate"]
    report.raise_if_structural()  # box problems alone do not stop training


def test_not_json_and_not_coco(tmp_path):
    (tmp_path / "a.json").write_text("{oops")
    report = validate_coco(tmp_path / "a.json", tmp_path)
    assert not report.ok and "is not valid JSON" in _messages(report)[0]
    (tmp_path / "a.json").write_text(json.dumps({"images": [], "annotations": []}))
    assert _messages(validate_coco(tmp_path / "a.json", tmp_path)) == [
        'file: missing list "categories" (not a COCO instances file)'
    ]
    missing = validate_coco(tmp_path / "none.json", tmp_path)
    assert "annotation file not found" in _messages(missing)[0]


def test_ids_and_fields(tiny_coco):
    ann_file, img_dir, dataset = tiny_coco
    dataset["images"].append(dict(dataset["images"][0]))  # duplicate image id 10
    dataset["annotations"][1]["id"] = 1  # duplicate annotation id
    dataset["annotations"][2]["category_id"] = 4
    dataset["annotations"][3]["image_id"] = 99
    dataset["annotations"][4]["bbox"] = [1, 2, 3]
    del dataset["images"][2]["width"]
    report = _report(ann_file, img_dir, dataset)
    assert set(_messages(report)) == {
        "image id 10: appears 2 times",
        "annotation id 1: appears 2 times",
        "annotation 3: category_id 4 is not a category",
        "annotation 4: image_id 99 is not an image",
        "annotation 5: bbox [1, 2, 3] is not 4 finite numbers [x, y, w, h]",
        "images[2]: missing width",
    }
    with pytest.raises(DatasetError) as error:
        report.raise_if_structural()
    assert "annotation 4: image_id 99 is not an image" in str(error.value)


def test_images_missing_unreadable_resized_or_outside(tiny_coco):
    ann_file, img_dir, dataset = tiny_coco
    (img_dir / "bb.png").unlink()
    (img_dir / "ccc.png").write_bytes(b"garbage")
    dataset["images"][0]["width"] = 61
    dataset["images"].append({"id": 40, "file_name": "../ann.json", "height": 1, "width": 1})
    report = _report(ann_file, img_dir, dataset)
    messages = _messages(report)
    assert any(m.startswith("image 40 (../ann.json): file name resolves outside") for m in messages)
    # Outside-the-folder is structural: image checks wait until it is fixed.
    dataset["images"].pop()
    messages = _messages(_report(ann_file, img_dir, dataset))
    assert "image 10 (a.png): file is 60x40 (w x h) but the JSON says 61x40" in messages
    assert any(m.startswith("image 20 (bb.png): file ") and "not found" in m for m in messages)
    assert any(m.startswith("image 30 (ccc.png): cannot decode image") for m in messages)


def test_box_problems(tiny_coco):
    ann_file, img_dir, dataset = tiny_coco
    dataset["annotations"][0]["bbox"] = [5, 5, -2, 3]
    report = _report(ann_file, img_dir, dataset)
    assert report.ok
    assert _messages(report)[:2] == [
        "annotation 1 of image 10 (a.png): bbox [5, 5, -2, 3] has negative size",
        "annotation 2 of image 10 (a.png): bbox [50, 30, 20, 20] exceeds the 60x40 image",
    ]


def test_tool_exit_status(tiny_coco, capsys):
    ann_file, img_dir, dataset = tiny_coco
    assert validate_dataset.main([f"ann_file={ann_file}", f"img_dir={img_dir}"]) == 0
    assert (
        validate_dataset.main([f"ann_file={ann_file}", f"img_dir={img_dir}", "strict_boxes=true"])
        == 1
    )
    (img_dir / "a.png").unlink()
    assert validate_dataset.main([f"ann_file={ann_file}", f"img_dir={img_dir}"]) == 1
    out = capsys.readouterr().out
    assert "missing_image=1" in out and "image 10 (a.png): file" in out and out.endswith("FAILED\n")
