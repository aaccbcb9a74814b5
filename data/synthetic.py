"""The embedded default dataset: coloured shapes on cluttered backgrounds, written as COCO.

Five classes, each one shape in one saturated colour (a filled circle, a square, a triangle, a
ring and a rare cross, about 6 % of the objects) drawn on textured, low-saturation backgrounds
(gradients, low-frequency noise, lines, blobs, pixel noise). Hard negatives share the images:
class shapes in muted colours, and partial shapes in class colours (half discs, open rings,
hollow squares, T-shapes). Objects are 12–64 px (about a third under 20 px) on 192–256 px
images; about 12 % of the images hold no object. So the imbalances the focal loss targets —
few foreground anchors among many easy background ones, a rare class, hard negatives — are real,
while a small ResNet-18 RetinaNet learns the task from scratch on a CPU in minutes.

Everything is drawn from ``numpy.random.default_rng((seed, split, index))``, so the files are
identical for a given seed.

A :class:`~data.synthetic_dial.Dial` (more classes, absent classes, image size, objects per
image) moves the imbalance the focal loss is about (issue 13); its defaults draw the dataset
above, file for file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np

from data.synthetic_dial import (
    DEFAULT_DIAL,
    EMPTY_IMAGE_PROB,
    IMAGE_SHAPE_PROBS,
    Dial,
)
from data.validate import DatasetError

MAX_OVERLAP = 0.15
"""Largest fraction of a new object's box that may overlap an earlier box."""

JPEG_QUALITY = 92
MANIFEST = "manifest.json"
FORMAT_VERSION = 1
SPLITS = {"train": 0, "val": 1}


class SyntheticPaths(NamedTuple):
    """Where :func:`make_synthetic_coco` wrote the dataset."""

    root: Path
    train_ann: Path
    train_img_dir: Path
    val_ann: Path
    val_img_dir: Path


def synthetic_paths(root: str | Path) -> SyntheticPaths:
    """The layout under ``root``: ``train/``, ``val/``, ``annotations/instances_{split}.json``."""
    root = Path(root)
    ann = root / "annotations"
    return SyntheticPaths(
        root, ann / "instances_train.json", root / "train", ann / "instances_val.json", root / "val"
    )


