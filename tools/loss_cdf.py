"""Figure 4: ``python tools/loss_cdf.py checkpoint=PATH [data overrides] [out=FILE.png]``.

Runs a trained model over the validation images, labels its anchors with the matcher of the
checkpoint's training config (the paper's default without one), and plots the normalised
cumulative focal loss of positive and of negative anchors for γ ∈ {0, .5, 1, 2}
(``detector/paper/loss_cdf.py``). Prints each curve's count and the loss share of its hardest 20%.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from data.build import build_dataset
from data.loader import build_test_loader
from data.synthetic import ensure_synthetic
from data.validate import DatasetError
from detector import build_from_checkpoint
from detector.checkpoint import CheckpointError, load_checkpoint
from detector.engine.cli import CONFIG_DIR, preflight_argv
from detector.engine.config import ConfigError, existing_path, exit_on_config_error, validate_data
from detector.engine.distributed import resolve_device
from detector.paper.loss_cdf import collect, labeler_from_config, plot, summary


def validate(cfg: DictConfig) -> None:
    """An existing checkpoint, a usable ``data.val``, non-negative γs and a PNG path."""
    existing_path(cfg, "checkpoint")
    validate_data(cfg, splits=("val",))
    if not cfg.gammas or any(not isinstance(g, (int, float)) or g < 0 for g in cfg.gammas):
        raise ConfigError(f"gammas must be a non-empty list of numbers >= 0, got {cfg.gammas}")
    if not str(cfg.out).endswith(".png"):
        raise ConfigError(f"out must be a .png file, got {cfg.out}")
    if cfg.max_images is not None and cfg.max_images < 1:
        raise ConfigError(f"max_images must be >= 1 or null, got {cfg.max_images}")


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
    labeler = labeler_from_config(checkpoint.get("config", {}))
    samples = collect(model, labeler, loader, device, list(cfg.gammas), cfg.max_images)
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


def check_command_line() -> None:
    """Before Hydra starts: compose and check the config of ``sys.argv`` (exit 2 with one line
    if it is bad)."""
    preflight_argv("loss_cdf", validate, ("checkpoint", "out"))


if __name__ == "__main__":
    check_command_line()
    main()
