"""Detect objects in images: ``python tools/infer.py checkpoint=PATH input=IMAGE_OR_DIR
output=DIR [score_thresh=0.3]``.

Writes each image with its boxes, class names and scores drawn (same file name, under
``output``, which must not be the folder of the images), and ``output/predictions.json``: one
entry per box with ``file_name``, ``category_id``, ``bbox`` (COCO xywh, original pixels) and
``score``. Any size and any mode (grayscale, RGBA, palette, 16-bit) is read as RGB; an
unreadable image is skipped and counted.
``score_thresh`` replaces the checkpoint's post-processing threshold (0.05 in training), so a
lower one keeps more boxes.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch import nn

from data.decode import ImageDecodeError, read_image
from data.transforms import build_transforms
from detector import build_from_checkpoint
from detector.checkpoint import CheckpointError, load_checkpoint
from detector.engine.cli import CONFIG_DIR, preflight_argv
from detector.engine.compile import compile_network
from detector.engine.config import ConfigError, exit_on_config_error, validate_infer
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


def resize_nodes(cfg: DictConfig, checkpoint: dict[str, Any]) -> tuple[list, str]:
    """The transforms to apply and their name in messages: ``cfg.transforms``, else the
    checkpoint's evaluation resize."""
    if cfg.transforms is not None:
        return list(OmegaConf.to_container(cfg.transforms, resolve=True)), "transforms"
    trained = checkpoint.get("config") or {}
    nodes = list(trained.get("data", {}).get("val", {}).get("transforms", []))
    return nodes, "checkpoint config.data.val.transforms"


def check_output(images: list[Path], output: Path) -> None:
    """Refuse an ``output`` folder where a drawn image would replace an input image."""
    if output.exists() and not output.is_dir():
        raise ConfigError(f"output: {output} is a file, not a folder")
    folder = output.resolve()
    # The folder of each image and, for a symbolic link, of the file it points to.
    if any(folder in (path.parent.resolve(), path.resolve().parent) for path in images):
        raise ConfigError(
            f"output: {output} holds the input images, which the drawn copies would overwrite; "
            "choose another folder"
        )


def detect(
    model: nn.Module,
    postprocessor: nn.Module,
    transforms: Callable[..., dict[str, Any]],
    image: np.ndarray,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """Detections (``boxes`` (D, 4) xyxy in ``image``'s pixels, ``scores``, ``labels``) on CPU."""
    empty = np.zeros((0, 4), np.float32)
    resized = transforms(image=image, bboxes=empty, labels=np.zeros(0), iscrowd=np.zeros(0))
    tensor = torch.from_numpy(np.ascontiguousarray(resized["image"])).permute(2, 0, 1)
    outputs = model([tensor.to(device)])
    outputs = outputs._replace(
        cls_logits=outputs.cls_logits.float(), box_deltas=outputs.box_deltas.float()
    )
    orig = torch.tensor([image.shape[:2]], device=device)
    return {k: v.cpu() for k, v in postprocessor(outputs, orig)[0].items()}


@torch.no_grad()
def run(cfg: DictConfig) -> list[dict[str, Any]]:
    """Detect in every input image, write the drawn images and ``predictions.json``.

    An image that cannot be read is skipped with a line on stderr and counted; the others are
    still written. ``score_thresh`` replaces the checkpoint's post-processing threshold.
    """
    validate_infer(cfg)
    device = resolve_device(cfg.device)
    root = Path(cfg.input)
    output = Path(cfg.output)
    images = list_images(root)
    check_output(images, output)
    checkpoint = load_checkpoint(cfg.checkpoint)
    model, postprocessor, classes = build_from_checkpoint(
        checkpoint, {"score_thresh": cfg.score_thresh}
    )
    model.to(device).eval()
    if cfg.get("compile", False):  # configs built in code may lack the key
        compile_network(model)
    nodes, where = resize_nodes(cfg, checkpoint)
    try:
        transforms = build_transforms(nodes, train=False, where=where)
    except ValueError as e:  # a target off the allow-list, a random transform, a bad argument
        raise (ConfigError if cfg.transforms is not None else CheckpointError)(str(e)) from e
    names = [c["name"] for c in classes]
    cat_ids = [c["id"] for c in classes]
    output.mkdir(parents=True, exist_ok=True)
    predictions: list[dict[str, Any]] = []
    skipped = 0
    for path in images:
        name = str(path.relative_to(root)) if root.is_dir() else path.name
        try:
            image = read_image(path)  # (H, W, 3) uint8 RGB whatever the file's mode
        except ImageDecodeError as e:
            print(f"focaldet: skipped {path}: {e}", file=sys.stderr)
            skipped += 1
            continue
        detections = detect(model, postprocessor, transforms, image, device)
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
        print(f"{name}: {len(detections['scores'])} detections")
    if skipped == len(images):
        raise ImageDecodeError(f"none of the {len(images)} images in {root} could be read")
    (output / "predictions.json").write_text(json.dumps(predictions, indent=1))
    print(
        f"wrote {len(predictions)} detections on {len(images) - skipped} images to "
        f"{output / 'predictions.json'}; skipped {skipped} unreadable image(s)"
    )
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
