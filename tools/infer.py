"""Detect objects in images or a video: ``python tools/infer.py checkpoint=PATH
input=IMAGE_OR_DIR_OR_VIDEO output=DIR [score_thresh=0.3] [backend=torch|onnx|torchscript]``.

Images: writes each image with its boxes, class names and scores drawn (same file name, under
``output``, which must not be the folder of the images), and ``output/predictions.json``: one
entry per box with ``file_name``, ``category_id``, ``bbox`` (COCO xywh, original pixels) and
``score``. Any size and any mode (grayscale, RGBA, palette, 16-bit) is read as RGB; an
unreadable image is skipped and counted.
Video (``.mp4``, ``.avi``, ``.mov``, ``.mkv``, ``.webm``): writes the annotated video under
``output`` (same name, fps and size) and ``<name>.jsonl``, one line per frame
(``{"frame": i, "detections": [...]}``), with a progress bar; frames are run in batches.
``score_thresh`` replaces the checkpoint's post-processing threshold (0.05 in training), so a
lower one keeps more boxes. ``backend=onnx`` (ONNX Runtime) and ``backend=torchscript``
(PyTorch) run a file written by tools/export.py (its ``.json`` sidecar beside it) on the CPU;
its threshold is the one it was exported with.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from tqdm import tqdm

from data.decode import IMAGE_SUFFIXES, ImageDecodeError, image_files, read_image
from detector.checkpoint import CheckpointError
from detector.engine.cli import CONFIG_DIR, preflight_argv
from detector.engine.compile import compile_network
from detector.engine.config import ConfigError, exit_on_config_error, validate_infer
from detector.predictor import Predictor

VIDEO_CODECS = {".mp4": "mp4v", ".avi": "MJPG", ".mov": "mp4v", ".mkv": "MJPG", ".webm": "MJPG"}
"""Video suffixes read, and the codec (FourCC) the annotated copy is written with."""


def list_images(path: Path) -> list[Path]:
    """``path`` itself, or the images directly inside the folder ``path`` (sorted)."""
    if path.is_file():
        return [path]
    images = image_files(path)
    if not images:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {path}")
    return images


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


def build_predictor(cfg: DictConfig) -> Predictor:
    """The checkpoint's predictor (``backend=torch``) or an exported ONNX or TorchScript
    file's."""
    backend, batch_size = cfg.get("backend", "torch"), cfg.get("batch_size", 8)
    if backend == "onnx":
        from detector.export import OnnxPredictor

        return OnnxPredictor(cfg.checkpoint, batch_size=batch_size)
    if backend == "torchscript":
        from detector.export import TorchScriptPredictor

        return TorchScriptPredictor(cfg.checkpoint, batch_size=batch_size)
    if backend != "torch":
        raise ConfigError(f"backend must be torch, onnx or torchscript, got {backend!r}")
    try:
        predictor = Predictor.from_checkpoint(
            cfg.checkpoint, cfg.device, cfg.score_thresh, batch_size=batch_size
        )
    except ValueError as e:  # device=cuda without a GPU
        raise ConfigError(str(e)) from e
    if cfg.get("compile", False):  # configs built in code may lack the key
        compile_network(predictor.model)
    if cfg.transforms is not None:
        nodes = list(OmegaConf.to_container(cfg.transforms, resolve=True))
        try:
            return Predictor(predictor.model, predictor.postprocessor, predictor.classes, nodes,
                             predictor.device, batch_size=batch_size)  # fmt: skip
        except ValueError as e:  # a target off the allow-list, a random transform
            raise ConfigError(str(e)) from e
    return predictor


