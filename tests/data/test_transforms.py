"""Transforms: the shortest-edge resize rule, box/label/crowd consistency, eval determinism."""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import pytest
from albumentations.core.bbox_utils import BboxProcessor
from omegaconf import OmegaConf

from data.transforms import (
    DetectionBboxProcessor,
    ResizeShortestEdge,
    build_transforms,
    reseed,
    resized_shape,
)


def _run(transform, image, boxes, labels, iscrowd):
    return transform(image=image, bboxes=boxes, labels=labels, iscrowd=iscrowd)


@pytest.mark.parametrize(
    ("hw", "short", "max_size", "expected"),
    [
        ((480, 640), 800, 1333, (800, 1067)),  # 640 * 800 / 480 = 1066.67
        ((640, 480), 800, 1333, (1067, 800)),
        ((500, 2000), 800, 1333, (333, 1333)),  # capped by the longer side: 500 * 1333 / 2000
        ((417, 650), 600, 1000, (600, 935)),  # 650 * 600 / 417 = 935.25
        ((800, 800), 800, 1333, (800, 800)),
    ],
)
def test_resized_shape(hw, short, max_size, expected):
    assert resized_shape(*hw, short, max_size) == expected


def test_resize_scales_boxes_with_image():
    transform = build_transforms([ResizeShortestEdge(short_sizes=[60], max_size=1000)])
    image = np.zeros((30, 40, 3), np.uint8)
    boxes = np.array([[4, 3, 10, 9]], np.float32)
    out = _run(transform, image, boxes, np.array([2]), np.array([True]))
    assert out["image"].shape == (60, 80, 3)
    np.testing.assert_allclose(out["bboxes"], [[8, 6, 20, 18]], atol=1e-4)
    assert list(out["labels"]) == [2] and list(out["iscrowd"]) == [True]


def test_multiscale_draws_every_size_and_seed_repeats():
    nodes = [{"_target_": "data.transforms.ResizeShortestEdge", "short_sizes": [10, 20, 30]}]
    image = np.zeros((5, 5, 3), np.uint8)
    empty = np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, bool)

    def heights(seed):
        transform = build_transforms(nodes, seed=seed)
        return [_run(transform, image, *empty)["image"].shape[0] for _ in range(30)]

    assert set(heights(0)) == {10, 20, 30}
    assert heights(0) == heights(0)


def test_flip_and_clip_drop_keep_labels_aligned():
    nodes = OmegaConf.create([{"_target_": "albumentations.HorizontalFlip", "p": 1.0}])
    transform = build_transforms(nodes)
    image = np.zeros((10, 20, 3), np.uint8)
    boxes = np.array([[0, 0, 5, 5], [18, 1, 25, 9], [19.6, 0, 21, 5], [2, 2, 4, 9]], np.float32)
    labels = np.array([0, 1, 2, 3])
    iscrowd = np.array([False, True, False, True])
    out = _run(transform, image, boxes, labels, iscrowd)
    # Box 1 is clipped to x <= 20, box 2 keeps 0.4 px and is dropped with its label and flag.
    np.testing.assert_allclose(
        out["bboxes"], [[15, 0, 20, 5], [0, 1, 2, 9], [16, 2, 18, 9]], atol=1e-4
    )
    assert list(out["labels"]) == [0, 1, 3]
    assert list(out["iscrowd"]) == [False, True, True]


def test_eval_rejects_random_transforms_and_bad_nodes():
    flip = {"_target_": "albumentations.HorizontalFlip", "p": 0.5}
    with pytest.raises(ValueError, match="deterministic, but HorizontalFlip is applied with p=0.5"):
        build_transforms([flip], train=False)
    assert isinstance(build_transforms([flip], train=True), A.Compose)
    with pytest.raises(ValueError, match="must be a mapping with a _target_"):
        build_transforms([{"short_sizes": [800]}])
    with pytest.raises(ValueError, match="short_sizes must be positive sizes, got \\[\\]"):
        ResizeShortestEdge(short_sizes=[])


def test_bbox_params():
    params = build_transforms([ResizeShortestEdge()]).processors["bboxes"].params
    assert params.format == "pascal_voc" and params.label_fields == ["labels", "iscrowd"]
    assert params.clip and params.min_width == 1.0 and params.min_height == 1.0


def _stock_twin(nodes, seed):
    """The same pipeline with albumentations' own box processor, as the parity reference."""
    transform = build_transforms(nodes, seed=seed)
    params = transform.processors["bboxes"].params
    transform.processors["bboxes"] = BboxProcessor(params)
    return transform


