"""Run a trained checkpoint on images from Python: ``Predictor.from_checkpoint(path)(inputs)``.

Inputs are resized by the checkpoint's own evaluation transforms, batched, run under
``torch.inference_mode()`` (optionally bf16/fp16 autocast) and post-processed into
:class:`Detections` in each image's original pixels: the detections tools/evaluate.py computes.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from data.decode import ImageDecodeError, read_image
from data.transforms import build_transforms
from detector.build import build_from_checkpoint
from detector.checkpoint import CheckpointError, load_checkpoint
from detector.postprocess import RetinaNetPostProcessor

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
ImageInput = str | Path | Image.Image | np.ndarray | Tensor


class InputError(ValueError):
    """An input image is missing, unreadable, or of the wrong shape or dtype (one line naming
    its index and, for a file, its path)."""


@dataclass
class Detections:
    """Detections of one image, best first, in its original pixels (D detections).

    boxes: (D, 4) xyxy float32. scores: (D,). labels: (D,) int64 contiguous class indices.
    category_ids, class_names: the dataset's category id and name of each detection.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    category_ids: list[int]
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.scores)

    def to_coco(self, image_id: int | str | None = None) -> list[dict[str, Any]]:
        """COCO result entries: ``category_id``, ``bbox`` (xywh) and ``score`` (and
        ``image_id`` when given)."""
        boxes = self.boxes.float()
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        entries = [
            {"category_id": cat, "bbox": box, "score": score}
            for cat, box, score in zip(self.category_ids, xywh, self.scores.tolist(), strict=True)
        ]
        if image_id is not None:
            entries = [{"image_id": image_id, **entry} for entry in entries]
        return entries

    def draw(self, image: np.ndarray, width: int = 2) -> np.ndarray:
        """``image`` (H, W, 3) uint8 RGB with the boxes, names and scores drawn (a copy)."""
        from torchvision.utils import draw_bounding_boxes

        out = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        if len(self):
            scores = self.scores.tolist()
            texts = [f"{n} {s:.2f}" for n, s in zip(self.class_names, scores, strict=True)]
            out = draw_bounding_boxes(
                out, self.boxes.float(), labels=texts, colors=(255, 64, 32), width=width
            )
        return out.permute(1, 2, 0).numpy()


def evaluation_transforms(checkpoint: dict[str, Any]) -> list[dict[str, Any]]:
    """The evaluation resize a checkpoint carries (``config.data.val.transforms``; [] if none)."""
    trained = checkpoint.get("config") or {}
    return list(trained.get("data", {}).get("val", {}).get("transforms", []))


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is a ValueError."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but torch.cuda.is_available() is False")
    return device


def as_rgb_array(item: ImageInput, index: int) -> np.ndarray:
    """One input as an (H, W, 3) array: uint8, or float32 in [0, 1] from a float tensor.

    Arrays are taken as RGB: convert OpenCV's BGR first with ``image[..., ::-1]``.
    """
    if isinstance(item, (str, Path)):
        try:
            return read_image(item)
        except FileNotFoundError:
            raise InputError(f"input {index} ({item}): no such file") from None
        except ImageDecodeError as e:
            raise InputError(f"input {index} ({item}): {e}") from None
    if isinstance(item, Image.Image):
        return np.asarray(item.convert("RGB"))
    if isinstance(item, Tensor):
        if item.dim() != 3 or item.shape[0] != 3:
            raise InputError(f"input {index}: expected a (3, H, W) tensor, got {tuple(item.shape)}")
        if item.dtype != torch.uint8 and not item.is_floating_point():
            raise InputError(f"input {index}: expected a uint8 or float tensor, got {item.dtype}")
        array = item.detach().cpu().permute(1, 2, 0)
        return array.numpy() if item.dtype == torch.uint8 else array.float().numpy()
    if isinstance(item, np.ndarray):
        if item.ndim != 3 or item.shape[2] != 3 or item.dtype != np.uint8:
            raise InputError(
                f"input {index}: expected an (H, W, 3) uint8 RGB array, got {item.dtype} "
                f"{item.shape}"
            )
        return item
    raise InputError(f"input {index}: unsupported type {type(item).__name__}")


