"""One training run from a composed config: build the objects, train, evaluate, save.

``tools/train.py`` is a thin Hydra entry point around :func:`run_training`; tests call it directly
(also from spawned DDP processes). The run directory receives ``config.yaml`` (resolved, with
``num_classes`` filled in), ``checkpoints/last.pt`` and ``checkpoints/best.pt`` (highest AP),
TensorBoard events and ``metrics.json``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra.utils
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from data.coco import CocoDetection
from data.loader import build_test_loader, build_train_loader, seed_everything
from data.synthetic import ensure_synthetic
from data.transforms import build_transforms
from detector.checkpoint import load_checkpoint, save_checkpoint
from detector.engine.config import TrainConfig, validate_config
from detector.engine.distributed import (
    DistributedContext,
    barrier,
    broadcast_object,
    init_distributed,
)
from detector.engine.eval_report_files import ResultsLog, eval_settings, record_evaluation
from detector.engine.evaluator import evaluate, format_summary
from detector.engine.optim import build_lr_scheduler, build_sgd, scaled_lr
from detector.engine.precision import MixedPrecision
from detector.engine.summary import SummaryWriter, write_metrics
from detector.engine.trainer import LoopSettings, Trainer
from detector.engine.training_state import (
    restore_training_state,
    skip_batches,
    training_checkpoint,
)

logger = logging.getLogger(__name__)

LAST = "checkpoints/last.pt"
BEST = "checkpoints/best.pt"


def prepare_data(cfg: DictConfig, ctx: DistributedContext) -> None:
    """Generate the dataset when the config says how (``data.generate``) and it is missing.

    Rank 0 generates while the others wait, then every rank reads the same files.
    """
    generate = cfg.data.get("generate")
    if generate is not None and ctx.is_main:
        ensure_synthetic(cfg.data.root, **OmegaConf.to_container(generate, resolve=True))
    barrier()


def build_dataset(cfg: DictConfig, split: str, seed: int = 0) -> CocoDetection:
    """The ``data.<split>`` dataset with its transform pipeline (random only for ``train``)."""
    node = cfg.data[split]
    transforms = build_transforms(node.transforms, train=split == "train", seed=seed)
    return CocoDetection(
        node.ann_file,
        node.img_dir,
        transforms=transforms,
        bad_box_policy=cfg.data.get("bad_box_policy", "warn"),
    )


def model_config(cfg: DictConfig, num_classes: int) -> dict[str, Any]:
    """The resolved ``_target_`` tree of the model with ``num_classes`` filled in."""
    OmegaConf.update(cfg, "model.head.num_classes", num_classes, merge=False)
    return OmegaConf.to_container(cfg.model, resolve=True, throw_on_missing=True)


def build_model(node: dict[str, Any], ctx: DistributedContext, train: TrainConfig) -> nn.Module:
    """Instantiate the model on the device; SyncBatchNorm under multi-GPU DDP."""
    model = hydra.utils.instantiate(node, _convert_="all").to(ctx.device)
    if ctx.device.type == "cuda" and train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if ctx.distributed and ctx.device.type == "cuda" and train.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def _best_ap(run_dir: Path) -> float:
    path = run_dir / BEST
    if not path.is_file():
        return -1.0
    return float(load_checkpoint(path).get("metrics", {}).get("AP", -1.0))


@dataclass
class TrainingResult:
    """What a run leaves in memory: rank 0's final metrics (``None`` elsewhere) and the model."""

    metrics: dict[str, Any] | None
    model: nn.Module
    history: list[dict[str, float]]
    """Logged values at each log interval (see ``Trainer.history``)."""


