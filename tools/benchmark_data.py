"""Data-pipeline benchmark: decode + train transform throughput of one worker (img/s).

    python tools/benchmark_data.py [ann_dir=...] [img_dir=...] [short_size=800] [max_size=1333]
                                   [passes=3] [limit=0]

Runs, side by side in one single-threaded process over the same photos and boxes (default: the
shared raccoon VOC set), three equivalent pipelines — shorter side to ``short_size`` with the
longer side capped at ``max_size``, random horizontal flip, boxes clipped and filtered, output a
uint8 ``(3, H, W)`` tensor:

- ``focaldet``: OpenCV decode (:func:`data.decode.read_image`) + the albumentations pipeline of
  :func:`data.transforms.build_transforms`;
- ``torchvision_v2_tensor``: ``torchvision.io.decode_image`` + ``transforms.v2`` on tensors;
- ``torchvision_v2_pil``: PIL decode + ``transforms.v2`` on PIL images, then ``PILToTensor``.

The pipelines are interleaved pass by pass and the best pass of each is reported, which damps
the noise of a shared CPU.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
import torchvision
from omegaconf import OmegaConf
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from data.convert import voc_to_coco
from data.decode import read_image
from data.transforms import ResizeShortestEdge, build_transforms

RACCOON = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "raccoon"


def _samples(ann_dir: Path, img_dir: Path, limit: int) -> list[tuple[Path, np.ndarray]]:
    """(image path, xyxy boxes (M, 4) float32) for each image of the VOC set."""
    coco = voc_to_coco(ann_dir, img_dir)
    boxes: dict[int, list[list[float]]] = {image["id"]: [] for image in coco["images"]}
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        boxes[ann["image_id"]].append([x, y, x + w, y + h])
    samples = [
        (img_dir / image["file_name"], np.array(boxes[image["id"]], np.float32).reshape(-1, 4))
        for image in coco["images"]
    ]
    return samples[:limit] if limit > 0 else samples


def focaldet_pipeline(short_size: int, max_size: int) -> Callable[[Path, np.ndarray], Any]:
    """OpenCV decode + albumentations resize/flip, as the training dataset runs it."""
    transform = build_transforms(
        [ResizeShortestEdge(short_sizes=[short_size], max_size=max_size), A.HorizontalFlip(p=0.5)],
        seed=0,
    )

    def run(path: Path, boxes: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        labels = np.zeros(len(boxes), np.int64)
        out = transform(image=read_image(path), bboxes=boxes, labels=labels, iscrowd=labels > 0)
        image = torch.from_numpy(out["image"]).permute(2, 0, 1)
        return image, torch.from_numpy(np.asarray(out["bboxes"], np.float32).reshape(-1, 4))

    return run


def torchvision_pipeline(
    short_size: int, max_size: int, use_pil: bool
) -> Callable[[Path, np.ndarray], Any]:
    """torchvision decode (tensor or PIL) + the equivalent ``transforms.v2`` pipeline."""
    # v2.Resize(size=s, max_size=m): shorter edge to s unless the longer would exceed m (m > s).
    steps = [
        v2.Resize(size=short_size, max_size=max_size),
        v2.RandomHorizontalFlip(p=0.5),
        v2.ClampBoundingBoxes(),
        v2.SanitizeBoundingBoxes(min_size=1.0, labels_getter=None),
    ]
    if use_pil:
        steps.append(v2.PILToTensor())
    transform = v2.Compose(steps)

    def run(path: Path, boxes: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        if use_pil:
            with Image.open(path) as pil:
                image = pil.convert("RGB")
            canvas = image.size[::-1]
        else:
            data = torchvision.io.read_file(str(path))
            image = torchvision.io.decode_image(data, mode=torchvision.io.ImageReadMode.RGB)
            canvas = tuple(image.shape[-2:])
        bboxes = tv_tensors.BoundingBoxes(
            torch.from_numpy(boxes), format="XYXY", canvas_size=canvas
        )
        out_image, out_boxes = transform(image, bboxes)
        return out_image, out_boxes.as_subclass(torch.Tensor)

    return run


def run(
    ann_dir: str | Path = RACCOON / "annotations",
    img_dir: str | Path = RACCOON / "images",
    short_size: int = 800,
    max_size: int = 1333,
    passes: int = 3,
    limit: int = 0,
) -> dict[str, float]:
    """Best-pass images per second of each pipeline on one thread; prints a table too."""
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    samples = _samples(Path(ann_dir), Path(img_dir), limit)
    pipelines = {
        "focaldet (cv2 + albumentations)": focaldet_pipeline(short_size, max_size),
        "torchvision.io + transforms.v2": torchvision_pipeline(short_size, max_size, False),
        "PIL + transforms.v2": torchvision_pipeline(short_size, max_size, True),
    }
    shapes = {name: pipeline(*samples[0])[0].shape for name, pipeline in pipelines.items()}
    if len(set(shapes.values())) != 1:
        raise RuntimeError(f"pipelines disagree on the output shape: {shapes}")
    best = dict.fromkeys(pipelines, 0.0)
    for _ in range(passes):
        for name, pipeline in pipelines.items():
            start = time.perf_counter()
            for path, boxes in samples:
                pipeline(path, boxes)
            best[name] = max(best[name], len(samples) / (time.perf_counter() - start))
    print(
        f"decode + transform, 1 thread, {len(samples)} images, shorter side {short_size}, "
        f"max {max_size}, best of {passes} passes"
    )
    for name, rate in best.items():
        print(f"  {name:34s} {rate:7.1f} img/s")
    return best


@dataclass
class Config:
    ann_dir: str = str(RACCOON / "annotations")
    img_dir: str = str(RACCOON / "images")
    short_size: int = 800
    max_size: int = 1333
    passes: int = 3
    limit: int = 0


if __name__ == "__main__":
    cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.from_cli(sys.argv[1:]))
    run(**OmegaConf.to_container(cfg))
