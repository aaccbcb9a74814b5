"""Each ``configs/model/*.yaml`` option composes (over ``configs/model/base/resnet_fpn.yaml``) to
exactly the tree it had when every option was a full copy: the values below are written out by
hand, not read from the configs."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from detector.engine.config import register_resolvers

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"

SCALES = [1.0, 1.2599210498948732, 1.5874010519681994]
PAPER_SIZES = [32, 64, 128, 256, 512]


def tree(
    depth: int,
    in_channels: list[int],
    *,
    frozen_stages: int = 1,
    norm: str = "frozen_bn",
    weights: str | None = "imagenet",
    fpn_channels: int = 256,
    num_convs: int = 4,
    sizes: list[int] = PAPER_SIZES,
) -> dict:
    """The resolved model tree with 5 classes; the defaults are the paper's (§4)."""
    return {
        "_target_": "detector.RetinaNet",
        "backbone": {
            "_target_": "detector.ResNetBackbone",
            "depth": depth,
            "frozen_stages": frozen_stages,
            "norm": norm,
            "weights": weights,
        },
        "fpn": {
            "_target_": "detector.FPN",
            "in_channels": in_channels,
            "out_channels": fpn_channels,
            "p6_from": "c5",
        },
        "head": {
            "_target_": "detector.RetinaNetHead",
            "in_channels": fpn_channels,
            "num_anchors": 9,
            "num_classes": 5,
            "num_convs": num_convs,
            "norm": None,
            "prior_prob": 0.01,
        },
        "anchor_generator": {
            "_target_": "detector.AnchorGenerator",
            "sizes": sizes,
            "strides": [8, 16, 32, 64, 128],
            "scales": SCALES,
            "ratios": [0.5, 1.0, 2.0],
        },
        "size_divisibility": 128,
    }


EXPECTED = {
    "r18": tree(18, [128, 256, 512]),
    "r34": tree(34, [128, 256, 512]),
    "r50": tree(50, [512, 1024, 2048]),
    "r101": tree(101, [512, 1024, 2048]),
    "small": tree(
        18,
        [128, 256, 512],
        frozen_stages=0,
        norm="bn",
        weights=None,
        fpn_channels=128,
        num_convs=2,
        sizes=[16, 32, 64, 128, 256],
    ),
}


def test_every_model_option_is_checked() -> None:
    assert sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("option", sorted(EXPECTED))
def test_model_option_composes_to_its_tree(option: str) -> None:
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"model={option}"])
    cfg.model.head.num_classes = 5
    assert OmegaConf.to_container(cfg.model, resolve=True) == EXPECTED[option]


def test_depth_override_still_switches_the_fpn_channels() -> None:
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["model=r50", "model.backbone.depth=18"])
    assert list(cfg.model.fpn.in_channels) == [128, 256, 512]