def run_training(cfg: DictConfig, run_dir: str | Path) -> TrainingResult:
    """Train, evaluate and save as ``cfg`` says.

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
    prepare_data(cfg, ctx)
    train_set = build_dataset(cfg, "train", seed=train.seed)
    val_set = build_dataset(cfg, "val")
    if val_set.classes != train_set.classes:
        raise ValueError(
            f"{cfg.data.val.ann_file} and {cfg.data.train.ann_file} list different categories"
        )
    classes = train_set.classes
    class_names = [c["name"] for c in classes]
    model_node = model_config(cfg, len(classes))
    model = build_model(model_node, ctx, train)
    criterion = hydra.utils.instantiate(cfg.criterion, _convert_="all").to(ctx.device)
    postprocess_node = OmegaConf.to_container(cfg.postprocess, resolve=True)
    postprocessor = hydra.utils.instantiate(postprocess_node, _convert_="all")

    lr = scaled_lr(optim.lr, optim.base_batch_size, train.batch_size)
    optimizer = build_sgd(model, lr, optim.momentum, optim.weight_decay)
    scheduler = build_lr_scheduler(
        optimizer, train.max_iter, optim.steps, optim.gamma, optim.warmup_iters, optim.warmup_factor
    )
    precision = MixedPrecision(ctx.device, train.amp, train.amp_dtype)

    start_iter, best_ap = 0, -1.0
    if train.resume:
        last = run_dir / LAST
        if not last.is_file():
            raise FileNotFoundError(f"train.resume=true but {last} does not exist")
        start_iter = restore_training_state(
            load_checkpoint(last), model, optimizer, scheduler, precision.scaler
        )
        best_ap = _best_ap(run_dir)
        logger.info("resumed from %s at iteration %d", last, start_iter)

    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    net: nn.Module = model
    if ctx.distributed:
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    pin = ctx.device.type == "cuda"
    train_loader = build_train_loader(
        train_set,
        train.batch_size // ctx.world_size,
        num_workers=train.workers,
        seed=train.seed,
        aspect_ratio_grouping=cfg.data.get("aspect_ratio_grouping", True),
        pin_memory=pin,
    )
    val_loader: DataLoader = build_test_loader(
        val_set, cfg.data.val.get("batch_size", 1), num_workers=train.workers, pin_memory=pin
    )
    writer = SummaryWriter(run_dir if ctx.is_main else None)
    results = ResultsLog(run_dir if ctx.is_main else None, start_iter)
    config_dict = OmegaConf.to_container(cfg, resolve=True)
    state: dict[str, Any] = {"metrics": {}, "best_ap": best_ap}

    def checkpoint(iteration: int) -> dict[str, Any]:
        return training_checkpoint(
            model,
            optimizer,
            scheduler,
            precision.scaler,
            iteration,
            model_config=model_node,
            postprocess_config=postprocess_node,
            classes=classes,
            config=config_dict,
            metrics=state["metrics"],
        )

    def on_evaluate(iteration: int) -> None:
        metrics, predictions = evaluate(
            model,
            postprocessor,
            val_loader,
            val_set.coco,
            val_set.label_to_cat_id,
            ctx.device,
            precision,
            keep_samples=train.vis_images if ctx.is_main else 0,
            backend=evaluation.backend,
        )
        if metrics is None:
            return
        metrics = {"iteration": iteration, **metrics}
        state["metrics"] = metrics
        writer.scalars({k: v for k, v in metrics.items() if k != "iteration"}, iteration, "val/")
        writer.scalars(
            {k: v for k, v in metrics["per_class_AP"].items() if v is not None},
            iteration,
            "val_per_class_AP/",
        )
        writer.detection_images(predictions.samples, class_names, iteration, train.vis_score_thresh)
        logger.info("iteration %d: AP %.2f, AP50 %.2f", iteration, metrics["AP"], metrics["AP50"])
        record_evaluation(run_dir, iteration, metrics, val_set.coco, predictions, evaluation,
                          writer, results)  # fmt: skip
        if metrics["AP"] > state["best_ap"]:
            state["best_ap"] = metrics["AP"]
            save_checkpoint(run_dir / BEST, checkpoint(iteration))

    def on_checkpoint(iteration: int) -> None:
        if ctx.is_main:
            save_checkpoint(run_dir / LAST, checkpoint(iteration))

    settings = LoopSettings(
        max_iter=train.max_iter,
        log_period=train.log_period,
        eval_period=train.eval_period,
        checkpoint_period=train.checkpoint_period,
        skip_nonfinite=train.skip_nonfinite,
        clip_grad_norm=train.clip_grad_norm,
        channels_last=ctx.device.type == "cuda" and train.channels_last,
        progress=train.progress,
    )
    trainer = Trainer(
        net,
        criterion,
        optimizer,
        scheduler,
        skip_batches(train_loader, start_iter),
        precision,
        ctx.device,
        settings,
        on_evaluate=on_evaluate,
        on_checkpoint=on_checkpoint,
        on_log=results.log,
        writer=writer,
        is_main=ctx.is_main,
    )
    if start_iter < train.max_iter:
        trainer.train(start_iter)
    elif ctx.is_main:
        logger.info("nothing to do: %s is already at train.max_iter=%d", run_dir / LAST, start_iter)
        state["metrics"] = load_checkpoint(run_dir / LAST).get("metrics", {})
    writer.close()
    barrier()
    if not ctx.is_main:
        return TrainingResult(None, model, trainer.history)
    metrics = state["metrics"]
    write_metrics(run_dir / "metrics.json", metrics)
    if metrics:
        logger.info("validation metrics (%s):\n%s", cfg.data.val.ann_file, format_summary(metrics))
    return TrainingResult(metrics, model, trainer.history)
