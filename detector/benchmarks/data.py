"""Data-pipeline benchmark (``what=data``): decode + train transform throughput of one worker
(img/s).

Runs, side by side in one process on one thread (``torch.set_num_threads(1)``,
``cv2.setNumThreads(1)``: the figure of one DataLoader worker), equivalent pipelines over the same
photos and boxes (default: the shared raccoon VOC set), each giving what a worker hands to the
collate: a uint8 ``(3, H, W)`` RGB tensor with EXIF orientation applied, the shorter side resized
to ``short_size`` (longer side at most ``max_size``, :func:`data.transforms.resized_shape`),
bilinear, flipped horizontally with p = 0.5, and float32 ``(M, 4)`` xyxy boxes clipped to the
image, boxes under 1 px dropped together with their ``labels`` and ``iscrowd``:

- ``focaldet``: :class:`data.coco.CocoDetection` ``__getitem__`` (OpenCV decode, then the
  albumentations pipeline that :func:`data.transforms.build_transforms` builds from the same
  ``_target_`` nodes as ``configs/data/coco.yaml``);
- ``torchvision.io + transforms.v2``: ``decode_image(..., apply_exif_orientation=True)`` and a
  ``transforms.v2`` pipeline on tensors (resize with the same size rule, ``RandomHorizontalFlip``,
  ``ClampBoundingBoxes``, ``SanitizeBoundingBoxes``);
- ``PIL + transforms.v2`` (``pil=true``): the same on PIL images, then ``PILToTensor``.

Before timing, every image goes once through each pipeline with the flip off and once with it on,
and the outputs are compared: same shapes, boxes within 1e-3 px, same labels and crowd flags,
and on upscaled images pixels within the bilinear kernels' rounding (mean |difference| ≤ 2
levels; on downscaled ones ``transforms.v2`` antialiases by default and OpenCV does not). The
timed passes then alternate the pipelines (order rotated each pass); the median pass of each is
reported.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import torch
import torchvision
from PIL import Image, ImageOps
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from data.coco import CocoDetection
from data.convert import voc_to_coco
from data.transforms import build_transforms, resized_shape
from detector.benchmarks.common import machine, markdown_table

RACCOON = Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets" / "raccoon"
"""The shared raccoon photos beside the checkout (VOC XML), the default data."""

Sample = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
"""image uint8 (3, H, W), boxes float32 (M, 4) xyxy, labels int64 (M,), iscrowd bool (M,)."""


def focaldet_pipeline(
    ann_file: Path, img_dir: Path, short_size: int, max_size: int, flip_p: float
) -> tuple[Callable[[int], Sample], int]:
    """The training dataset's ``__getitem__`` with the nodes of ``configs/data/coco.yaml``."""
    nodes = [
        {
            "_target_": "data.transforms.ResizeShortestEdge",
            "short_sizes": [short_size],
            "max_size": max_size,
        },
        {"_target_": "albumentations.HorizontalFlip", "p": flip_p},
    ]
    dataset = CocoDetection(ann_file, img_dir, transforms=build_transforms(nodes, seed=0))

    def run(index: int) -> Sample:
        image, target = dataset[index]
        return image, target["boxes"], target["labels"], target["iscrowd"]

    return run, len(dataset)


class ShortestEdgeResize(v2.Transform):
    """``transforms.v2`` resize to :func:`data.transforms.resized_shape` (bilinear, antialias).

    ``v2.Resize(size, max_size)`` floors the longer side where ours rounds it, which would leave
    the two pipelines 1 px apart; the kernel is the same ``F.resize`` ``v2.Resize`` calls.
    """

    def __init__(self, short_size: int, max_size: int) -> None:
        super().__init__()
        self.short_size = short_size
        self.max_size = max_size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        return {"size": list(resized_shape(height, width, self.short_size, self.max_size))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.resize, inpt, params["size"], antialias=True)


