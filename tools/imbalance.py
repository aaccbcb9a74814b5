"""The imbalance meter: ``python tools/imbalance.py [train config overrides] [images=N]``.

Composes ``configs/train.yaml`` with the overrides (the same ones a training run takes), labels
the anchors of the first N training images (default 40, after the training transforms) with the
run's own matcher, anchors and padding, and prints per image and in total the positive anchors,
the negative binary terms and the ratio of the negatives' CE loss to the positives' at π = 0.01,
without and with α (``detector/paper/imbalance.py``); the paper's COCO setting beside it,
measured on ``paper_images=M`` generated images (default 100).
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra.utils
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from data.synthetic import ensure_synthetic
from data.validate import DatasetError
from detector.anchors import AnchorGenerator
from detector.engine.config import (
    ConfigError,
    exit_on_config_error,
    register_resolvers,
    validate_data,
    validate_loss,
    validate_model,
)
from detector.engine.training import build_dataset
from detector.labeling import AnchorLabeler
from detector.matcher import Matcher
from detector.paper.imbalance import format_report, measure, paper_counts

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
OPTIONS = {"images": 40, "paper_images": 100}
"""The meter's own options (images of this data, generated images of the paper's setting)."""


def split_options(argv: list[str]) -> tuple[dict[str, int], list[str]]:
    """The meter's options (:data:`OPTIONS`) and the remaining train overrides."""
    options, rest = dict(OPTIONS), []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if key not in OPTIONS or not sep:
            rest.append(arg)
        elif not value.isdigit() or int(value) < 1:
            raise ConfigError(f"{key} must be a positive integer, got {value!r}")
        else:
            options[key] = int(value)
    return options, rest


def run_matcher(cfg: DictConfig) -> Matcher:
    """The training run's matcher: ``criterion.labeler.matcher``, else ``criterion.matcher``."""
    labeler = cfg.criterion.get("labeler")
    node = labeler.matcher if labeler is not None else cfg.criterion.matcher
    return hydra.utils.instantiate(node)


def run(argv: list[str]) -> str:
    options, overrides = split_options(argv)
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    validate_loss(cfg)
    validate_model(cfg)
    validate_data(cfg, splits=("train",))
    generate = cfg.data.get("generate")
    if generate is not None:
        ensure_synthetic(cfg.data.root, **OmegaConf.to_container(generate, resolve=True))
    dataset = build_dataset(cfg, "train", seed=cfg.train.seed)
    model = OmegaConf.to_container(cfg.model, resolve=True)
    generator = hydra.utils.instantiate(model["anchor_generator"])
    divisibility = int(model.get("size_divisibility", 1))

    def samples():
        for index in range(min(options["images"], len(dataset))):
            image, target = dataset[index]
            yield tuple(image.shape[-2:]), target

    labeler = AnchorLabeler(run_matcher(cfg))
    counts = measure(samples(), labeler, generator, divisibility, dataset.num_classes)
    # The paper's setting: its anchors (R50: 32–512 px, 3 scales × 3 ratios) and matcher.
    paper = paper_counts(
        AnchorLabeler(Matcher()), AnchorGenerator(), images=options["paper_images"]
    )
    alpha = cfg.loss.get("alpha")
    title = f"{cfg.data.train.ann_file}: {dataset.num_classes} classes, first {len(counts)} images"
    return title + "\n" + format_report(counts, paper, alpha)


def main(argv: list[str]) -> int:
    try:
        print(exit_on_config_error(run, argv))
    except DatasetError as e:
        print(f"focaldet: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
