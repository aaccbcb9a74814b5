"""COCO evaluation of a checkpoint: ``python tools/evaluate.py checkpoint=PATH [data overrides]``.

``postprocess.score_thresh=…`` (and ``topk_candidates``, ``nms_thresh``, ``detections_per_img``)
replace the checkpoint's post-processing settings.

Prints pycocotools' 12-number summary, the AP of each class and the F1-maximising score threshold,
and writes ``metrics.json``, ``predictions.json`` (COCO results) and the report (PR curves,
confusion matrix, F1 curve, per-class tables; see ``detector/engine/eval_report_files.py``) to the
run directory. ``evaluation.backend=pycocotools`` scores with the reference implementation. Works
under ``torchrun`` (each process predicts a share of the images; rank 0 scores them).

``checkpoint`` may also be a file written by tools/export.py (``.onnx``, int8 or not, under ONNX
Runtime; ``.torchscript``): its images are decoded and resized as its sidecar says and run on
the CPU in one process, with the post-processing it was exported with, so that the score of a
deployed (or quantised) model can be read beside its checkpoint's.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from data.build import build_dataset, prepare_data
from data.coco import CocoDetection
from data.loader import build_test_loader
from data.validate import DatasetError
from detector import build_from_checkpoint
from detector.checkpoint import CheckpointError, load_checkpoint
from detector.engine.cli import CONFIG_DIR, preflight_argv
from detector.engine.compile import compile_network
from detector.engine.config import ConfigError, exit_on_config_error, validate_evaluate
from detector.engine.distributed import cleanup, init_distributed
from detector.engine.eval_report_files import (
    EvalSettings,
    describe_f1,
    eval_settings,
    write_eval_report,
)
from detector.engine.evaluator import (
    Predictions,
    coco_score,
    evaluate,
    format_summary,
    predict_images,
    scores_to_metrics,
)
from detector.engine.events import EventWriter, write_metrics
from detector.engine.precision import MixedPrecision
from detector.export import is_exported, load_exported

logger = logging.getLogger("focaldet.evaluate")


def class_mismatch(model: list[dict], dataset: list[dict], listed: int = 5) -> str:
    """How the checkpoint's classes (``[{"id", "name"}]``, label order) differ from the
    dataset's, by id and name (``""`` when they agree): the detections of label ``k`` are
    written with the checkpoint's id ``k``, so both must name the same classes by the same ids."""
    names = {c["id"]: c["name"] for c in model}
    theirs = {c["id"]: c["name"] for c in dataset}
    differ = [
        f"id {i}: {names.get(i, 'none')!r} in the checkpoint, {theirs.get(i, 'none')!r} in the data"
        for i in sorted(names.keys() | theirs.keys())
        if names.get(i) != theirs.get(i)
    ]
    more = f"; and {len(differ) - listed} more" if len(differ) > listed else ""
    return "; ".join(differ[:listed]) + more


def check_classes(cfg: DictConfig, classes: list[dict], dataset: CocoDetection) -> None:
    """A :class:`DatasetError` when the model's classes are not the dataset's."""
    mismatch = class_mismatch(classes, dataset.classes)
    if mismatch:
        raise DatasetError(
            f"the classes of {cfg.checkpoint} and {cfg.data.val.ann_file} differ ({mismatch}): "
            "its detections would be scored as other classes"
        )


def run(cfg: DictConfig, out_dir: Path) -> dict | None:
    """Evaluate ``cfg.checkpoint`` on ``cfg.data.val``; return the metrics (rank 0)."""
    validate_evaluate(cfg)
    settings = eval_settings(cfg.get("evaluation"))
    if is_exported(cfg.checkpoint):
        return run_exported(cfg, out_dir, settings)
    ctx = init_distributed(cfg.device)
    checkpoint = load_checkpoint(cfg.checkpoint)
    overrides = {k: v for k, v in cfg.postprocess.items() if v is not None}
    model, postprocessor, classes = build_from_checkpoint(checkpoint, overrides)
    model.to(ctx.device)
    if cfg.get("compile", False):  # configs built in code may lack the key
        compile_network(model)
    prepare_data(cfg)
    dataset = build_dataset(cfg, "val")
    check_classes(cfg, classes, dataset)
    loader = build_test_loader(
        dataset, cfg.data.val.get("batch_size", 1), num_workers=cfg.workers,
        pin_memory=ctx.device.type == "cuda",
    )  # fmt: skip
    metrics, predictions = evaluate(
        model,
        postprocessor,
        loader,
        dataset.coco_gt if ctx.is_main else None,  # only rank 0 scores
        [c["id"] for c in classes],
        ctx.device,
        MixedPrecision(ctx.device, cfg.amp),
        backend=settings.backend,
    )
    cleanup()
    if metrics is None:
        return None
    return write_results(cfg, out_dir, settings, dataset, metrics, predictions)


def run_exported(cfg: DictConfig, out_dir: Path, settings: EvalSettings) -> dict:
    """Evaluate an exported file (module docstring) on ``cfg.data.val``."""
    unusable = [f"postprocess.{k}" for k, v in cfg.postprocess.items() if v is not None]
    unusable += [key for key in ("compile", "amp") if cfg.get(key)]
    if unusable:
        raise ConfigError(
            f"{', '.join(unusable)}: not applicable to {cfg.checkpoint}, an exported file (its "
            "post-processing is in the graph: export again with score_thresh=...)"
        )
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(f"{cfg.checkpoint}: an exported file is evaluated in one process")
    predictor = load_exported(cfg.checkpoint, cfg.data.val.get("batch_size", 1))
    prepare_data(cfg)
    dataset = build_dataset(cfg, "val")
    check_classes(cfg, predictor.classes, dataset)
    cat_ids = [c["id"] for c in predictor.classes]
    predictions = predict_images(predictor, dataset, cat_ids, predictor.batch_size)
    predictions.scores = coco_score(dataset.coco_gt, predictions.detections, settings.backend)
    metrics = scores_to_metrics(predictions.scores, dataset.coco_gt, len(predictions.detections))
    return write_results(cfg, out_dir, settings, dataset, metrics, predictions)


def write_results(
    cfg: DictConfig,
    out_dir: Path,
    settings: EvalSettings,
    dataset: CocoDetection,
    metrics: dict,
    predictions: Predictions,
) -> dict:
    """Write metrics.json, predictions.json and the report; print the summary."""
    metrics = {"checkpoint": str(cfg.checkpoint), **metrics}
    write_metrics(out_dir / "metrics.json", metrics)
    (out_dir / "predictions.json").write_text(json.dumps(predictions.results))
    writer = EventWriter(out_dir)  # the PR curves, for TensorBoard
    report = write_eval_report(out_dir, dataset.coco_gt, predictions, settings, writer)
    writer.close()
    print(f"{cfg.checkpoint} on {cfg.data.val.ann_file}:\n{format_summary(metrics)}")
    if report is not None:
        print(describe_f1(report))
    print(f"wrote {out_dir / 'metrics.json'}, {out_dir / 'predictions.json'} and the report")
    return metrics


@hydra.main(config_path=str(CONFIG_DIR), config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        metrics = exit_on_config_error(run, cfg, out_dir)
    except (CheckpointError, DatasetError) as e:
        print(f"focaldet: {e}", file=sys.stderr)
        sys.exit(1)
    return None if metrics is None else metrics["AP"]


def check_command_line() -> None:
    """Before Hydra starts: compose and check the config of ``sys.argv`` (exit 2 with one line
    if it is bad)."""
    preflight_argv("evaluate", validate_evaluate, ("checkpoint",))


if __name__ == "__main__":
    check_command_line()
    main()