class Predictor:
    """A model, its post-processor, classes and evaluation resize, ready to detect.

    Args:
        model: the network in eval mode. postprocessor: turns its outputs into detections.
        classes: ``{"id", "name"}`` per contiguous label. transforms: the resize nodes.
        device: where the model runs. amp: None, ``"bf16"`` or ``"fp16"`` autocast.
        batch_size: images per forward pass. Only images of the same resized size share a
            batch, so an image's detections do not depend on the others (padding to a larger
            neighbour would change the features near its borders).
    """

    def __init__(
        self,
        model: nn.Module,
        postprocessor: RetinaNetPostProcessor,
        classes: Sequence[dict[str, Any]],
        transforms: Sequence[dict[str, Any]],
        device: str | torch.device = "cpu",
        amp: str | None = None,
        batch_size: int = 8,
    ) -> None:
        if amp is not None and amp not in AMP_DTYPES:
            raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.postprocessor = postprocessor
        self.classes = list(classes)
        self.transform_nodes = list(transforms)
        self.transforms = build_transforms(self.transform_nodes, train=False)
        self.amp = amp
        self.batch_size = int(batch_size)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | torch.device = "auto",
        score_thresh: float | None = None,
        amp: str | None = None,
        batch_size: int = 8,
    ) -> Predictor:
        """Load ``path`` through the safe builder (detector/build.py: a checkpoint cannot run
        code); ``score_thresh`` replaces the checkpoint's post-processing threshold."""
        checkpoint = load_checkpoint(path)
        overrides = {} if score_thresh is None else {"score_thresh": score_thresh}
        model, postprocessor, classes = build_from_checkpoint(checkpoint, overrides)
        nodes = evaluation_transforms(checkpoint)
        try:
            build_transforms(nodes, train=False, where="checkpoint config.data.val.transforms")
        except ValueError as e:
            raise CheckpointError(str(e)) from e
        return cls(model, postprocessor, classes, nodes, device, amp, batch_size)

    def resize(self, image: np.ndarray) -> Tensor:
        """(H, W, 3) image → the model's (3, h, w) input (uint8, or float32 in [0, 1])."""
        empty = np.zeros((0, 4), np.float32)
        out = self.transforms(image=image, bboxes=empty, labels=np.zeros(0), iscrowd=np.zeros(0))
        return torch.from_numpy(np.ascontiguousarray(out["image"])).permute(2, 0, 1)

    def __call__(self, inputs: ImageInput | Sequence[ImageInput]) -> Detections | list[Detections]:
        """Detections of one input, or a list of them for a list (see :func:`as_rgb_array`)."""
        single = not isinstance(inputs, (list, tuple))
        items = [inputs] if single else list(inputs)
        results = self.predict_arrays([as_rgb_array(item, i) for i, item in enumerate(items)])
        return results[0] if single else results

    def predict_arrays(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Detections of (H, W, 3) RGB arrays, in their order."""
        resized = [self.resize(image) for image in images]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, tensor in enumerate(resized):
            groups.setdefault((*tensor.shape, tensor.dtype.itemsize), []).append(i)
        results: list[Detections | None] = [None] * len(images)
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                batch = torch.stack([resized[i] for i in chunk]).to(self.device)
                orig = torch.tensor([images[i].shape[:2] for i in chunk], device=self.device)
                for i, det in zip(chunk, self._detect(batch, orig), strict=True):
                    results[i] = det
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def _detect(self, batch: Tensor, orig_sizes: Tensor) -> list[Detections]:
        autocast = (
            torch.autocast(self.device.type, dtype=AMP_DTYPES[self.amp])
            if self.amp
            else nullcontext()
        )
        with autocast:
            outputs = self.model(batch)
        return [self._wrap(d) for d in self.postprocessor(outputs, orig_sizes)]

    def _wrap(self, det: dict[str, Tensor]) -> Detections:
        labels = det["labels"].cpu()
        return Detections(
            boxes=det["boxes"].cpu(),
            scores=det["scores"].cpu(),
            labels=labels,
            category_ids=[self.classes[k]["id"] for k in labels.tolist()],
            class_names=[self.classes[k]["name"] for k in labels.tolist()],
        )

    def draw(self, image: ImageInput, detections: Detections) -> np.ndarray:
        """``image`` as (H, W, 3) uint8 RGB with ``detections`` drawn."""
        array = as_rgb_array(image, 0)
        if array.dtype != np.uint8:
            array = (array * 255).round().clip(0, 255).astype(np.uint8)
        return detections.draw(array)