def torchvision_pipeline(
    ann_file: Path, img_dir: Path, short_size: int, max_size: int, flip_p: float, use_pil: bool
) -> Callable[[int], Sample]:
    """torchvision decode (tensor or PIL) + the equivalent ``transforms.v2`` pipeline."""
    coco = json.loads(ann_file.read_text())
    boxes: dict[int, list[list[float]]] = {image["id"]: [] for image in coco["images"]}
    labels: dict[int, list[int]] = {image["id"]: [] for image in coco["images"]}
    cat_ids = sorted(category["id"] for category in coco["categories"])
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        boxes[ann["image_id"]].append([x, y, x + w, y + h])
        labels[ann["image_id"]].append(cat_ids.index(ann["category_id"]))
    records = [
        (
            str(img_dir / image["file_name"]),
            torch.tensor(boxes[image["id"]], dtype=torch.float32).reshape(-1, 4),
            torch.tensor(labels[image["id"]], dtype=torch.int64),
        )
        for image in coco["images"]
    ]
    steps = [
        ShortestEdgeResize(short_size, max_size),
        v2.RandomHorizontalFlip(p=flip_p),
        v2.ClampBoundingBoxes(),
        v2.SanitizeBoundingBoxes(
            min_size=1.0, labels_getter=lambda inputs: (inputs[1]["labels"], inputs[1]["iscrowd"])
        ),
    ]
    if use_pil:
        steps.append(v2.PILToTensor())
    transform = v2.Compose(steps)

    def run(index: int) -> Sample:
        path, xyxy, label = records[index]
        if use_pil:
            with Image.open(path) as pil:
                image = ImageOps.exif_transpose(pil).convert("RGB")
            canvas = image.size[::-1]
        else:
            data = torchvision.io.read_file(path)
            image = torchvision.io.decode_image(
                data, mode=torchvision.io.ImageReadMode.RGB, apply_exif_orientation=True
            )
            canvas = tuple(image.shape[-2:])
        target = {
            "boxes": tv_tensors.BoundingBoxes(xyxy, format="XYXY", canvas_size=canvas),
            "labels": label,
            "iscrowd": torch.zeros(len(label), dtype=torch.bool),
        }
        out_image, out = transform(image, target)
        return out_image, out["boxes"].as_subclass(torch.Tensor), out["labels"], out["iscrowd"]

    return run


def check_equivalent(
    pipelines: dict[str, Callable[[int], Sample]], count: int, downscaled: set[int]
) -> float:
    """Raise unless all pipelines agree on every image; return the largest mean |pixel diff|.

    Pixels are compared on upscaled images only (``downscaled`` lists the others): there both
    bilinear kernels are the same, while on a downscale ``transforms.v2`` antialiases (its default
    and its fastest uint8 path) and OpenCV's ``INTER_LINEAR`` does not.
    """
    names = list(pipelines)
    worst = 0.0
    for index in range(count):
        reference = pipelines[names[0]](index)
        for name in names[1:]:
            other = pipelines[name](index)
            where = f"image {index}: {names[0]} vs {name}"
            if reference[0].shape != other[0].shape:
                raise RuntimeError(f"{where}: shapes {reference[0].shape} != {other[0].shape}")
            torch.testing.assert_close(other[1], reference[1], atol=1e-3, rtol=0, msg=where)
            if not (torch.equal(reference[2], other[2]) and torch.equal(reference[3], other[3])):
                raise RuntimeError(f"{where}: labels or crowd flags differ")
            if index in downscaled:
                continue
            diff = (reference[0].int() - other[0].int()).abs().float().mean().item()
            if diff > 2.0:
                raise RuntimeError(f"{where}: mean |pixel difference| {diff:.2f} > 2")
            worst = max(worst, diff)
    return worst


def _subset(ann_dir: Path, img_dir: Path, limit: int) -> dict:
    """The VOC set as a COCO dict, its first ``limit`` images only when ``limit`` > 0."""
    coco = voc_to_coco(ann_dir, img_dir)
    if limit > 0:
        coco["images"] = coco["images"][:limit]
        kept = {image["id"] for image in coco["images"]}
        coco["annotations"] = [ann for ann in coco["annotations"] if ann["image_id"] in kept]
    return coco


