"""Fixtures for the data tests: tiny COCO datasets written to tmp_path (the shared raccoon set
is tests/conftest.py's ``raccoon``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest


def write_image(path: Path, height: int, width: int, value: int = 0) -> None:
    """A PNG of constant colour (lossless, so pixel values are exact)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.zeros((height, width, 3), np.uint8)
    image[:] = (value, value // 2, 255 - value)
    assert cv2.imwrite(str(path), image)


def write_coco(tmp_path: Path, dataset: dict[str, Any], sizes: dict[str, tuple[int, int]]) -> Path:
    """Write ``dataset`` to ``tmp_path/ann.json`` and the images named in ``sizes`` (h, w)."""
    for name, (height, width) in sizes.items():
        write_image(tmp_path / "images" / name, height, width, value=len(name) * 20)
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps(dataset))
    return ann_file


@pytest.fixture
def image_writer():
    """``write_image(path, height, width, value=0)``: a constant-colour PNG."""
    return write_image


@pytest.fixture
def coco_writer():
    """``write_coco(tmp_path, dataset, sizes)``: the JSON and its images, returns the JSON path."""
    return write_coco


@pytest.fixture
def tiny_coco(tmp_path: Path) -> tuple[Path, Path, dict[str, Any]]:
    """Three images (one without boxes, one portrait), category ids 3 and 9, one crowd box."""
    dataset = {
        "images": [
            {"id": 10, "file_name": "a.png", "height": 40, "width": 60},
            {"id": 20, "file_name": "bb.png", "height": 50, "width": 30},
            {"id": 30, "file_name": "ccc.png", "height": 40, "width": 60},
        ],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 9, "bbox": [5, 6, 10, 20], "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 3, "bbox": [50, 30, 20, 20], "iscrowd": 0},
            {"id": 3, "image_id": 10, "category_id": 3, "bbox": [0, 0, 60, 40], "iscrowd": 1},
            {"id": 4, "image_id": 20, "category_id": 9, "bbox": [29.5, 10, 5, 5], "iscrowd": 0},
            {"id": 5, "image_id": 20, "category_id": 3, "bbox": [1, 2, 3.5, 4.25]},
        ],
        "categories": [{"id": 9, "name": "nine"}, {"id": 3, "name": "three"}],
    }
    sizes = {"a.png": (40, 60), "bb.png": (50, 30), "ccc.png": (40, 60)}
    return write_coco(tmp_path, dataset, sizes), tmp_path / "images", dataset
