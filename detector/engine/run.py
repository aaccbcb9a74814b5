"""One training run from a composed config: :func:`build_run` builds its objects, :class:`Driver`
trains, evaluates and saves.

``tools/train.py`` is a thin Hydra entry point around :func:`run_training` (build, then drive);
tests call it directly (also from spawned DDP processes). The run directory receives
``config.yaml`` (resolved, with ``num_classes`` filled in), ``checkpoints/last.pt`` and
``checkpoints/best.pt`` (highest AP), TensorBoard events and ``metrics.json``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra.utils
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from data.build import build_train_val, prepare_data
from data.coco import CocoDetection
from data.loader import build_test_loader, build_train_loader, seed_everything
from detector.checkpoint import load_checkpoint, remove_stale_temporaries, save_checkpoint
from detector.engine.compile import compile_network
from detector.engine.config import (
    OptimConfig,
    TrainConfig,
    constructor_errors,
    loop_settings,
    validate_config,
)
from detector.engine.distributed import (
    DistributedContext,
    barrier,
    broadcast_object,
    init_distributed,
)
from detector.engine.eval_report_files import (
    EvalSettings,
    ResultsLog,
    eval_settings,
    record_evaluation,
)
from detector.engine.evaluator import evaluate, format_summary
from detector.engine.events import EventWriter, write_metrics
from detector.engine.loop import Trainer
from detector.engine.optim import build_lr_scheduler, build_sgd, scaled_lr
from detector.engine.precision import MixedPrecision
from detector.engine.state import restore_training_state, training_checkpoint

logger = logging.getLogger(__name__)

LAST = "checkpoints/last.pt"
BEST = "checkpoints/best.pt"


def model_config(cfg: DictConfig, num_classes: int) -> dict[str, Any]:
    """The resolved ``_target_`` tree of the model with ``num_classes`` filled in."""
    OmegaConf.update(cfg, "model.head.num_classes", num_classes, merge=False)
    return OmegaConf.to_container(cfg.model, resolve=True, throw_on_missing=True)


def build_model(node: dict[str, Any], ctx: DistributedContext, train: TrainConfig) -> nn.Module:
    """Instantiate the model on the device; SyncBatchNorm under multi-GPU DDP.

    The memory format is the model's own decision (``RetinaNet(channels_last=...)``).
    """
    model = hydra.utils.instantiate(node, _convert_="all").to(ctx.device)
    if ctx.distributed and ctx.device.type == "cuda" and train.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def build_optimization(
    model: nn.Module, train: TrainConfig, optim: OptimConfig
) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.LambdaLR]:
    """SGD at the lr scaled to ``train.batch_size``, and its per-iteration schedule."""
    lr = scaled_lr(optim.lr, optim.base_batch_size, train.batch_size)
    optimizer = build_sgd(model, lr, optim.momentum, optim.weight_decay)
    scheduler = build_lr_scheduler(
        optimizer, train.max_iter, optim.steps, optim.gamma, optim.warmup_iters, optim.warmup_factor
    )
    return optimizer, scheduler


@dataclass
class Run:
    """The objects of one training run, as :func:`build_run` made them."""

    cfg: DictConfig
    ctx: DistributedContext
    train: TrainConfig
    run_dir: Path
    model: nn.Module
    """The network itself; ``net`` is what the loop calls (``model`` in DDP, or ``model``)."""
    net: nn.Module
    criterion: nn.Module
    postprocessor: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    precision: MixedPrecision
    train_set: CocoDetection
    val_set: CocoDetection
    train_loader: DataLoader
    """Positioned at ``start_iter`` (a resumed run skips the batches already seen)."""
    val_loader: DataLoader
    writer: EventWriter
    model_config: dict[str, Any]
    postprocess_config: dict[str, Any]
    config: dict[str, Any]
    """The resolved config, as saved in ``config.yaml`` and in every checkpoint."""
    evaluation: EvalSettings
    """How evaluations are scored and reported (``evaluation.*``)."""
    results: ResultsLog
    """``results.csv`` / ``results.png``, a row per log interval and evaluation (rank 0)."""
    start_iter: int = 0
    best_ap: float = -1.0
    """AP of ``best.pt`` (-1: none yet)."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """The latest evaluation's metrics (rank 0)."""

    @property
    def last_path(self) -> Path:
        return self.run_dir / LAST

    @property
    def best_path(self) -> Path:
        return self.run_dir / BEST

    @property
    def classes(self) -> list[dict[str, Any]]:
        return self.train_set.classes

    def checkpoint(self, iteration: int) -> dict[str, Any]:
        """The full training checkpoint after ``iteration`` steps, with the latest metrics."""
        return training_checkpoint(
            self.model,
            self.optimizer,
            self.scheduler,
            self.precision.scaler,
            iteration,
            model_config=self.model_config,
            postprocess_config=self.postprocess_config,
            classes=self.classes,
            config=self.config,
            metrics=self.metrics,
        )


