"""Detect objects in images: ``python tools/infer.py checkpoint=PATH input=IMAGE_OR_DIR
output=DIR [score_thresh=0.3]``.

Writes each image with its boxes, class names and scores drawn (same file name, under
``output``), and ``output/predictions.json``: one entry per box with ``file_name``,
``category_id``, ``bbox`` (COCO xywh, original pixels) and ``score``. Any size and any mode
(grayscale, RGBA, palette, 16-bit) is read as RGB.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from data.decode import ImageDecodeError, read_image
from data.transforms import build_transforms
from detector import build_from_checkpoint
from detector.checkpoint import CheckpointError, load_checkpoint
from detector.engine.cli import CONFIG_DIR, preflight_argv
from detector.engine.config import exit_on_config_error, validate_infer
from detector.engine.distributed import resolve_device
from detector.engine.evaluator import to_coco_results
from detector.engine.visualize import draw_detections

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def list_images(path: Path) -> list[Path]:
    """``path`` itself, or the images directly inside the folder ``path`` (sorted)."""
    if path.is_file():
        return [path]
    images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {path}")
    return images


def resize_nodes(cfg: DictConfig, checkpoint: dict[str, Any]) -> list:
    """The transforms to apply: ``cfg.transforms``, else the checkpoint's evaluation resize."""
    if cfg.transforms is not None:
        return list(OmegaConf.to_container(cfg.transforms, resolve=True))
    trained = checkpoint.get("config") or {}
    return list(trained.get("data", {}).get("val", {}).get("transforms", []))


@torch.no_grad()
def run(cfg: DictConfig) -> list[dict[str, Any]]:
    """Detect in every input image, write the drawn images and ``predictions.json``."""
    validate_infer(cfg)
    device = resolve_device(cfg.device)
    checkpoint = load_checkpoint(cfg.checkpoint)
    model, postprocessor, classes = build_from_checkpoint(checkpoint)
    model.to(device).eval()
    transforms = build_transforms(resize_nodes(cfg, checkpoint), train=False)
    names = [c["name"] for c in classes]
    cat_ids = [c["id"] for c in classes]
    root = Path(cfg.input)
    output = Path(cfg.output)
    output.mkdir(parents=True, exist_ok=True)
    predictions: list[dict[str, Any]] = []
    for path in list_images(root):
        image = read_image(path)  # (H, W, 3) uint8 RGB whatever the file's mode
        empty = np.zeros((0, 4), np.float32)
        resized = transforms(image=image, bboxes=empty, labels=np.zeros(0), iscrowd=np.zeros(0))
        tensor = torch.from_numpy(np.ascontiguousarray(resized["image"])).permute(2, 0, 1)
        outputs = model([tensor.to(device)])
        orig = torch.tensor([image.shape[:2]], device=device)
        detections = postprocessor(outputs, orig)[0]
        keep = detections["scores"] >= cfg.score_thresh
        detections = {k: v[keep].cpu() for k, v in detections.items()}
        name = str(path.relative_to(root)) if root.is_dir() else path.name
        for entry in to_coco_results(detections, 0, cat_ids):
            del entry["image_id"]
            predictions.append({"file_name": name, **entry})
        drawn = draw_detections(
            torch.from_numpy(image).permute(2, 0, 1),
            detections["boxes"],
            detections["labels"],
            detections["scores"],
            names,
        )
        Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(output / name)
        print(f"{name}: {int(keep.sum())} detections")
    (output / "predictions.json").write_text(json.dumps(predictions, indent=1))
    print(f"wrote {len(predictions)} detections to {output / 'predictions.json'}")
    return predictions


@hydra.main(config_path=str(CONFIG_DIR), config_name="infer", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        exit_on_config_error(run, cfg)
    except (CheckpointError, ImageDecodeError, FileNotFoundError) as e:
        print(f"focaldet: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    preflight_argv("infer", validate_infer, ("checkpoint", "input", "output"))
    main()
