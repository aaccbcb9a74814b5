"""Draws ``docs/images/eval_example.png``: ``PYTHONPATH=. python docs/images/eval_example.py``.

The evaluation report of the synthetic val split (100 images, seed 0, generated under a temporary
folder) scored against its own ground truth made into detections: each box 1–3 times with 10%
jitter, 15% of them with a random class, and two false detections per image; a detection's score
falls with its jitter. The picture stacks ``pr_curve.png`` over ``confusion_matrix_normalized.png``
and ``f1_curve.png``.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools.coco import COCO

from data.synthetic import ensure_synthetic
from detector.engine.eval_report import build_report
from detector.engine.eval_report_files import describe_f1, write_report
from detector.engine.evaluator import coco_score

WIDTH = 1200


def jittered_detections(gt: COCO, rng: np.random.Generator) -> np.ndarray:
    """``(D, 7)`` detections made from ``gt`` as the module docstring says."""
    cats = sorted(gt.getCatIds())
    rows = []
    for a in gt.dataset["annotations"]:
        x, y, w, h = a["bbox"]
        for _ in range(int(rng.integers(1, 4))):
            noise = rng.normal(0, 0.1, 4)
            cat = a["category_id"] if rng.uniform() > 0.15 else int(rng.choice(cats))
            score = float(np.clip(1 - 3 * np.abs(noise).mean() - rng.uniform(0, 0.3), 0.05, 1))
            box = [x + noise[0] * w, y + noise[1] * h, w * (1 + noise[2]), h * (1 + noise[3])]
            rows.append([a["image_id"], *box, score, cat])
    for image in gt.dataset["images"]:
        for _ in range(2):
            w, h = rng.uniform(10, 80, 2)
            x, y = rng.uniform(0, image["width"] - w), rng.uniform(0, image["height"] - h)
            rows.append([image["id"], x, y, w, h, rng.uniform(0.05, 0.7), int(rng.choice(cats))])
    return np.asarray(rows)


def _fit(image: Image.Image, width: int) -> Image.Image:
    return image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)


def main(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = ensure_synthetic(Path(tmp) / "synthetic", seed=0, num_train=1, num_val=100).root
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO(str(root / "annotations" / "instances_val.json"))
        detections = jittered_detections(gt, np.random.default_rng(0))
        report = build_report(gt, detections, coco_score(gt, detections))
        write_report(report, Path(tmp) / "report")
        names = ("pr_curve.png", "confusion_matrix_normalized.png", "f1_curve.png")
        top, left, right = (Image.open(Path(tmp) / "report" / n).convert("RGB") for n in names)
    print(describe_f1(report))
    top = _fit(top, WIDTH)
    left_width = round(WIDTH * left.width / (left.width + right.width * left.height / right.height))
    left, right = _fit(left, left_width), _fit(right, WIDTH - left_width)
    canvas = Image.new("RGB", (WIDTH, top.height + max(left.height, right.height)), "white")
    canvas.paste(top, (0, 0))
    canvas.paste(left, (0, top.height))
    canvas.paste(right, (left_width, top.height))
    canvas.quantize(colors=256).save(out, optimize=True)  # 256-colour palette: ~40% of the size


if __name__ == "__main__":
    main(Path(__file__).with_suffix(".png"))
