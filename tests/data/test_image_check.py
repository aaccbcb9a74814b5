"""The image check at start (data/image_check.py) and its policies in CocoDetection."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest

import data.image_check
from data.coco import CocoDetection
from data.decode import ImageDecodeError, read_image
from data.image_check import check_image_headers, image_problem
from data.validate import DatasetError, validate_coco


def _jpeg(path, height=48, width=64):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), image)
    return path


def test_jpeg_cut_in_half_is_found_by_the_check_and_at_decode(tmp_path):
    whole = _jpeg(tmp_path / "whole.jpg")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    padded = tmp_path / "padded.jpg"
    padded.write_bytes(whole.read_bytes() + b"\0" * 1000)  # zero padding after FFD9 is fine
    assert image_problem(whole, 48, 64) is None and image_problem(padded, 48, 64) is None
    assert read_image(padded).shape == (48, 64, 3)
    assert image_problem(cut, 48, 64) == (
        "truncated_image",
        f"file {cut}: truncated JPEG (no end-of-image marker FFD9 at its end)",
    )
    with pytest.raises(ImageDecodeError, match=f"cannot decode image {cut}: truncated JPEG"):
        read_image(cut)


def test_each_problem_kind(tmp_path):
    good = _jpeg(tmp_path / "good.jpg")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    assert image_problem(good, 64, 48)[0] == "size_mismatch"
    assert image_problem(good, 64, 48)[1] == "file is 64x48 (w x h) but the JSON says 48x64"
    assert image_problem(tmp_path / "none.jpg", 1, 1) == (
        "missing_image",
        f"file {tmp_path / 'none.jpg'} not found",
    )
    assert image_problem(tmp_path / "junk.png", 1, 1)[0] == "unreadable_image"


def test_cache_rereads_only_changed_or_failed_images(tmp_path, monkeypatch):
    paths = [_jpeg(tmp_path / f"{i}.jpg") for i in range(5)]
    sizes = np.array([(48, 64)] * 5)
    cache = tmp_path / "check.headers"
    sizes[4] = (1, 1)  # image 4 fails: its size is wrong
    assert list(check_image_headers(paths, sizes, cache, b"k")) == [4]
    read = []
    real = data.image_check.image_problem
    monkeypatch.setattr(
        data.image_check, "image_problem", lambda p, h, w: read.append(p.name) or real(p, h, w)
    )
    assert list(check_image_headers(paths, sizes, cache, b"k")) == [4]
    assert read == ["4.jpg"]  # the four that passed are not read again
    stat = paths[1].stat()
    os.utime(paths[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    read.clear()
    assert list(check_image_headers(paths, sizes, cache, b"k")) == [4]
    assert sorted(read) == ["1.jpg", "4.jpg"]
    read.clear()
    check_image_headers(paths, sizes, cache, b"another image list")
    assert len(read) == 5


def _four_images(tmp_path, coco_writer):
    dataset = {
        "images": [
            {"id": i, "file_name": f"{i}.png", "height": 20, "width": 30} for i in range(1, 5)
        ],
        "annotations": [
            {"id": i, "image_id": i, "category_id": 1, "bbox": [1, 2, 3 + i, 4]}
            for i in range(1, 5)
        ],
        "categories": [{"id": 1, "name": "a"}],
    }
    sizes = {f"{i}.png": (20, 30) for i in range(1, 5)}
    return coco_writer(tmp_path, dataset, sizes), tmp_path / "images"


def test_policy_error_names_the_first_bad_files_on_one_line(tmp_path, coco_writer):
    ann_file, img_dir = _four_images(tmp_path, coco_writer)
    (img_dir / "2.png").unlink()
    (img_dir / "4.png").write_bytes(b"")
    CocoDetection(ann_file, img_dir)  # not checked unless asked (JSON-only users, benchmarks)
    with pytest.raises(DatasetError) as info:
        CocoDetection(ann_file, img_dir, check_images=True)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"2 of the 4 images of {ann_file} fail the check: image 2 (2.png)")
    assert f"file {img_dir / '2.png'} not found; image 4 (4.png): cannot decode" in message
    assert message.endswith("data.bad_image_policy=skip trains without them)")


def test_policy_skip_leaves_the_images_out_and_counts_them(tmp_path, coco_writer):
    ann_file, img_dir = _four_images(tmp_path, coco_writer)
    (img_dir / "2.png").unlink()
    full = CocoDetection(ann_file, img_dir)
    skipped = CocoDetection(ann_file, img_dir, check_images=True, bad_image_policy="skip")
    assert skipped.stats["images_skipped"] == 1 and len(skipped) == 3
    assert [skipped.image_id(i) for i in range(3)] == [1, 3, 4]
    assert [skipped.file_name(i) for i in range(3)] == ["1.png", "3.png", "4.png"]
    for new, old in zip(range(3), (0, 2, 3), strict=True):
        assert skipped.annotations(new)["boxes"].tolist() == full.annotations(old)["boxes"].tolist()
        assert skipped[new][1]["image_id"] == full[old][1]["image_id"]
    for image in ("1.png", "3.png", "4.png"):
        (img_dir / image).unlink()
    with pytest.raises(DatasetError, match="no image is left to use"):
        CocoDetection(ann_file, img_dir, check_images=True, bad_image_policy="skip")
    with pytest.raises(ValueError, match="bad_image_policy must be one of"):
        CocoDetection(ann_file, img_dir, bad_image_policy="warn")


def test_wrong_size_is_found_at_start_from_the_cache_too(tmp_path, coco_writer, image_writer):
    ann_file, img_dir = _four_images(tmp_path, coco_writer)
    CocoDetection(ann_file, img_dir, check_images=True)
    assert len(list((tmp_path / ".focaldet_cache").glob("*.headers"))) == 1
    image_writer(img_dir / "3.png", 21, 30)  # rewritten: new size and mtime
    with pytest.raises(DatasetError, match=r"image 3 \(3.png\): file is 30x21 \(w x h\)"):
        CocoDetection(ann_file, img_dir, check_images=True)


def test_empty_images_or_categories_are_structural(tmp_path, coco_writer):
    ann_file, img_dir = _four_images(tmp_path, coco_writer)
    original = json.loads(ann_file.read_text())
    for key in ("images", "categories"):
        dataset = {**original, key: [], "annotations": []}
        ann_file.write_text(json.dumps(dataset))
        report = validate_coco(ann_file, img_dir)
        assert not report.ok
        assert [str(p) for p in report.structural] == [
            f'file: "{key}" is empty (the dataset has no {key})'
        ]
        with pytest.raises(DatasetError, match=f'"{key}" is empty'):
            CocoDetection(ann_file, img_dir, cache=False)