def _resume(
    run_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
) -> tuple[int, float]:
    """Load ``last.pt`` into the objects (``train.resume``); return the iteration to start from
    and the AP of ``best.pt`` (-1 without one)."""
    last, best = run_dir / LAST, run_dir / BEST
    if not last.is_file():
        raise FileNotFoundError(f"train.resume=true but {last} does not exist")
    start_iter = restore_training_state(load_checkpoint(last), model, optimizer, scheduler, scaler)
    best_ap = (
        float(load_checkpoint(best).get("metrics", {}).get("AP", -1.0)) if best.is_file() else -1.0
    )
    logger.info("resumed from %s at iteration %d", last, start_iter)
    return start_iter, best_ap


def build_loaders(
    cfg: DictConfig,
    train: TrainConfig,
    ctx: DistributedContext,
    datasets: tuple[CocoDetection, CocoDetection],
    start_iter: int = 0,
) -> tuple[DataLoader, DataLoader]:
    """This process's endless training loader, positioned after ``start_iter`` batches, and the
    validation loader (this process's shard under DDP)."""
    train_set, val_set = datasets
    pin = ctx.device.type == "cuda"
    loader = build_train_loader(
        train_set,
        train.batch_size // ctx.world_size,
        num_workers=train.workers,
        seed=train.seed,
        aspect_ratio_grouping=cfg.data.get("aspect_ratio_grouping", True),
        pin_memory=pin,
        start_batch=start_iter,
    )
    val_loader = build_test_loader(
        val_set, cfg.data.val.get("batch_size", 1), num_workers=train.workers, pin_memory=pin
    )
    return loader, val_loader


def build_run(cfg: DictConfig, run_dir: str | Path) -> Run:
    """Validate ``cfg`` and build every object of the run (resumed from ``last.pt`` when
    ``train.resume``); rank 0 saves the resolved ``config.yaml``.

    ``run_dir`` is rank 0's (other ranks' Hydra directories may differ by a clock tick).
    """
    train, optim = validate_config(cfg)
    evaluation = eval_settings(cfg.get("evaluation"))
    ctx = init_distributed(train.device)
    run_dir = Path(broadcast_object(str(run_dir)))
    if train.batch_size % ctx.world_size:
        raise ValueError(
            f"train.batch_size={train.batch_size} is the global batch and must be divisible by "
            f"the {ctx.world_size} processes"
        )
    seed_everything(train.seed)
    prepare_data(cfg)
    datasets = build_train_val(cfg, seed=train.seed)
    node = model_config(cfg, len(datasets[0].classes))
    model = build_model(node, ctx, train)
    criterion = hydra.utils.instantiate(cfg.criterion, _convert_="all").to(ctx.device)
    postprocess_node = OmegaConf.to_container(cfg.postprocess, resolve=True)
    postprocessor = hydra.utils.instantiate(postprocess_node, _convert_="all")
    optimizer, scheduler = build_optimization(model, train, optim)
    precision = MixedPrecision(ctx.device, train.amp, train.amp_dtype)
    start_iter, best_ap = 0, -1.0
    if train.resume:
        start_iter, best_ap = _resume(run_dir, model, optimizer, scheduler, precision.scaler)
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries((run_dir / LAST).parent)
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    if train.compile:
        with constructor_errors("train"):  # "train.compile_backend must be one of ..."
            compile_network(model, train.compile_backend)
    net: nn.Module = model
    if ctx.distributed:
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    train_loader, val_loader = build_loaders(cfg, train, ctx, datasets, start_iter)
    return Run(
        cfg, ctx, train, run_dir, model, net, criterion, postprocessor, optimizer, scheduler,
        precision, *datasets, train_loader, val_loader,
        writer=EventWriter(run_dir if ctx.is_main else None), model_config=node,
        postprocess_config=postprocess_node, config=OmegaConf.to_container(cfg, resolve=True),
        evaluation=evaluation, results=ResultsLog(run_dir if ctx.is_main else None, start_iter),
        start_iter=start_iter, best_ap=best_ap,
    )  # fmt: skip


