"""Run events: TensorBoard scalars and images, and the ``metrics.json`` file.

Only the main process writes; other ranks hold a disabled :class:`EventWriter` whose calls do
nothing, so the training loop never branches on the rank to log.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter

from detector.engine.evaluator import Sample
from detector.engine.visualize import draw_detections


class EventWriter:
    """TensorBoard event files in ``log_dir`` (``None``: a disabled writer), written through
    torch's ``SummaryWriter``."""

    def __init__(self, log_dir: str | Path | None) -> None:
        self._writer = SummaryWriter(str(log_dir)) if log_dir is not None else None

    @property
    def enabled(self) -> bool:
        return self._writer is not None

    def scalars(self, values: Mapping[str, float], step: int, prefix: str = "") -> None:
        """One scalar per key, tagged ``prefix + key``; non-numbers are skipped."""
        if self._writer is None:
            return
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(prefix + key, value, step)

    def detection_images(
        self, samples: Sequence[Sample], class_names: Sequence[str], step: int, thresh: float
    ) -> None:
        """Each sample with its predictions scoring ``>= thresh`` (red) and ground truth (green)."""
        if self._writer is None:
            return
        for i, sample in enumerate(samples):
            keep = sample.detections["scores"] >= thresh
            drawn = draw_detections(
                sample.image,
                sample.detections["boxes"][keep],
                sample.detections["labels"][keep],
                sample.detections["scores"][keep],
                class_names,
                gt_boxes=sample.target["boxes"],
            )
            self._writer.add_image(f"val/image_{i}", drawn, step)

    def pr_curve(
        self, tag: str, precision: Sequence[float], recall: Sequence[float], step: int
    ) -> None:
        """A PR curve computed elsewhere (COCO's precision at each recall point), points in
        TensorBoard's order: recall falling; the counts it shows on hover are left at 0."""
        if self._writer is not None:
            zeros = [0] * len(precision)
            self._writer.add_pr_curve_raw(tag, zeros, zeros, zeros, zeros, precision, recall,
                                          step, num_thresholds=len(precision))  # fmt: skip

    def text(self, tag: str, text: str, step: int = 0) -> None:
        if self._writer is not None:
            self._writer.add_text(tag, text, step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _json_safe(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_metrics(path: str | Path, metrics: Mapping[str, Any]) -> Path:
    """Write ``metrics`` as indented JSON (non-finite numbers become ``null``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(dict(metrics)), indent=2) + "\n")
    return path