def run_images(predictor: Predictor, root: Path, images: list[Path], output: Path) -> list[dict]:
    """Detect in ``images`` batch by batch, write the drawn copies and ``predictions.json``."""
    predictions: list[dict[str, Any]] = []
    skipped = 0
    for start in range(0, len(images), predictor.batch_size):
        names, arrays = [], []
        for path in images[start : start + predictor.batch_size]:
            try:
                arrays.append(read_image(path))  # (H, W, 3) uint8 RGB whatever the file's mode
            except ImageDecodeError as e:
                print(f"focaldet: skipped {path}: {e}", file=sys.stderr)
                skipped += 1
                continue
            names.append(str(path.relative_to(root)) if root.is_dir() else path.name)
        for name, image, det in zip(names, arrays, predictor.predict_arrays(arrays), strict=True):
            predictions += [{"file_name": name, **entry} for entry in det.to_coco()]
            Image.fromarray(det.draw(image)).save(output / name)
            print(f"{name}: {len(det)} detections")
    if skipped == len(images):
        raise ImageDecodeError(f"none of the {len(images)} images in {root} could be read")
    (output / "predictions.json").write_text(json.dumps(predictions, indent=1))
    print(
        f"wrote {len(predictions)} detections on {len(images) - skipped} images to "
        f"{output / 'predictions.json'}; skipped {skipped} unreadable image(s)"
    )
    return predictions


def read_frames(capture: cv2.VideoCapture, batch_size: int) -> Iterator[list[np.ndarray]]:
    """Batches of up to ``batch_size`` RGB frames until the video ends."""
    while True:
        batch = []
        while len(batch) < batch_size:
            ok, frame = capture.read()
            if not ok:
                break
            batch.append(np.ascontiguousarray(frame[..., ::-1]))  # OpenCV decodes BGR
        if not batch:
            return
        yield batch


def run_video(predictor: Predictor, video: Path, output: Path) -> list[dict]:
    """Detect in every frame of ``video``; write the annotated video and a JSON line per frame."""
    capture = cv2.VideoCapture(str(video))
    if not capture.isOpened():
        raise ImageDecodeError(f"cannot open video {video}")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    codec = cv2.VideoWriter_fourcc(*VIDEO_CODECS[video.suffix.lower()])
    writer = cv2.VideoWriter(str(output / video.name), codec, fps, size)
    frames: list[dict[str, Any]] = []
    try:
        with (
            (output / f"{video.stem}.jsonl").open("w") as lines,
            tqdm(total=total, unit="frame", desc=video.name) as bar,
        ):
            for batch in read_frames(capture, predictor.batch_size):
                for frame, det in zip(batch, predictor.predict_arrays(batch), strict=True):
                    entry = {"frame": len(frames), "detections": det.to_coco()}
                    lines.write(json.dumps(entry) + "\n")
                    frames.append(entry)
                    writer.write(np.ascontiguousarray(det.draw(frame)[..., ::-1]))
                bar.update(len(batch))
    finally:
        capture.release()
        writer.release()
    if not frames:
        raise ImageDecodeError(f"no frame of {video} could be read")
    print(f"wrote {len(frames)} frames to {output / video.name} and {video.stem}.jsonl")
    return frames


def run(cfg: DictConfig) -> list[dict[str, Any]]:
    """Detect in every input image (or video frame) and write the results (module docstring).

    An image that cannot be read is skipped with a line on stderr and counted; the others are
    still written. ``score_thresh`` replaces the checkpoint's post-processing threshold.
    """
    validate_infer(cfg)
    root, output = Path(cfg.input), Path(cfg.output)
    video = root.is_file() and root.suffix.lower() in VIDEO_CODECS
    images = [root] if video else list_images(root)
    check_output(images, output)
    predictor = build_predictor(cfg)
    output.mkdir(parents=True, exist_ok=True)
    if video:
        return run_video(predictor, root, output)
    return run_images(predictor, root, images, output)


@hydra.main(config_path=str(CONFIG_DIR), config_name="infer", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        exit_on_config_error(run, cfg)
    except (CheckpointError, ImageDecodeError, FileNotFoundError) as e:
        print(f"focaldet: {e}", file=sys.stderr)
        sys.exit(1)


def check_command_line() -> None:
    """Before Hydra starts: compose and check the config of ``sys.argv`` (exit 2 with one line
    if it is bad)."""
    preflight_argv("infer", validate_infer, ("checkpoint", "input", "output"))


if __name__ == "__main__":
    check_command_line()
    main()
