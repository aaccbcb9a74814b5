"""The compact dataset gives what the pycocotools-backed dataset gave, item by item (issue 17).

``FrozenCocoDetection`` is ``data/coco.py`` as of commit 945bd7e (before the compact arrays),
frozen here as the reference: samples, boxes (bit for bit), labels, crowd flags, statistics,
aspect ratios and the bad-box messages must not change.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from data.coco import CocoDetection
from data.convert import voc_to_coco, write_coco
from data.decode import read_image
from data.synthetic import make_synthetic_coco
from data.transforms import build_transforms
from data.validate import (
    BAD_BOX_POLICIES,
    DatasetError,
    Problem,
    check_structure,
    format_problems,
    load_coco_json,
    sanitize_box,
)

frozen_logger = logging.getLogger("frozen_coco")


class FrozenCocoDetection(torch.utils.data.Dataset):
    """``data.coco.CocoDetection`` at 945bd7e, unchanged but for the logger's name."""

    def __init__(
        self,
        ann_file: str | Path,
        img_dir: str | Path,
        transforms: Callable[..., dict[str, Any]] | None = None,
        bad_box_policy: str = "skip",
    ) -> None:
        if bad_box_policy not in BAD_BOX_POLICIES:
            raise ValueError(
                f"bad_box_policy must be one of {BAD_BOX_POLICIES}, not {bad_box_policy!r}"
            )
        self.ann_file = Path(ann_file)
        self.img_dir = Path(img_dir)
        self.transforms = transforms
        dataset = load_coco_json(self.ann_file)
        problems = check_structure(dataset, self.img_dir)
        if problems:
            header = f"dataset {self.ann_file} with images in {self.img_dir} is not usable:"
            raise DatasetError(format_problems(header, problems))
        self.coco = COCO()
        self.coco.dataset = dataset
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco.createIndex()
        categories = sorted(dataset["categories"], key=lambda category: category["id"])
        self.classes = [{"id": int(c["id"]), "name": str(c["name"])} for c in categories]
        self.label_to_cat_id = [category["id"] for category in self.classes]
        self.cat_id_to_label = {cat_id: label for label, cat_id in enumerate(self.label_to_cat_id)}
        self._build_records(dataset, bad_box_policy)

    def _build_records(self, dataset: dict[str, Any], bad_box_policy: str) -> None:
        stats = dict.fromkeys(
            ("images", "images_without_boxes", "boxes", "crowd_boxes", "boxes_clipped"), 0
        )
        stats.update(boxes_dropped=0, boxes_negative_size=0)
        problems: list[Problem] = []
        self.records: list[dict[str, Any]] = []
        for image in dataset["images"]:
            boxes, labels, iscrowd = [], [], []
            for ann in self.coco.imgToAnns.get(image["id"], []):
                where = f"annotation {ann['id']} of image {image['id']} ({image['file_name']})"
                box, problem = sanitize_box(ann["bbox"], image["width"], image["height"], where)
                if problem is not None:
                    problems.append(problem)
                    if problem.kind == "outside_image" and box is not None:
                        stats["boxes_clipped"] += 1
                    if problem.kind == "negative_size":
                        stats["boxes_negative_size"] += 1
                if box is None:
                    stats["boxes_dropped"] += 1
                    continue
                boxes.append(box)
                labels.append(self.cat_id_to_label[ann["category_id"]])
                iscrowd.append(bool(ann.get("iscrowd", 0)))
            stats["images"] += 1
            stats["boxes"] += len(boxes)
            stats["crowd_boxes"] += sum(iscrowd)
            stats["images_without_boxes"] += not boxes
            self.records.append(
                {
                    "image_id": image["id"],
                    "file_name": image["file_name"],
                    "size": (image["height"], image["width"]),
                    "boxes": np.stack(boxes) if boxes else np.zeros((0, 4), np.float32),
                    "labels": np.array(labels, dtype=np.int64),
                    "iscrowd": np.array(iscrowd, dtype=bool),
                }
            )
        self.stats = stats
        if problems and bad_box_policy == "error":
            raise DatasetError(format_problems(f"bad boxes in {self.ann_file}:", problems))
        if problems and bad_box_policy == "warn":
            frozen_logger.warning(format_problems(f"bad boxes in {self.ann_file}:", problems))

    def __len__(self) -> int:
        return len(self.records)

    def aspect_ratios(self) -> list[float]:
        return [record["size"][0] / record["size"][1] for record in self.records]

    def load(self, index: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        record = self.records[index]
        path = self.img_dir / record["file_name"]
        image = read_image(path)
        if image.shape[:2] != record["size"]:
            raise DatasetError(
                f"image {record['image_id']} ({path}) decodes to {image.shape[1]}x"
                f"{image.shape[0]} (w x h) but the JSON says {record['size'][1]}x"
                f"{record['size'][0]}"
            )
        annotations = {key: record[key] for key in ("boxes", "labels", "iscrowd")}
        return image, annotations

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        record = self.records[index]
        image, annotations = self.load(index)
        boxes, labels, iscrowd = annotations["boxes"], annotations["labels"], annotations["iscrowd"]
        if self.transforms is not None:
            out = self.transforms(image=image, bboxes=boxes, labels=labels, iscrowd=iscrowd)
            image = out["image"]
            boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
            labels = np.asarray(out["labels"], dtype=np.int64)
            iscrowd = np.asarray(out["iscrowd"], dtype=bool)
        target = {
            "boxes": torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32)),
            "labels": torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)),
            "iscrowd": torch.from_numpy(np.ascontiguousarray(iscrowd, dtype=bool)),
            "image_id": int(record["image_id"]),
            "orig_size": tuple(record["size"]),
            "size": (int(image.shape[0]), int(image.shape[1])),
        }
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        return tensor, target