def _muted_color(rng: np.random.Generator) -> np.ndarray:
    """A low-saturation RGB colour: a gray level with a small tint."""
    return np.clip(rng.uniform(50, 200) + rng.uniform(-22, 22, size=3), 0, 255)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Cluttered float32 ``(H, W, 3)`` background: gradient, smooth noise, lines, blobs."""
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = (np.cos(angle) * xs / width + np.sin(angle) * ys / height + 1.0) / 2.0
    start, end = _muted_color(rng), _muted_color(rng)
    image = start + ramp[..., None] * (end - start)
    coarse = rng.normal(0, 22, size=(height // 16 + 1, width // 16 + 1, 1)).astype(np.float32)
    image += cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)[..., None]
    image = np.ascontiguousarray(image, dtype=np.float32)
    for _ in range(rng.integers(2, 7)):
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (int(rng.integers(8, 50)), int(rng.integers(8, 50)))
        color = _muted_color(rng).tolist()
        cv2.ellipse(image, center, axes, float(rng.uniform(0, 180)), 0, 360, color, -1)
    image = cv2.GaussianBlur(image, (0, 0), 3.0)
    for _ in range(rng.integers(4, 14)):
        p1 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        p2 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.line(image, p1, p2, _muted_color(rng).tolist(), int(rng.integers(1, 4)), cv2.LINE_AA)
    return image


def _object_size(rng: np.random.Generator) -> int:
    """Object extent in px: a third small (12–20), most 20–44, some up to 64."""
    bucket = rng.choice(3, p=[0.33, 0.52, 0.15])
    low, high = [(12, 20), (20, 44), (44, 65)][bucket]
    return int(rng.integers(low, high))


def _draw_shape(
    mask: np.ndarray, shape: str, cx: float, cy: float, size: int, rng: np.random.Generator
) -> None:
    """Draw ``shape`` of extent ``size`` centred at ``(cx, cy)`` into ``mask`` (255 = inside).

    ``shape`` is a class name or one of the distractor shapes ``half_disc``, ``open_ring``,
    ``hollow_square``, ``tee``.
    """
    r = size / 2.0
    center = (int(round(cx)), int(round(cy)))
    if shape in ("circle", "half_disc"):
        start = float(rng.uniform(0, 360)) if shape == "half_disc" else 0.0
        sweep = 180.0 if shape == "half_disc" else 360.0
        cv2.ellipse(mask, center, (int(r), int(r)), start, 0, sweep, 255, -1)
    elif shape in ("ring", "open_ring"):
        thickness = max(2, int(round(size * 0.18)))
        radius = max(1, int(r - thickness / 2))
        start = float(rng.uniform(0, 360))
        sweep = 360.0 if shape == "ring" else float(rng.uniform(200, 260))
        cv2.ellipse(mask, center, (radius, radius), start, 0, sweep, 255, thickness)
    elif shape in ("square", "hollow_square", "triangle"):
        angle = rng.uniform(-0.3, 0.3) if shape != "triangle" else rng.uniform(0, 2 * np.pi)
        count = 3 if shape == "triangle" else 4
        offsets = angle + np.pi / 4 + np.arange(count) * 2 * np.pi / count
        radius = r if shape == "triangle" else r * 0.95
        points = np.stack([cx + radius * np.cos(offsets), cy + radius * np.sin(offsets)], axis=1)
        points = np.round(points).astype(np.int32)
        if shape == "hollow_square":
            cv2.polylines(mask, [points], True, 255, max(1, size // 10))
        else:
            cv2.fillPoly(mask, [points], 255)
    elif shape in ("cross", "tee"):
        arm = max(2, int(round(size * 0.28)))
        x0, x1 = int(cx - r), int(cx + r)
        y0, y1 = int(cy - r), int(cy + r)
        h0, h1 = int(cx - arm / 2), int(cx + arm / 2)
        v0, v1 = int(cy - arm / 2), int(cy + arm / 2)
        mask[v0:v1, x0:x1] = 255
        mask[y0 if shape == "cross" else v0 : y1, h0:h1] = 255
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _paint(image: np.ndarray, mask: np.ndarray, color: np.ndarray) -> None:
    """Composite ``color`` into ``image`` where ``mask`` is set, with softened edges."""
    alpha = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (3, 3), 0.7)[..., None]
    image *= 1.0 - alpha
    image += alpha * color


def _overlaps(box: np.ndarray, boxes: list[np.ndarray]) -> bool:
    for other in boxes:
        iw = min(box[2], other[2]) - max(box[0], other[0])
        ih = min(box[3], other[3]) - max(box[1], other[1])
        area = min(
            (box[2] - box[0]) * (box[3] - box[1]), (other[2] - other[0]) * (other[3] - other[1])
        )
        if iw > 0 and ih > 0 and iw * ih > MAX_OVERLAP * area:
            return True
    return False


def render_image(
    rng: np.random.Generator, dial: Dial = DEFAULT_DIAL
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One image: RGB uint8 ``(H, W, 3)`` and its objects as ``{"label", "bbox" xyxy, "area"}``."""
    classes, probs, shapes = dial.classes(), dial.class_probs(), dial.image_shapes()
    height, width = shapes[rng.choice(len(shapes), p=IMAGE_SHAPE_PROBS)]
    image = _background(rng, height, width)
    empty = rng.random() < EMPTY_IMAGE_PROB
    num_objects = 0 if empty else int(rng.integers(1, dial.max_objects + 1))
    num_distractors = int(rng.integers(1, 4))
    kinds = [("object", int(rng.choice(len(classes), p=probs))) for _ in range(num_objects)]
    kinds += [("distractor", int(rng.integers(len(classes)))) for _ in range(num_distractors)]
    order = rng.permutation(len(kinds))
    placed: list[np.ndarray] = []
    objects = []
    for kind, label in (kinds[i] for i in order):
        size = _object_size(rng)
        for _attempt in range(20):
            cx = rng.uniform(size / 2 + 1, width - size / 2 - 1)
            cy = rng.uniform(size / 2 + 1, height - size / 2 - 1)
            rough = np.array([cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2])
            if not _overlaps(rough, placed):
                break
        else:
            continue
        shape = classes[label]["shape"]
        color = np.array(classes[label]["color"], dtype=np.float32)
        if kind == "distractor":
            partial = {"circle": "half_disc", "ring": "open_ring", "square": "hollow_square"}
            partial |= {"cross": "tee", "triangle": "hollow_square"}
            if rng.random() < 0.5:
                shape = partial[shape]
            else:
                color = _muted_color(rng).astype(np.float32)
        mask = np.zeros((height, width), np.uint8)
        _draw_shape(mask, shape, cx, cy, size, rng)
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            continue
        box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)
        placed.append(box)
        _paint(image, mask, np.clip(color + rng.uniform(-25, 25, size=3), 0, 255))
        if kind == "object":
            objects.append({"label": label, "bbox": box, "area": int(len(xs))})
    image += rng.normal(0, 5, size=image.shape).astype(np.float32)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), objects


