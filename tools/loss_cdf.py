"""Figure 4: ``python tools/loss_cdf.py checkpoint=PATH [data overrides] [out=FILE.png]``.

Runs a trained model over the validation images, labels its anchors with the matcher of the
checkpoint's training config (the paper's default without one), and plots the normalised
cumulative focal loss of positive and of negative anchors for γ ∈ {0, .5, 1, 2}
(``detector/loss_cdf.py``). Prints each curve's count and the loss share of its hardest 20%.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import hydra.utils
from omegaconf import DictConfig, OmegaConf

from data.loader import build_test_loader
from data.synthetic import ensure_synthetic
from data.validate import DatasetError
from detector import BoxCoder, Matcher, RetinaNetCriterion, build_from_checkpoint
from detector.build import build_checkpoint_part
from detector.checkpoint import CheckpointError, load_checkpoint
from detector.engine.config import (
    ConfigError,
    exit_on_config_error,
    preflight,
    quote_path_arguments,
    validate_data,
)
from detector.engine.distributed import resolve_device
from detector.engine.training import build_dataset
from detector.loss_cdf import collect, plot, summary
from detector.safe_config import MATCHER_TARGETS
from losses import FocalLoss, SmoothL1BoxLoss

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def validate(cfg: DictConfig) -> None:
    """An existing checkpoint, a usable ``data.val``, non-negative γs and a PNG path."""
    if OmegaConf.is_missing(cfg, "checkpoint"):
        raise ConfigError("checkpoint is not set: pass checkpoint=PATH")
    if not Path(str(cfg.checkpoint)).is_file():
        raise ConfigError(f"checkpoint: {cfg.checkpoint} does not exist")
    validate_data(cfg, splits=("val",))
    if not cfg.gammas or any(not isinstance(g, (int, float)) or g < 0 for g in cfg.gammas):
        raise ConfigError(f"gammas must be a non-empty list of numbers >= 0, got {cfg.gammas}")
    if not str(cfg.out).endswith(".png"):
        raise ConfigError(f"out must be a .png file, got {cfg.out}")
    if cfg.max_images is not None and cfg.max_images < 1:
        raise ConfigError(f"max_images must be >= 1 or null, got {cfg.max_images}")


def labelling_criterion(checkpoint: dict) -> RetinaNetCriterion:
    """A criterion whose ``label_anchors`` uses the training run's matcher."""
    matcher_node = checkpoint.get("config", {}).get("criterion", {}).get("matcher")
    matcher = (
        Matcher()
        if matcher_node is None
        else build_checkpoint_part(
            {"config.criterion.matcher": matcher_node}, "config.criterion.matcher", MATCHER_TARGETS
        )
    )
    return RetinaNetCriterion(BoxCoder(), matcher, FocalLoss(), SmoothL1BoxLoss())


def run(cfg: DictConfig) -> Path:
    validate(cfg)
    device = resolve_device(cfg.device)
    checkpoint = load_checkpoint(cfg.checkpoint)
    model, _, _ = build_from_checkpoint(checkpoint)
    model.to(device)
    generate = cfg.data.get("generate")
    if generate is not None:
        ensure_synthetic(cfg.data.root, **OmegaConf.to_container(generate, resolve=True))
    dataset = build_dataset(cfg, "val")
    loader = build_test_loader(
        dataset, cfg.data.val.get("batch_size", 1), num_workers=cfg.workers,
        pin_memory=device.type == "cuda",
    )  # fmt: skip
    criterion = labelling_criterion(checkpoint).to(device)
    samples = collect(model, criterion, loader, device, list(cfg.gammas), cfg.max_images)
    path = plot(samples, cfg.out)
    print(f"{cfg.checkpoint} on {cfg.data.val.ann_file}:\n{summary(samples)}\nwrote {path}")
    return path


@hydra.main(config_path=str(CONFIG_DIR), config_name="loss_cdf", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        exit_on_config_error(run, cfg)
    except (CheckpointError, DatasetError) as e:
        print(f"focaldet: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    sys.argv[1:] = quote_path_arguments(sys.argv[1:], ("checkpoint", "out"))
    exit_on_config_error(preflight, sys.argv[1:], CONFIG_DIR, "loss_cdf", validate)
    main()
