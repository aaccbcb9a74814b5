"""CocoDetection: id mapping, box conversion, cleaning, policies, output format."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from data.coco import CocoDetection
from data.transforms import build_transforms
from data.validate import DatasetError


def test_category_mapping_is_contiguous_in_id_order(tiny_coco):
    ann_file, img_dir, _ = tiny_coco
    dataset = CocoDetection(ann_file, img_dir)
    assert dataset.classes == [{"id": 3, "name": "three"}, {"id": 9, "name": "nine"}]
    assert dataset.cat_id_to_label == {3: 0, 9: 1}
    assert dataset.label_to_cat_id == [3, 9]
    assert dataset.num_classes == 2


def test_targets_exact(tiny_coco):
    ann_file, img_dir, _ = tiny_coco
    dataset = CocoDetection(ann_file, img_dir)
    assert len(dataset) == 3  # the image without annotations is kept

    image, target = dataset[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 40, 60)
    assert image[:, 0, 0].tolist() == [155, 50, 100]  # cv2 wrote (B, G, R) = (100, 50, 155)
    torch.testing.assert_close(
        target["boxes"],
        torch.tensor([[5, 6, 15, 26], [50, 30, 60, 40], [0, 0, 60, 40]], dtype=torch.float32),
    )
    assert target["labels"].tolist() == [1, 0, 0] and target["labels"].dtype == torch.int64
    assert target["iscrowd"].tolist() == [False, False, True]
    assert target["image_id"] == 10
    assert target["orig_size"] == (40, 60) and target["size"] == (40, 60)

    _, target = dataset[1]  # box 4 is 0.5 px wide after clipping: dropped
    torch.testing.assert_close(target["boxes"], torch.tensor([[1, 2, 4.5, 6.25]]))
    assert target["labels"].tolist() == [0] and target["iscrowd"].tolist() == [False]

    _, target = dataset[2]
    assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == torch.float32
    assert target["labels"].shape == (0,) and target["iscrowd"].dtype == torch.bool

    assert dataset.stats == {
        "images": 3,
        "images_without_boxes": 1,
        "boxes": 4,
        "crowd_boxes": 1,
        "boxes_clipped": 1,
        "boxes_dropped": 1,
        "boxes_negative_size": 0,
    }
    assert dataset.aspect_ratios() == pytest.approx([40 / 60, 50 / 30, 40 / 60])


def test_boxes_match_pycocotools(tiny_coco):
    """Unclipped, valid boxes equal pycocotools' xywh converted independently."""
    ann_file, img_dir, _ = tiny_coco
    dataset = CocoDetection(ann_file, img_dir)
    ann = dataset.coco_gt.loadAnns(dataset.coco_gt.getAnnIds(imgIds=[10]))[0]
    x, y, w, h = ann["bbox"]
    assert dataset[0][1]["boxes"][0].tolist() == [x, y, x + w, y + h]


def test_bad_box_policies(tiny_coco, caplog):
    ann_file, img_dir, _ = tiny_coco
    with caplog.at_level(logging.WARNING, logger="data.coco"):
        CocoDetection(ann_file, img_dir, bad_box_policy="warn")
    assert (
        "annotation 2 of image 10 (a.png): bbox [50, 30, 20, 20] exceeds the 60x40" in caplog.text
    )
    assert "annotation 4 of image 20 (bb.png)" in caplog.text and "degenerate" in caplog.text
    with pytest.raises(DatasetError, match="annotation 4 of image 20"):
        CocoDetection(ann_file, img_dir, bad_box_policy="error")
    with pytest.raises(ValueError, match="bad_box_policy must be one of"):
        CocoDetection(ann_file, img_dir, bad_box_policy="ignore")


def test_negative_size_dropped_and_counted(tmp_path, coco_writer):
    dataset = {
        "images": [{"id": 1, "file_name": "a.png", "height": 20, "width": 20}],
        "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [5, 5, -3, 4]}],
        "categories": [{"id": 1, "name": "x"}],
    }
    ann_file = coco_writer(tmp_path, dataset, {"a.png": (20, 20)})
    coco = CocoDetection(ann_file, tmp_path / "images")
    assert coco.stats["boxes_negative_size"] == 1 and coco.stats["boxes_dropped"] == 1
    assert coco[0][1]["boxes"].shape == (0, 4)


def test_structural_problem_raises_at_construction(tiny_coco):
    ann_file, img_dir, dataset = tiny_coco
    dataset["annotations"][0]["category_id"] = 5
    ann_file.write_text(json.dumps(dataset))
    with pytest.raises(DatasetError, match="annotation 1: category_id 5 is not a category"):
        CocoDetection(ann_file, img_dir)


def test_decoded_size_must_match_json(tiny_coco):
    ann_file, img_dir, dataset = tiny_coco
    dataset["images"][2]["height"] = 41
    ann_file.write_text(json.dumps(dataset))
    coco = CocoDetection(ann_file, img_dir)
    with pytest.raises(
        DatasetError, match=r"image 30 .*ccc.png\) decodes to 60x40 .* JSON says 60x41"
    ):
        coco[2]


def test_transforms_applied_to_image_boxes_and_flags(tiny_coco):
    ann_file, img_dir, _ = tiny_coco
    nodes = [
        {"_target_": "data.transforms.ResizeShortestEdge", "short_sizes": [80], "max_size": 1000},
        {"_target_": "albumentations.HorizontalFlip", "p": 1.0},
    ]
    dataset = CocoDetection(ann_file, img_dir, transforms=build_transforms(nodes, seed=0))
    image, target = dataset[0]
    assert image.shape == (3, 80, 120)
    # Scale 2, then x -> 120 - x.
    expected = np.array([[90, 12, 110, 52], [0, 60, 20, 80], [0, 0, 120, 80]], np.float32)
    np.testing.assert_allclose(target["boxes"].numpy(), expected, atol=1e-3)
    assert target["labels"].tolist() == [1, 0, 0]
    assert target["iscrowd"].tolist() == [False, False, True]
    assert target["size"] == (80, 120) and target["orig_size"] == (40, 60)
    _, target = dataset[2]
    assert target["boxes"].shape == (0, 4) and target["labels"].dtype == torch.int64