def generated_coco(tmp_path: Path, image_writer: Callable, num_images: int = 40) -> Path:
    """Crowds (flags 0, 1, 2, true, missing), empty images, annotations in shuffled order, sparse
    category ids, int and float boxes, and every kind of bad box: negative size, outside (clipped
    or dropped), within the tolerance, degenerate; non-ASCII file names in subfolders."""
    rng = np.random.default_rng(17)
    images, annotations = [], []
    for i in range(num_images):
        height, width = int(rng.integers(8, 40)), int(rng.integers(8, 40))
        name = f"sub{i % 3}/img_{i}_é.png" if i % 5 else f"img {i}.png"
        images.append(
            {"id": int(1000 - 7 * i), "file_name": name, "height": height, "width": width}
        )
        image_writer(tmp_path / "images" / name, height, width, value=i)
        for _ in range(int(rng.choice([0, 0, 1, 3, 6]))):
            kind = rng.integers(8)
            x, y = rng.uniform(-3, width), rng.uniform(-3, height)
            w, h = rng.uniform(-2, width / 2), rng.uniform(-2, height / 2)
            bbox = [round(x, 2), round(y, 2), round(w, 2), round(h, 2)]
            if kind == 0:
                bbox = [int(x), int(y), int(abs(w)) + 1, int(abs(h)) + 1]
            elif kind == 1:
                bbox = [width - 0.5, 1, 1.2, 2]  # exceeds by 0.7 px: clipped silently
            elif kind == 2:
                bbox = [width + 5, 1, 3, 3]  # entirely outside: dropped
            ann = {"id": len(annotations) + 1, "image_id": images[-1]["id"], "bbox": bbox}
            ann["category_id"] = int(rng.choice([2, 7, 40]))
            crowd = rng.choice([0, 1, 2, True, None])
            if crowd is not None:
                ann["iscrowd"] = crowd if isinstance(crowd, bool) else int(crowd)
            ann["segmentation"] = [[x, y, x + 1, y, x + 1, y + 1]]
            annotations.append(ann)
    order = rng.permutation(len(annotations))
    dataset = {
        "images": images,
        "annotations": [annotations[i] for i in order],
        "categories": [
            {"id": 40, "name": "forty"},
            {"id": 2, "name": "two"},
            {"id": 7, "name": "ß"},
        ],
    }
    ann_file = tmp_path / "generated.json"
    ann_file.write_text(json.dumps(dataset))
    return ann_file


def assert_same_dataset(new: CocoDetection, old: FrozenCocoDetection, items: range) -> None:
    """Everything the rest of the code reads, and ``__getitem__`` for ``items``."""
    assert len(new) == len(old)
    assert new.classes == old.classes
    assert new.label_to_cat_id == old.label_to_cat_id
    assert new.cat_id_to_label == old.cat_id_to_label
    assert new.stats == old.stats and list(new.stats) == list(old.stats)
    assert new.aspect_ratios() == old.aspect_ratios()
    for index, record in enumerate(old.records):
        assert new.image_id(index) == record["image_id"]
        assert new.file_name(index) == record["file_name"]
        assert new.image_size(index) == record["size"]
        annotations = new.annotations(index)
        for key in ("boxes", "labels", "iscrowd"):
            assert annotations[key].dtype == record[key].dtype
            assert annotations[key].shape == record[key].shape
            assert annotations[key].tobytes() == record[key].tobytes(), (index, key)
    for index in items:
        (new_image, new_target), (old_image, old_target) = new[index], old[index]
        assert torch.equal(new_image, old_image)
        assert new_target.keys() == old_target.keys()
        for key, value in old_target.items():
            if isinstance(value, torch.Tensor):
                assert new_target[key].dtype == value.dtype and torch.equal(new_target[key], value)
            else:
                assert new_target[key] == value and type(new_target[key]) is type(value)


