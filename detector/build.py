"""Rebuild a model and its post-processor from a focaldet checkpoint (docs/design.md)."""

from __future__ import annotations

from typing import Any

import hydra.utils
from torch import nn

from detector.box_coder import BoxCoder
from detector.checkpoint import CheckpointError
from detector.postprocess import RetinaNetPostProcessor


def build_from_checkpoint(
    ckpt: dict[str, Any], postprocess_overrides: dict[str, Any] | None = None
) -> tuple[nn.Module, RetinaNetPostProcessor, list[dict[str, Any]]]:
    """``(model in eval mode with the checkpoint's weights, post-processor, classes)``.

    ``ckpt`` is a checkpoint dict (``load_checkpoint``): ``model_config`` and
    ``postprocess_config`` are Hydra ``_target_`` trees; without ``postprocess_config`` the
    paper's inference settings are used. ``postprocess_overrides`` (e.g. ``{"score_thresh":
    0.01}``) replace the post-processor's settings of the same name.
    """
    try:
        model = hydra.utils.instantiate(ckpt["model_config"], _convert_="all")
    except Exception as e:  # noqa: BLE001 - any failure means the config is unusable
        raise CheckpointError(f"checkpoint model_config cannot be instantiated: {e}") from e
    result = model.load_state_dict(ckpt["model"], strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            "checkpoint weights do not fit its model_config: missing "
            f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    model.eval()
    overrides = dict(postprocess_overrides or {})
    config = ckpt.get("postprocess_config")
    if config:
        postprocessor = hydra.utils.instantiate({**config, **overrides}, _convert_="all")
    else:
        postprocessor = RetinaNetPostProcessor(BoxCoder(), **overrides)
    classes = list(ckpt["classes"])
    if len(classes) != model.num_classes:
        raise CheckpointError(
            f"checkpoint lists {len(classes)} classes but its model predicts {model.num_classes}"
        )
    return model, postprocessor, classes
