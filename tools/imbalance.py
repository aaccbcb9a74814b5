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

from omegaconf import DictConfig

from data.validate import DatasetError
from detector.engine.cli import run_tool
from detector.engine.config import ConfigError, register_resolvers, validate_loss
from detector.paper.imbalance import format_report
from detector.paper.meter import config_counts, paper_mean_image


def report(cfg: DictConfig) -> str:
    """The meter's report for the composed ``configs/imbalance.yaml``."""
    for key in ("images", "paper_images"):
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < 1:
            raise ConfigError(f"{key} must be a positive integer, got {cfg[key]!r}")
    validate_loss(cfg)
    counts, num_classes = config_counts(cfg, cfg.images)
    alpha = cfg.loss.get("alpha")
    title = f"{cfg.data.train.ann_file}: {num_classes} classes, first {len(counts)} images"
    return title + "\n" + format_report(counts, paper_mean_image(cfg.paper_images), alpha)


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
