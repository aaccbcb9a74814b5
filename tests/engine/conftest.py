"""Fixtures for the engine tests: a tiny generated dataset and tiny composed configs."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from data.synthetic import ensure_synthetic
from detector.engine.config import register_resolvers

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"

TINY = [
    "data.generate.num_train=8",
    "data.generate.num_val=4",
    "data.train.transforms.0.short_sizes=[64]",
    "data.train.transforms.0.max_size=96",
    "data.val.transforms.0.short_sizes=[64]",
    "data.val.transforms.0.max_size=96",
    "data.val.batch_size=4",
    "model.fpn.out_channels=32",
    "model.head.num_convs=1",
    "train.batch_size=4",
    "train.workers=0",
    "train.device=cpu",
    "train.amp=false",
    "train.log_period=1",
    "train.eval_period=0",
    "train.checkpoint_period=0",
    "train.progress=false",
    "train.vis_images=2",
    "optim.warmup_iters=0",
]
"""A ResNet-18 with a 32-channel FPN and one-conv heads on 8 + 4 images of 64 px."""


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic") / "synthetic"
    ensure_synthetic(root, seed=0, num_train=8, num_val=4)
    return root


def compose_config(overrides: list[str]) -> DictConfig:
    """``configs/train.yaml`` composed with ``overrides`` (as the command line would)."""
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


@pytest.fixture
def compose_train() -> Callable[[list[str]], DictConfig]:
    """:func:`compose_config` as a fixture (test modules do not import each other)."""
    return compose_config


@pytest.fixture
def tiny_config(synthetic_root: Path) -> Callable[..., DictConfig]:
    """``tiny_config(*overrides)``: the tiny training config on the session's dataset."""

    def make(*overrides: str) -> DictConfig:
        return compose_config([f"data.root={synthetic_root}", *TINY, *overrides])

    return make


def _pycocotools_eval(
    gt: COCO, results: list[dict[str, Any]] | np.ndarray, cat_ids: list[int] | None = None
) -> COCOeval:
    """pycocotools' own bbox evaluation (``loadRes`` + ``COCOeval``), optionally of some
    categories only; ``printed`` holds what it printed."""
    with contextlib.redirect_stdout(io.StringIO()) as out:
        evaluator = COCOeval(gt, gt.loadRes(results), iouType="bbox")
        if cat_ids is not None:
            evaluator.params.catIds = cat_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    evaluator.printed = out.getvalue()
    return evaluator


@pytest.fixture
def pycocotools_eval() -> Callable[..., COCOeval]:
    """The reference evaluation the engine's scoring and reports are compared with."""
    return _pycocotools_eval