@dataclass
class TrainingResult:
    """What a run leaves in memory: rank 0's final metrics (``None`` elsewhere) and the model."""

    metrics: dict[str, Any] | None
    model: nn.Module
    history: list[dict[str, float]]
    """Logged values at each log interval (see ``Trainer.history``)."""


class Driver:
    """Trains a built :class:`Run` to ``train.max_iter``: evaluates at each evaluation point
    (saving ``best.pt`` when the AP beats the best so far), saves ``last.pt`` at each checkpoint
    point, and writes ``metrics.json`` at the end (rank 0)."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.trainer = Trainer(
            run.net, run.criterion, run.optimizer, run.scheduler, run.train_loader,
            run.precision, run.ctx.device, loop_settings(run.train),
            on_evaluate=self.evaluate, on_checkpoint=self.save_last, on_log=run.results.log,
            writer=run.writer, is_main=run.ctx.is_main,
        )  # fmt: skip

    def evaluate(self, iteration: int) -> None:
        """COCO evaluation on ``val``: log it, keep it as the run's metrics, save ``best.pt``.

        The final evaluation comes after ``last.pt`` is saved, so that no failure of the
        evaluation can lose the trained model (``last.pt`` is saved again after it, with the
        final metrics).
        """
        run = self.run
        if iteration == run.train.max_iter:
            self.save_last(iteration)
        metrics, predictions = evaluate(
            run.model, run.postprocessor, run.val_loader,
            run.val_set.coco_gt if run.ctx.is_main else None,  # only rank 0 scores
            run.val_set.label_to_cat_id, run.ctx.device, run.precision,
            keep_samples=run.train.vis_images if run.ctx.is_main else 0,
            backend=run.evaluation.backend,
        )  # fmt: skip
        if metrics is None:
            return
        run.metrics = {"iteration": iteration, **metrics}
        values = {k: v for k, v in run.metrics.items() if k != "iteration"}
        run.writer.scalars(values, iteration, "val/")
        per_class = {k: v for k, v in metrics["per_class_AP"].items() if v is not None}
        run.writer.scalars(per_class, iteration, "val_per_class_AP/")
        names = [c["name"] for c in run.classes]
        thresh = run.train.vis_score_thresh
        run.writer.detection_images(predictions.samples, names, iteration, thresh)
        logger.info("iteration %d: AP %.2f, AP50 %.2f", iteration, metrics["AP"], metrics["AP50"])
        record_evaluation(run.run_dir, iteration, metrics, run.val_set.coco_gt, predictions,
                          run.evaluation, run.writer, run.results)  # fmt: skip
        if metrics["AP"] > run.best_ap:
            run.best_ap = metrics["AP"]
            save_checkpoint(run.best_path, run.checkpoint(iteration))

    def save_last(self, iteration: int) -> None:
        """``last.pt`` after ``iteration`` steps (rank 0)."""
        if self.run.ctx.is_main:
            save_checkpoint(self.run.last_path, self.run.checkpoint(iteration))

    def __call__(self) -> TrainingResult:
        """Train from the run's start iteration to ``train.max_iter``; return the result."""
        run = self.run
        if run.start_iter < run.train.max_iter:
            self.trainer.train(run.start_iter)
        elif run.ctx.is_main:
            logger.info("nothing to do: %s is already at train.max_iter=%d", run.last_path,
                        run.start_iter)  # fmt: skip
            run.metrics = load_checkpoint(run.last_path).get("metrics", {})
        run.writer.close()
        barrier()
        if not run.ctx.is_main:
            return TrainingResult(None, run.model, self.trainer.history)
        write_metrics(run.run_dir / "metrics.json", run.metrics)
        if run.metrics:
            logger.info("validation metrics (%s):\n%s", run.cfg.data.val.ann_file,
                        format_summary(run.metrics))  # fmt: skip
        return TrainingResult(run.metrics, run.model, self.trainer.history)


def run_training(cfg: DictConfig, run_dir: str | Path) -> TrainingResult:
    """Train, evaluate and save as ``cfg`` says (build the run, then drive it)."""
    return Driver(build_run(cfg, run_dir))()
