"""COCO-format detection dataset (any COCO instances JSON + an image folder)."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO

from data.decode import read_image
from data.validate import (
    BAD_BOX_POLICIES,
    BadBoxPolicy,
    DatasetError,
    Problem,
    check_structure,
    format_problems,
    load_coco_json,
    sanitize_box,
)

logger = logging.getLogger(__name__)


class CocoDetection(torch.utils.data.Dataset):
    """Images and boxes of a COCO instances file.

    COCO's sparse category ids are mapped to contiguous labels ``0..K-1`` in ascending id order
    (``cat_id_to_label``, ``label_to_cat_id``, ``classes``). Images without annotations are kept:
    they are the pure negatives the focal loss is about. Crowd annotations are kept with
    ``iscrowd=True`` (ignore regions for the matcher). Boxes are clipped to the image; boxes under
    1 px after clipping or of negative size are dropped and counted in ``stats``; how loudly is
    ``bad_box_policy``: ``"skip"`` (count only), ``"warn"`` (log them) or ``"error"`` (raise).
    Structural problems (see :mod:`data.validate`) raise :class:`DatasetError` at construction.

    ``transforms`` is called as ``transforms(image=HWC uint8, bboxes=(M, 4) xyxy, labels=(M,),
    iscrowd=(M,))`` and returns the same keys (an albumentations ``Compose`` built by
    :func:`data.transforms.build_transforms`).

    ``__getitem__(i)`` returns ``(image, target)``: ``image`` uint8 ``(3, H, W)`` RGB, ``target``
    with ``boxes`` float32 ``(M, 4)`` xyxy in input pixels, ``labels`` int64 ``(M,)``,
    ``iscrowd`` bool ``(M,)``, ``image_id`` int, ``orig_size`` and ``size`` ``(h, w)`` ints.
    """

    def __init__(
        self,
        ann_file: str | Path,
        img_dir: str | Path,
        transforms: Callable[..., dict[str, Any]] | None = None,
        bad_box_policy: BadBoxPolicy = "skip",
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
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.coco.createIndex()

        categories = sorted(dataset["categories"], key=lambda category: category["id"])
        self.classes: list[dict[str, Any]] = [
            {"id": int(category["id"]), "name": str(category["name"])} for category in categories
        ]
        self.label_to_cat_id: list[int] = [category["id"] for category in self.classes]
        self.cat_id_to_label: dict[int, int] = {
            cat_id: label for label, cat_id in enumerate(self.label_to_cat_id)
        }
        self._build_records(dataset, bad_box_policy)

    @property
    def num_classes(self) -> int:
        """K, the number of foreground classes."""
        return len(self.classes)

    def _build_records(self, dataset: dict[str, Any], bad_box_policy: BadBoxPolicy) -> None:
        """Per image: file name, JSON size and the cleaned boxes, labels and crowd flags."""
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
        self.stats: dict[str, int] = stats
        if problems and bad_box_policy == "error":
            raise DatasetError(format_problems(f"bad boxes in {self.ann_file}:", problems))
        if problems and bad_box_policy == "warn":
            logger.warning(format_problems(f"bad boxes in {self.ann_file}:", problems))

    def __len__(self) -> int:
        return len(self.records)

    def aspect_ratios(self) -> list[float]:
        """Height / width of every image from the JSON (no decoding), for batch grouping."""
        return [record["size"][0] / record["size"][1] for record in self.records]

    def load(self, index: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Decoded image ``(H, W, 3)`` uint8 and its untransformed boxes, labels, crowd flags."""
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