@pytest.mark.parametrize("cached", [False, True])
def test_generated_crowds_empty_images_bad_boxes(tmp_path, image_writer, cached):
    ann_file = generated_coco(tmp_path, image_writer)
    img_dir = tmp_path / "images"
    old = FrozenCocoDetection(ann_file, img_dir)
    if cached:
        CocoDetection(ann_file, img_dir)  # the second construction reads the cache
    new = CocoDetection(ann_file, img_dir)
    assert old.stats["crowd_boxes"] > 0 and old.stats["images_without_boxes"] > 0
    assert old.stats["boxes_negative_size"] > 0 and old.stats["boxes_clipped"] > 0
    assert old.stats["boxes_dropped"] > old.stats["boxes_negative_size"]
    assert_same_dataset(new, old, range(len(old)))


def test_generated_with_transforms(tmp_path, image_writer):
    ann_file = generated_coco(tmp_path, image_writer, num_images=12)
    nodes = [
        {"_target_": "data.transforms.ResizeShortestEdge", "short_sizes": [24, 48], "max_size": 64},
        {"_target_": "albumentations.HorizontalFlip", "p": 0.5},
    ]
    old = FrozenCocoDetection(ann_file, tmp_path / "images", build_transforms(nodes, seed=3))
    new = CocoDetection(ann_file, tmp_path / "images", build_transforms(nodes, seed=3))
    assert_same_dataset(new, old, range(len(old)))


@pytest.mark.parametrize("cached", [False, True])
def test_bad_box_messages_unchanged(tmp_path, image_writer, caplog, cached):
    ann_file = generated_coco(tmp_path, image_writer)
    img_dir = tmp_path / "images"
    if cached:
        CocoDetection(ann_file, img_dir)
    with pytest.raises(DatasetError) as old_error:
        FrozenCocoDetection(ann_file, img_dir, bad_box_policy="error")
    with pytest.raises(DatasetError) as new_error:
        CocoDetection(ann_file, img_dir, bad_box_policy="error")
    assert str(new_error.value) == str(old_error.value)
    assert "more (tools/validate_dataset.py lists them all)" in str(new_error.value)
    with caplog.at_level(logging.WARNING):
        FrozenCocoDetection(ann_file, img_dir, bad_box_policy="warn")
        CocoDetection(ann_file, img_dir, bad_box_policy="warn")
    old_message, new_message = (r.getMessage() for r in caplog.records)
    assert new_message == old_message and new_message.startswith(f"bad boxes in {ann_file}:\n")


def test_synthetic(tmp_path):
    paths = make_synthetic_coco(tmp_path, seed=0, num_train=16, num_val=4)
    old = FrozenCocoDetection(paths.train_ann, paths.train_img_dir, bad_box_policy="error")
    new = CocoDetection(paths.train_ann, paths.train_img_dir, bad_box_policy="error")
    assert old.stats["images_without_boxes"] > 0
    assert_same_dataset(new, old, range(len(old)))


def test_raccoon(tmp_path, raccoon):
    ann_file = write_coco(
        voc_to_coco(raccoon / "annotations", raccoon / "images"), tmp_path / "r.json"
    )
    old = FrozenCocoDetection(ann_file, raccoon / "images")
    new = CocoDetection(ann_file, raccoon / "images")
    assert old.stats["boxes"] == 217
    assert_same_dataset(new, old, range(0, len(old), 25))  # 8 of the 200 photos decoded


def test_structural_error_unchanged(tmp_path, image_writer):
    ann_file = generated_coco(tmp_path, image_writer, num_images=4)
    dataset = json.loads(ann_file.read_text())
    dataset["annotations"][0]["image_id"] = 5
    dataset["images"].append(dict(dataset["images"][0], file_name="../escape.png"))
    ann_file.write_text(json.dumps(dataset))
    with pytest.raises(DatasetError) as old_error:
        FrozenCocoDetection(ann_file, tmp_path / "images")
    with pytest.raises(DatasetError) as new_error:
        CocoDetection(ann_file, tmp_path / "images")
    assert str(new_error.value) == str(old_error.value)
    assert "image_id 5 is not an image" in str(new_error.value)