def _time_passes(pipelines: dict[str, Callable[[int], Sample]], count: int, passes: int):
    """Images per second of each pipeline per pass, the order rotated each pass."""
    rates: dict[str, list[float]] = {name: [] for name in pipelines}
    names = list(pipelines)
    for index in range(passes):
        for name in names[index % len(names) :] + names[: index % len(names)]:
            pipeline = pipelines[name]
            start = time.perf_counter()
            for image_index in range(count):
                pipeline(image_index)
            rates[name].append(count / (time.perf_counter() - start))
    return rates


def run(
    ann_dir: str = str(RACCOON / "annotations"),
    img_dir: str = str(RACCOON / "images"),
    short_size: int = 800,
    max_size: int = 1333,
    passes: int = 7,
    limit: int = 0,
    pil: bool = True,
) -> dict[str, Any]:
    """Median-pass images per second of each pipeline on one thread.

    Returns ``{"meta", "config", "check", "results"}``: ``check`` holds the image counts and the
    largest mean pixel difference found; ``results[pipeline]`` the ``median_img_s`` and the
    ``passes_img_s`` of every pass.
    """
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    img_root = Path(img_dir)
    coco = _subset(Path(ann_dir), img_root, limit)
    with tempfile.TemporaryDirectory() as tmp:
        ann_file = Path(tmp) / "instances.json"
        ann_file.write_text(json.dumps(coco))

        def build(flip_p: float) -> dict[str, Callable[[int], Sample]]:
            ours, count = focaldet_pipeline(ann_file, img_root, short_size, max_size, flip_p)
            pipelines = {
                "focaldet (cv2 + albumentations)": ours,
                "torchvision.io + transforms.v2": torchvision_pipeline(
                    ann_file, img_root, short_size, max_size, flip_p, use_pil=False
                ),
            }
            if pil:
                pipelines["PIL + transforms.v2"] = torchvision_pipeline(
                    ann_file, img_root, short_size, max_size, flip_p, use_pil=True
                )
            return pipelines

        count = len(coco["images"])
        downscaled = {
            index
            for index, image in enumerate(coco["images"])
            if resized_shape(image["height"], image["width"], short_size, max_size)[0]
            < image["height"]
        }
        pixel_diff = max(
            check_equivalent(build(flip_p), count, downscaled) for flip_p in (0.0, 1.0)
        )
        torch.manual_seed(0)
        rates = _time_passes(build(0.5), count, passes)
    config = {"ann_dir": str(ann_dir), "img_dir": str(img_dir), "short_size": short_size,
              "max_size": max_size, "passes": passes, "limit": limit, "pil": pil}  # fmt: skip
    check = {"images": count, "downscaled": len(downscaled), "max_mean_pixel_diff": pixel_diff}
    results = {
        name: {"median_img_s": statistics.median(values), "passes_img_s": values}
        for name, values in rates.items()
    }
    meta = machine(torch.device("cpu"))
    return {"meta": meta, "config": config, "check": check, "results": results}


def format_table(result: dict[str, Any]) -> str:
    """What was measured and checked, then a markdown table of the rates."""
    config, check = result["config"], result["check"]
    load = result["meta"]["load_average"]
    count, downscaled = check["images"], check["downscaled"]
    lines = [
        f"decode + transform, 1 thread, {count} images, shorter side {config['short_size']},"
        f" max {config['max_size']}, median of {config['passes']} alternating passes"
        f" (load average {load[0]:.2f} {load[1]:.2f})",
        f"outputs checked equal: shapes, boxes, labels; pixels on the {count - downscaled}"
        f" upscaled images (largest mean |difference| {check['max_mean_pixel_diff']:.3f};"
        f" {downscaled} downscaled, where transforms.v2 antialiases)",
    ]
    rows = [
        [
            name,
            f"{r['median_img_s']:.1f}",
            f"{min(r['passes_img_s']):.1f}–{max(r['passes_img_s']):.1f}",
        ]
        for name, r in result["results"].items()
    ]
    return (
        "\n".join(lines)
        + "\n\n"
        + markdown_table(["pipeline", "median img/s", "passes img/s"], rows)
    )