def _write_split(root: Path, split: str, count: int, seed: int, dial: Dial) -> dict[str, Any]:
    """Render ``count`` images of ``split`` into ``root/split`` and return its COCO dict."""
    img_dir = root / split
    img_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        rng = np.random.default_rng((seed, SPLITS[split], index))
        image, objects = render_image(rng, dial)
        file_name = f"{index:06d}.jpg"
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        if not cv2.imwrite(str(img_dir / file_name), bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
            raise OSError(f"cannot write {img_dir / file_name}")
        image_id = index + 1
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "height": image.shape[0],
                "width": image.shape[1],
            }
        )
        for obj in objects:
            x1, y1, x2, y2 = obj["bbox"].tolist()
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": obj["label"] + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": obj["area"],
                    "iscrowd": 0,
                }
            )
    info = {"description": f"focaldet synthetic shapes, {split}, seed {seed}"}
    categories = dial.categories()
    return {"info": info, "images": images, "annotations": annotations, "categories": categories}


def _params(seed: int, num_train: int, num_val: int, dial: Dial) -> dict[str, Any]:
    # Only the dial's changed settings, so that a default dataset's manifest stays as it was.
    params = {"version": FORMAT_VERSION, "seed": seed, "num_train": num_train, "num_val": num_val}
    return params | dial.changed()


def make_synthetic_coco(
    out_dir: str | Path, seed: int = 0, num_train: int = 400, num_val: int = 100, **dial: int
) -> SyntheticPaths:
    """Write the synthetic dataset under ``out_dir`` (same seed → same files) and return paths.

    Layout: ``train/*.jpg``, ``val/*.jpg``, ``annotations/instances_{train,val}.json`` and a
    ``manifest.json`` (written last) recording the parameters and every file's size. ``dial``:
    the settings of :class:`Dial` (``num_classes``, ``absent_classes``, ``image_size``,
    ``max_objects``).
    """
    settings = Dial.from_options(dial)
    paths = synthetic_paths(out_dir)
    paths.train_ann.parent.mkdir(parents=True, exist_ok=True)
    for split, count, ann_file in (
        ("train", num_train, paths.train_ann),
        ("val", num_val, paths.val_ann),
    ):
        coco = _write_split(paths.root, split, count, seed, settings)
        ann_file.write_text(json.dumps(coco))
    files = sorted(
        path for path in paths.root.rglob("*") if path.is_file() and path.name != MANIFEST
    )
    manifest = {
        "params": _params(seed, num_train, num_val, settings),
        "files": {str(path.relative_to(paths.root)): path.stat().st_size for path in files},
    }
    (paths.root / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return paths


def is_complete(
    root: str | Path, seed: int = 0, num_train: int = 400, num_val: int = 100, **dial: int
) -> bool:
    """True when ``root`` holds a finished dataset with these parameters (manifest matches)."""
    root = Path(root)
    params = _params(seed, num_train, num_val, Dial.from_options(dial))
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if manifest.get("params") != params:
        return False
    for name, size in manifest.get("files", {}).items():
        path = root / name
        if not path.is_file() or path.stat().st_size != size:
            return False
    return True


def ensure_synthetic(
    root: str | Path, seed: int = 0, num_train: int = 400, num_val: int = 100, **dial: int
) -> SyntheticPaths:
    """Return the dataset under ``root``, generating it first when missing or incomplete.

    Generation goes to a temporary sibling folder renamed into place, so an interrupted run never
    leaves a dataset that looks finished, and concurrent callers (one per DDP rank) agree. An
    incomplete earlier dataset is replaced only when ``root`` holds nothing but its entries.
    ``dial``: the settings of :class:`Dial`.
    """
    root = Path(root)
    Dial.from_options(dial)  # a bad setting fails before anything is written
    if is_complete(root, seed, num_train, num_val, **dial):
        return synthetic_paths(root)
    ours = {"train", "val", "annotations", MANIFEST}
    if root.exists():
        foreign = sorted(entry.name for entry in root.iterdir() if entry.name not in ours)
        if foreign:
            raise DatasetError(
                f"{root} is not a complete synthetic dataset and holds other files "
                f"({', '.join(foreign[:5])}); refusing to overwrite it"
            )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        make_synthetic_coco(tmp, seed, num_train, num_val, **dial)
        if root.exists() and not is_complete(root, seed, num_train, num_val, **dial):
            shutil.rmtree(root)
        try:
            os.rename(tmp, root)
        except OSError:
            if not is_complete(root, seed, num_train, num_val, **dial):  # lost a race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return synthetic_paths(root)
