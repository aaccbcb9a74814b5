"""The imbalance meter read off a training config: the run's own data, anchors and matcher.

``detector.paper.imbalance`` holds the counting and the ratio; this module builds what a training
run would build from its config (the training split after its transforms, the anchor generator,
the padding, the matcher) and counts the first N images. ``tools/imbalance.py`` prints the
result; ``tools/report.py`` puts each experiment's reading beside its AP.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import hydra.utils
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from data.build import build_dataset, prepare_data
from detector.anchors import AnchorGenerator
from detector.engine.config import validate_data, validate_model
from detector.labeling import AnchorLabeler
from detector.matcher import Matcher
from detector.paper.imbalance import Counts, ce_loss_ratio, measure, paper_counts, sum_counts


def run_matcher(cfg: DictConfig) -> Matcher:
    """The training run's matcher: ``criterion.labeler.matcher``, else ``criterion.matcher``."""
    labeler = cfg.criterion.get("labeler")
    node = labeler.matcher if labeler is not None else cfg.criterion.matcher
    return hydra.utils.instantiate(node)


def config_counts(cfg: DictConfig, images: int) -> tuple[list[Counts], int]:
    """Counts of each of the first ``images`` training images of the training config ``cfg``
    (the dataset is generated first if the config says how), and the dataset's class count."""
    validate_model(cfg)
    validate_data(cfg, splits=("train",))
    prepare_data(cfg)
    dataset = build_dataset(cfg, "train", seed=cfg.train.seed)
    model = OmegaConf.to_container(cfg.model, resolve=True)
    generator = hydra.utils.instantiate(model["anchor_generator"])
    divisibility = int(model.get("size_divisibility", 1))

    def samples():
        for index in range(min(images, len(dataset))):
            image, target = dataset[index]
            yield tuple(image.shape[-2:]), target

    labeler = AnchorLabeler(run_matcher(cfg))
    counts = measure(samples(), labeler, generator, divisibility, dataset.num_classes)
    return counts, dataset.num_classes


def mean_image(cfg: DictConfig, images: int) -> Counts:
    """The mean image's counts over the first ``images`` training images of ``cfg``."""
    counts, _ = config_counts(cfg, images)
    return sum_counts(counts).scaled(1 / len(counts))


@functools.cache
def paper_mean_image(images: int = 100) -> Counts:
    """The paper's setting: its anchors (R50: 32–512 px, 3 scales × 3 ratios) and matcher on
    ``images`` generated COCO-like images (computed once per process)."""
    return paper_counts(AnchorLabeler(Matcher()), AnchorGenerator(), images=images)


READING_IMAGES = 40
"""Training images a report's meter reading counts (as ``tools/imbalance.py``'s default)."""

_UNREADABLE = (
    ValueError,  # DatasetError and ConfigError among them
    OmegaConfBaseException,
    InstantiationException,
    KeyError,
    AttributeError,
    OSError,
    TypeError,
)
"""What rebuilding a run's data from its saved config can raise: a moved dataset, an old or
partial config. The report then says the reading is missing and why; its AP tables stand."""


class RunReadings:
    """The meter's reading of training runs, from each run's saved ``config.yaml``: measured once
    per distinct setting of what it depends on (data, anchors, padding, matcher, seed)."""

    def __init__(self, images: int = READING_IMAGES) -> None:
        self.images = images
        self._means: dict[str, Counts | None] = {}
        self.failure: str | None = None
        """Why the first unmeasurable run could not be measured (file and problem)."""

    def mean_image(self, run_dir: Path) -> Counts | None:
        """The mean image's counts of the run in ``run_dir`` (None: not measurable)."""
        if self.images < 1:
            return None
        path = run_dir / "config.yaml"
        try:
            cfg = OmegaConf.load(path)
            parts = [cfg.data, cfg.model.anchor_generator, cfg.model.get("size_divisibility")]
            parts += [cfg.criterion.get("labeler"), cfg.criterion.get("matcher"), cfg.train.seed]
            key = json.dumps(OmegaConf.to_container(OmegaConf.create({"k": parts}), resolve=True))
        except _UNREADABLE as e:
            self.failure = self.failure or f"{path}: {e}".splitlines()[0]
            return None
        if key not in self._means:
            try:
                self._means[key] = mean_image(cfg, self.images)
            except _UNREADABLE as e:
                self.failure = self.failure or f"{path}: {type(e).__name__}: {e}".splitlines()[0]
                self._means[key] = None
        return self._means[key]

    def ratio(self, run_dir: Path, alpha: float | None) -> float | None:
        """The negatives' CE loss over the positives' of the run's data at the prior, with its
        α applied (None: not measurable)."""
        counts = self.mean_image(run_dir)
        return None if counts is None else ce_loss_ratio(counts, alpha)
