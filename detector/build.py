"""Rebuild a model and its post-processor from a focaldet checkpoint (docs/design.md)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from detector.backbone import ResNetBackbone
from detector.box_coder import BoxCoder
from detector.checkpoint import CheckpointError
from detector.postprocess import RetinaNetPostProcessor
from detector.safe_config import (
    MODEL_TARGETS,
    POSTPROCESS_TARGETS,
    Allowlist,
    UnsafeConfigError,
    build_config,
)

PRETRAINED_ARGUMENTS: dict[type, tuple[str, ...]] = {ResNetBackbone: ("weights",)}
"""Arguments that read a file or download pretrained weights. A checkpoint's state dict replaces
those weights, so a path or ``imagenet`` in its ``model_config`` is not followed: it would cost a
download (or fail offline) and let the file make focaldet read a path of its choosing."""


def build_checkpoint_part(
    ckpt: dict[str, Any],
    key: str,
    allowed: Allowlist,
    cleared: Mapping[type, tuple[str, ...]] | None = None,
) -> Any:
    """Build the ``_target_`` tree ``ckpt[key]`` from ``allowed`` classes only.

    Any failure, a rejected target first of all, is one :class:`CheckpointError` line naming the
    place in the tree. ``cleared``: arguments passed as ``None`` (see
    :func:`detector.safe_config.build_config`).
    """
    try:
        return build_config(ckpt[key], allowed, key, cleared)
    except UnsafeConfigError as e:
        raise CheckpointError(f"checkpoint {e}") from e
    except Exception as e:  # noqa: BLE001 - any failure means the config is unusable
        raise CheckpointError(f"checkpoint {key} cannot be instantiated: {e}") from e


def build_from_checkpoint(
    ckpt: dict[str, Any], postprocess_overrides: dict[str, Any] | None = None
) -> tuple[nn.Module, RetinaNetPostProcessor, list[dict[str, Any]]]:
    """``(model in eval mode with the checkpoint's weights, post-processor, classes)``.

    ``ckpt`` is a checkpoint dict (``load_checkpoint``): ``model_config`` and
    ``postprocess_config`` are ``_target_`` trees, built only from focaldet's model and
    post-processing classes (``detector/safe_config.py``: a checkpoint cannot run code); without
    ``postprocess_config`` the paper's inference settings are used. ``postprocess_overrides``
    (e.g. ``{"score_thresh": 0.01}``) replace the post-processor's settings of the same name.
    """
    overrides = dict(postprocess_overrides or {})
    config = ckpt.get("postprocess_config")
    if config:
        # Built first (allow-listed classes, nothing heavy) so that every tree of the checkpoint
        # is checked before the model is.
        merged = {"postprocess_config": {**config, **overrides}}
        postprocessor = build_checkpoint_part(merged, "postprocess_config", POSTPROCESS_TARGETS)
    else:
        postprocessor = RetinaNetPostProcessor(BoxCoder(), **overrides)
    model = build_checkpoint_part(ckpt, "model_config", MODEL_TARGETS, cleared=PRETRAINED_ARGUMENTS)
    result = model.load_state_dict(ckpt["model"], strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            "checkpoint weights do not fit its model_config: missing "
            f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    model.eval()
    classes = list(ckpt["classes"])
    if len(classes) != model.num_classes:
        raise CheckpointError(
            f"checkpoint lists {len(classes)} classes but its model predicts {model.num_classes}"
        )
    return model, postprocessor, classes