def test_fast_box_processor_matches_albumentations():
    # Crop and rotation move boxes outside the image and shrink them under 1 px: both processors
    # must clip and drop exactly the same boxes, labels and crowd flags.
    def nodes():
        return [
            ResizeShortestEdge(short_sizes=[37, 50], max_size=90),
            A.HorizontalFlip(p=0.5),
            A.RandomCrop(30, 30, p=0.7),
            A.Affine(rotate=(-20, 20), p=0.5),
        ]

    fast = build_transforms(nodes(), seed=1)
    assert isinstance(fast.processors["bboxes"], DetectionBboxProcessor)
    stock = _stock_twin(nodes(), seed=1)
    rng = np.random.default_rng(0)
    dropped = 0
    for _ in range(60):
        height, width = rng.integers(20, 60, 2)
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        count = int(rng.integers(0, 6))
        corner = rng.uniform(-10, 70, (count, 2))
        boxes = np.concatenate([corner, corner + rng.uniform(-2, 30, (count, 2))], 1)
        labels, iscrowd = rng.integers(0, 5, count), rng.random(count) < 0.3
        ours = _run(fast, image, boxes.astype(np.float32), labels, iscrowd)
        ref = _run(stock, image, boxes.astype(np.float32), labels, iscrowd)
        np.testing.assert_array_equal(ours["image"], ref["image"])
        np.testing.assert_allclose(ours["bboxes"], np.reshape(ref["bboxes"], (-1, 4)), atol=1e-4)
        assert ours["labels"].dtype == np.int64 and ours["iscrowd"].dtype == bool
        assert list(ours["labels"]) == list(ref["labels"])
        assert list(ours["iscrowd"]) == list(ref["iscrowd"])
        dropped += count - len(ours["bboxes"])
    assert dropped > 0  # the filter was exercised


def test_fast_box_processor_inputs():
    transform = build_transforms([ResizeShortestEdge(short_sizes=[20], max_size=100)])
    image = np.zeros((10, 10, 3), np.uint8)
    # Lists (and non-numeric labels) take albumentations' own path, with the same result.
    out = transform(image=image, bboxes=[[1, 2, 3, 4]], labels=["cat"], iscrowd=[False])
    np.testing.assert_allclose(out["bboxes"], [[2, 4, 6, 8]])
    assert out["labels"] == ["cat"] and out["iscrowd"] == [False]
    out = _run(
        transform, image, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, bool)
    )
    assert out["bboxes"].shape == (0, 4) and out["labels"].dtype == np.int64
    with pytest.raises(ValueError, match="lengths of bboxes and labels do not match. Got 1 and 2"):
        _run(
            transform, image, np.ones((1, 4), np.float32), np.zeros(2, np.int64), np.zeros(1, bool)
        )


def test_resize_is_one_cv2_resize_and_keeps_grayscale_shape():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (30, 41, 3), dtype=np.uint8)
    resize = ResizeShortestEdge(short_sizes=[45], max_size=1000)
    expected = cv2.resize(image, (62, 45), interpolation=cv2.INTER_LINEAR)  # 41 * 1.5 = 61.5
    np.testing.assert_array_equal(resize.apply(image, out_shape=(45, 62)), expected)
    assert resize.apply(image, out_shape=(30, 41)) is image
    assert resize.apply(image[:, :, :1], out_shape=(45, 62)).shape == (45, 62, 1)


def test_reseed_makes_a_sample_a_function_of_seed_and_position():
    nodes = [
        {"_target_": "data.transforms.ResizeShortestEdge", "short_sizes": [10, 20]},
        {"_target_": "albumentations.HorizontalFlip", "p": 0.5},
    ]
    image = np.zeros((5, 5, 3), np.uint8)
    boxes, labels, iscrowd = np.array([[0, 0, 1, 5]], np.float32), np.array([1]), np.array([False])

    def draw(transform, seed, position):
        reseed(transform, seed, position)
        out = _run(transform, image, boxes, labels, iscrowd)
        return out["image"].shape[0], float(out["bboxes"][0, 0]) > 0  # (scale, flipped)

    transform = build_transforms(nodes, seed=0)
    draws = [draw(transform, 7, position) for position in range(64)]
    # A history of other samples (another pipeline, other positions) changes nothing.
    other = build_transforms(nodes, seed=123)
    for position in (40, 3, 63, 0, 3):
        _run(other, image, boxes, labels, iscrowd)
        assert draw(other, 7, position) == draws[position]
    # Every (scale, flip) pair occurs: the flip is not tied to the scale by a shared seed.
    assert set(draws) == {(10, False), (10, True), (20, False), (20, True)}
    assert draws != [draw(transform, 8, position) for position in range(64)]
    assert draw(transform, -1, 5) == draw(transform, 2**64 - 1, 5)
