"""Train a RetinaNet: ``python tools/train.py [group=option ...] [key=value ...]``.

With no arguments it generates the synthetic dataset (if missing), trains the small CPU model
and evaluates it. See ``configs/train.yaml`` for the groups; ``--cfg job`` prints the config.
Multi-process: ``torchrun --nproc_per_node=N tools/train.py ...`` (DDP).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from data.decode import ImageDecodeError
from data.validate import DatasetError
from detector.checkpoint import CheckpointError
from detector.engine.cli import CONFIG_DIR, preflight_argv
from detector.engine.config import exit_on_config_error, register_resolvers, validate_config
from detector.engine.events import write_metrics
from detector.engine.loop import NonFiniteLossError
from detector.engine.run import run_training

logger = logging.getLogger("focaldet.train")


def error_line(error: Exception) -> str:
    """The message of ``error``; for one re-raised from a DataLoader worker (whose message is
    the worker's traceback), the worker's own message, which names the image."""
    text = str(error)
    if "\nOriginal Traceback" in text:
        # The traceback's last line is "module.ErrorType: message".
        text = text.rstrip().splitlines()[-1].partition(": ")[2]
    if isinstance(error, CheckpointError):
        text = " ".join(text.split())  # torch's unpickling errors span lines
    return text


@hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """One Hydra job: train and return the final AP (the value a sweep compares)."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        result = exit_on_config_error(run_training, cfg, run_dir)
    except NonFiniteLossError as e:
        # A diverged run is a result, not a crash (the paper's CE without the prior init
        # diverges): record it for tools/report.py, and let the other jobs of a sweep go on.
        write_metrics(run_dir / "metrics.json", {"diverged": True, "error": str(e)})
        print(f"focaldet: {e}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            return None
        sys.exit(1)
    except (DatasetError, FileNotFoundError, ImageDecodeError, CheckpointError) as e:
        print(f"focaldet: {error_line(e)}", file=sys.stderr)
        sys.exit(1)
    return None if result.metrics is None else result.metrics.get("AP")


def check_command_line() -> None:
    """Before Hydra starts: register the config's resolvers and, on rank 0, compose and check
    every job of ``sys.argv`` (exit 2 with one line if one is bad)."""
    register_resolvers()
    if int(os.environ.get("RANK", "0")) > 0:
        # torchrun: ranks > 0 neither log to files nor save Hydra's copy of the config; they
        # use rank 0's run directory (broadcast in run_training).
        sys.argv += ["hydra.output_subdir=null", "hydra/job_logging=disabled"]
    else:
        preflight_argv("train", validate_config)


if __name__ == "__main__":
    check_command_line()
    main()
