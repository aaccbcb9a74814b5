"""The imbalance meter: ``python tools/imbalance.py [train config overrides] [images=N]``.

Composes ``configs/imbalance.yaml`` (the training config and the meter's two keys) with the
overrides (the same ones a training run takes), labels
the anchors of the first N training images (default 40, after the training transforms) with the
run's own matcher, anchors and padding, and prints per image and in total the positive anchors,
the negative binary terms and the ratio of the negatives' CE loss to the positives' at π = 0.01,
without and with α (``detector/paper/imbalance.py``); the paper's COCO setting beside it,
measured on ``paper_images=M`` generated images (default 100).
"""

from __future__ import annotations

import sys

import hydra.utils
from omegaconf import DictConfig, OmegaConf

from data.build import build_dataset, prepare_data
from data.validate import DatasetError
from detector.anchors import AnchorGenerator
from detector.engine.cli import run_tool
from detector.engine.config import (
    ConfigError,
    register_resolvers,
    validate_data,
    validate_loss,
    validate_model,
)
from detector.labeling import AnchorLabeler
from detector.matcher import Matcher
from detector.paper.imbalance import format_report, measure, paper_counts


def run_matcher(cfg: DictConfig) -> Matcher:
    """The training run's matcher: ``criterion.labeler.matcher``, else ``criterion.matcher``."""
    labeler = cfg.criterion.get("labeler")
    node = labeler.matcher if labeler is not None else cfg.criterion.matcher
    return hydra.utils.instantiate(node)


def report(cfg: DictConfig) -> str:
    """The meter's report for the composed ``configs/imbalance.yaml``."""
    for key in ("images", "paper_images"):
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < 1:
            raise ConfigError(f"{key} must be a positive integer, got {cfg[key]!r}")
    validate_loss(cfg)
    validate_model(cfg)
    validate_data(cfg, splits=("train",))
    prepare_data(cfg)
    dataset = build_dataset(cfg, "train", seed=cfg.train.seed)
    model = OmegaConf.to_container(cfg.model, resolve=True)
    generator = hydra.utils.instantiate(model["anchor_generator"])
    divisibility = int(model.get("size_divisibility", 1))

    def samples():
        for index in range(min(cfg.images, len(dataset))):
            image, target = dataset[index]
            yield tuple(image.shape[-2:]), target

    labeler = AnchorLabeler(run_matcher(cfg))
    counts = measure(samples(), labeler, generator, divisibility, dataset.num_classes)
    # The paper's setting: its anchors (R50: 32–512 px, 3 scales × 3 ratios) and matcher.
    paper = paper_counts(AnchorLabeler(Matcher()), AnchorGenerator(), images=cfg.paper_images)
    alpha = cfg.loss.get("alpha")
    title = f"{cfg.data.train.ann_file}: {dataset.num_classes} classes, first {len(counts)} images"
    return title + "\n" + format_report(counts, paper, alpha)


def run(cfg: DictConfig) -> int:
    try:
        print(report(cfg))
    except DatasetError as e:
        print(f"focaldet: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    """Exit status of the tool for the command-line arguments ``argv`` (2: a config error)."""
    register_resolvers()
    return run_tool("imbalance", run, argv, __doc__, filled_later=("model.head.num_classes",))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
