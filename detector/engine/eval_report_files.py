"""An evaluation's report on disk, and a training run's ``results.csv`` / ``results.png``.

:func:`write_eval_report` leaves in its folder (``tools/evaluate.py``'s output directory, or
``<run_dir>/eval/<iteration>/`` during training):

- ``pr_curve.png``: all classes at IoU .5 and over .5:.95, and every class at IoU .5;
- ``confusion_matrix.png`` / ``confusion_matrix_normalized.png`` (rows: true class, each row over
  its sum) and ``confusion_matrix.csv``, at IoU .5 and the chosen score threshold;
- ``f1_curve.png``: F1 against the score threshold, the F1-maximising one marked;
- ``per_class.csv`` / ``per_class.md``: images, boxes, crowd regions, detections, AP, AP50, AP75
  and AR100 of each class and of all;
- ``pr_curves.csv`` (the curves' numbers) and ``report.json`` (the F1-maximising threshold with
  its F1, precision and recall, the confusion threshold, the backend);

and, given a TensorBoard writer, the PR curves under ``pr_curve/``. Figures are drawn on
matplotlib's ``Figure`` directly (no pyplot state, no GUI backend).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from pycocotools.coco import COCO

from detector.engine.config import ConfigError
from detector.engine.eval_report import EvalReport, build_report, normalise_rows
from detector.engine.evaluator import STAT_NAMES, Predictions, resolve_backend
from detector.engine.events import EventWriter

logger = logging.getLogger(__name__)

TABLE_COLUMNS = ("class", "images", "boxes", "crowd", "detections", "AP", "AP50", "AP75", "AR100")
_LEGEND_MAX = 20
"""Above this many classes, per-class curves go without a legend and matrices without counts."""


@dataclass
class EvalSettings:
    """The ``evaluation`` node of ``configs/train.yaml`` and ``configs/evaluate.yaml``."""

    backend: str = "auto"
    """``auto`` (faster-coco-eval where installed), ``faster_coco_eval`` or ``pycocotools``."""
    report: bool = True
    """Write the plots and tables of each evaluation."""
    confusion_score_thresh: float | None = None
    """Score threshold of the confusion matrix (``None``: the F1-maximising one)."""


def eval_settings(node: Mapping[str, Any] | None) -> EvalSettings:
    """Validated :class:`EvalSettings` from a config node (absent: the defaults)."""
    node = dict(node or {})
    known = [f.name for f in fields(EvalSettings)]
    for key in node:
        if key not in known:
            raise ConfigError(f"evaluation.{key}: unknown key (known: {', '.join(known)})")
    settings = EvalSettings(**node)
    try:
        resolve_backend(settings.backend)
    except ValueError as e:
        raise ConfigError(f"evaluation.backend: {e}") from None
    if not isinstance(settings.report, bool):
        raise ConfigError(f"evaluation.report must be true or false, got {settings.report!r}")
    t = settings.confusion_score_thresh
    if t is not None and (
        isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= 1
    ):
        raise ConfigError(f"evaluation.confusion_score_thresh must be in [0, 1] or null, got {t!r}")
    return settings


def _cell(value: Any, digits: int | None = None) -> str:
    """A table cell: empty (CSV) or ``n/a`` (markdown, ``digits`` given) for an undefined value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "" if digits is None else "n/a"
    if isinstance(value, float):
        return repr(value) if digits is None else f"{value:.{digits}f}"
    return str(value)


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(header)
        out.writerows([_cell(v) for v in row] for row in rows)
    return path


def write_tables(report: EvalReport, out_dir: Path) -> list[Path]:
    """``per_class.csv``, ``per_class.md``, ``confusion_matrix.csv`` and ``pr_curves.csv``."""
    rows = [[row[c] for c in TABLE_COLUMNS] for row in report.table]
    md = [
        "| " + " | ".join(TABLE_COLUMNS) + " |",
        "|---" + "|---:" * (len(TABLE_COLUMNS) - 1) + "|",
    ]
    md += ["| " + " | ".join(_cell(v, 2) for v in row) + " |" for row in rows]
    (out_dir / "per_class.md").write_text("\n".join(md) + "\n")
    labels = [*report.class_names, "background"]
    confusion = [
        [name, *counts] for name, counts in zip(labels, report.confusion.tolist(), strict=True)
    ]
    pr = report.pr
    curves = np.column_stack([pr.recall, pr.iou50, pr.iou50_95, pr.per_class.T])
    return [
        _write_csv(out_dir / "per_class.csv", TABLE_COLUMNS, rows),
        out_dir / "per_class.md",
        _write_csv(out_dir / "confusion_matrix.csv", ["true \\ predicted", *labels], confusion),
        _write_csv(
            out_dir / "pr_curves.csv",
            ["recall", "all_iou50", "all_iou50_95", *(f"{n}_iou50" for n in report.class_names)],
            curves.tolist(),
        ),
    ]


def _ap_label(name: str, value: Any) -> str:
    return f"{name} ({_cell(value, 1)})"


def plot_pr_curves(report: EvalReport, path: Path) -> Path:
    """All classes (IoU .5 and .5:.95) on the left, each class at IoU .5 on the right."""
    fig = Figure(figsize=(12, 5), layout="constrained")
    left, right = fig.subplots(1, 2)
    total = report.table[-1]
    pr = report.pr
    left.plot(pr.recall, pr.iou50, lw=2, label=_ap_label("IoU .5, AP50", total["AP50"]))
    left.plot(pr.recall, pr.iou50_95, lw=2, label=_ap_label("IoU .5:.95, AP", total["AP"]))
    left.set_title("all classes")
    many = len(report.class_names) > _LEGEND_MAX
    for name, curve, row in zip(report.class_names, pr.per_class, report.table, strict=False):
        right.plot(pr.recall, curve, lw=0.7 if many else 1.2, label=_ap_label(name, row["AP50"]))
    right.plot(pr.recall, pr.iou50, color="black", lw=2.5, label=_ap_label("all", total["AP50"]))
    right.set_title(f"per class at IoU .5 ({len(report.class_names)} classes)")
    for ax in (left, right):
        ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
    left.legend(loc="lower left")
    if not many:
        right.legend(loc="lower left", fontsize="small")
    fig.savefig(path, dpi=100)
    return path


def plot_confusion(report: EvalReport, path: Path, normalised: bool) -> Path:
    """The confusion matrix as an image (counts written in the cells up to 20 classes)."""
    values = normalise_rows(report.confusion) if normalised else report.confusion.astype(float)
    labels = [*report.class_names, "background"]
    side = max(6.0, 0.16 * len(labels) + 3)
    fig = Figure(figsize=(side + 1, side))
    # Margins from the longest name (≈0.09 in per character at this font size) instead of a
    # constrained layout, which redraws the 2(K+1) tick labels several times (seconds at K=80).
    margin = (0.09 * max(len(n) for n in labels) + 0.7) / side
    fig.subplots_adjust(left=margin, bottom=margin, right=0.98, top=1 - 0.6 / side)
    ax = fig.subplots()
    shown = np.ma.masked_invalid(values)
    image = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalised else None)
    fig.colorbar(image, ax=ax, shrink=0.8)
    ticks = np.arange(len(labels))
    ax.set_xticks(ticks, labels, rotation=90, fontsize="small")
    ax.set_yticks(ticks, labels, fontsize="small")
    ax.set(xlabel="predicted", ylabel="true")
    if len(labels) <= _LEGEND_MAX + 1:
        top = np.nanmax(values) if np.isfinite(values).any() else 0
        for (i, j), v in np.ndenumerate(values):
            if np.isfinite(v) and v > 0:
                color = "white" if v > top / 2 else "black"
                text = f"{v:.2f}" if normalised else f"{int(v)}"
                ax.text(j, i, text, ha="center", va="center", fontsize="x-small", color=color)
    kind = "normalised over each true class" if normalised else "counts"
    ax.set_title(f"IoU {report.iou_thresh:g}, score > {report.confusion_thresh:.3f} ({kind})")
    fig.savefig(path, dpi=100)
    return path


def describe_f1(report: EvalReport) -> str:
    """One line: the F1-maximising threshold with its F1, precision and recall."""
    f1 = report.f1
    if f1.best_thresh is None:
        return "F1: no score threshold gives a true positive"
    return (
        f"best F1 {f1.best_f1:.3f} (precision {f1.best_precision:.3f}, recall "
        f"{f1.best_recall:.3f}) at postprocess.score_thresh={f1.best_thresh:.4f}"
    )


def plot_f1(report: EvalReport, path: Path) -> Path:
    """F1 of each class and of all pooled against the score threshold."""
    f1 = report.f1
    fig = Figure(figsize=(7, 5), layout="constrained")
    ax = fig.subplots()
    many = len(report.class_names) > _LEGEND_MAX
    for name, curve in zip(report.class_names, f1.per_class, strict=True):
        ax.plot(f1.thresholds, curve, lw=0.7 if many else 1.0, alpha=0.6, label=name)
    ax.plot(f1.thresholds, f1.f1, color="black", lw=2.5, label="all classes")
    if f1.best_thresh is not None:
        ax.axvline(f1.best_thresh, color="red", ls="--", lw=1)
    ax.set(xlabel="score threshold", ylabel="F1", xlim=(0, 1), ylim=(0, 1.02))
    ax.set_title(describe_f1(report).replace(" at ", "\nat "), fontsize="small")
    ax.grid(alpha=0.3)
    if not many:
        ax.legend(loc="lower left", fontsize="small")
    fig.savefig(path, dpi=100)
    return path


def add_pr_curves(writer: EventWriter, report: EvalReport, step: int) -> None:
    """The report's PR curves in TensorBoard: ``pr_curve/all_iou50``, ``pr_curve/all_iou50_95``
    and ``pr_curve/<class>`` (IoU .5); undefined curves are left out."""
    recall = report.pr.recall[::-1].tolist()
    curves = {"all_iou50": report.pr.iou50, "all_iou50_95": report.pr.iou50_95}
    curves.update(zip(report.class_names, report.pr.per_class, strict=True))
    for name, precision in curves.items():
        if np.isfinite(precision).all():
            writer.pr_curve(f"pr_curve/{name}", precision[::-1].tolist(), recall, step)


def write_report(
    report: EvalReport, out_dir: str | Path, writer: EventWriter | None = None, step: int = 0
) -> list[Path]:
    """Every file of the report (see the module docstring) in ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    f1 = report.f1
    summary = {
        "f1_best_score_thresh": f1.best_thresh,
        "f1_best": f1.best_f1,
        "precision_at_best": f1.best_precision,
        "recall_at_best": f1.best_recall,
        "confusion_score_thresh": report.confusion_thresh,
        "iou_thresh": report.iou_thresh,
        "backend": report.backend,
    }
    summary = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in summary.items()}
    (out_dir / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    paths = [
        plot_pr_curves(report, out_dir / "pr_curve.png"),
        plot_confusion(report, out_dir / "confusion_matrix.png", normalised=False),
        plot_confusion(report, out_dir / "confusion_matrix_normalized.png", normalised=True),
        plot_f1(report, out_dir / "f1_curve.png"),
        *write_tables(report, out_dir),
        out_dir / "report.json",
    ]
    if writer is not None:
        add_pr_curves(writer, report, step)
    return paths


def write_eval_report(
    out_dir: str | Path,
    coco_gt: COCO,
    predictions: Predictions,
    settings: EvalSettings | None = None,
    writer: EventWriter | None = None,
    step: int = 0,
) -> EvalReport | None:
    """Build and write the report of scored ``predictions`` (from :func:`evaluator.evaluate` on
    rank 0); ``None`` when ``settings.report`` is off."""
    settings = settings or EvalSettings()
    if not settings.report:
        return None
    if predictions.scores is None:
        raise ValueError("write_eval_report needs scored predictions (rank 0 of evaluate())")
    report = build_report(
        coco_gt, predictions.detections, predictions.scores, settings.confusion_score_thresh
    )
    write_report(report, out_dir, writer, step)
    return report


_PANELS = (
    ("AP", ("val/AP", "val/AP50", "val/AP75")),
    ("AP by size", ("val/APs", "val/APm", "val/APl")),
    ("AR", ("val/AR1", "val/AR10", "val/AR100")),
)


class ResultsLog:
    """``results.csv`` and ``results.png`` of a training run, rewritten as it goes.

    One row per iteration that logged (losses, lr, grad norm, timing) or evaluated (``val/AP``
    …): values given for the same iteration share its row. A resumed run keeps the rows up to
    its start. ``run_dir`` ``None`` (ranks other than 0) gives a log that writes nothing.
    """

    def __init__(self, run_dir: str | Path | None, start_iter: int = 0) -> None:
        self.csv = Path(run_dir) / "results.csv" if run_dir is not None else None
        self.png = Path(run_dir) / "results.png" if run_dir is not None else None
        self.rows: dict[int, dict[str, float]] = {}
        self.columns: list[str] = ["iteration"]
        if self.csv is not None and self.csv.is_file() and start_iter > 0:
            with self.csv.open(newline="") as f:
                reader = csv.DictReader(f)
                self.columns = list(reader.fieldnames or self.columns)
                for row in reader:
                    if int(row["iteration"]) <= start_iter:
                        values = {k: float(v) for k, v in row.items() if k != "iteration" and v}
                        self.rows[int(row["iteration"])] = values

    def log(self, iteration: int, values: Mapping[str, Any], plot: bool = False) -> None:
        """Merge the numbers of ``values`` into ``iteration``'s row, rewrite the CSV and, when
        ``plot``, the figure."""
        if self.csv is None:
            return
        row = self.rows.setdefault(iteration, {})
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                row[key] = float(value)
                if key not in self.columns:
                    self.columns.append(key)
        table = [
            [it, *(self.rows[it].get(c) for c in self.columns[1:])] for it in sorted(self.rows)
        ]
        _write_csv(self.csv, self.columns, table)
        if plot:
            self.plot()

    def plot(self) -> Path | None:
        """``results.png``: one panel per loss, the lr, and the validation AP and AR."""
        if self.png is None or not self.rows:
            return None
        panels = [(c, (c,)) for c in self.columns if c.startswith("loss/") or c == "lr"]
        panels += [(t, keys) for t, keys in _PANELS if any(k in self.columns for k in keys)]
        if not panels:
            return None
        cols = min(4, len(panels))
        rows = math.ceil(len(panels) / cols)
        fig = Figure(figsize=(4 * cols, 3 * rows), layout="constrained")
        axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
        iterations = sorted(self.rows)
        for ax, (title, keys) in zip(axes, panels, strict=False):
            for key in keys:
                points = [(i, self.rows[i][key]) for i in iterations if key in self.rows[i]]
                if points:
                    ax.plot(*zip(*points, strict=True), marker="." if len(points) < 50 else None,
                            label=key.removeprefix("val/"))  # fmt: skip
            ax.set(title=title, xlabel="iteration")
            ax.grid(alpha=0.3)
            if len(keys) > 1:
                ax.legend(fontsize="small")
        for ax in axes[len(panels) :]:
            ax.set_visible(False)
        fig.savefig(self.png, dpi=100)
        return self.png


def record_evaluation(
    run_dir: Path,
    iteration: int,
    metrics: Mapping[str, Any],
    coco_gt: COCO,
    predictions: Predictions,
    settings: EvalSettings,
    writer: EventWriter,
    results: ResultsLog,
) -> EvalReport | None:
    """The training run's hook after an evaluation on rank 0: its row of ``results.csv`` (and
    ``results.png``) and its report in ``<run_dir>/eval/<iteration>/``."""
    results.log(iteration, {f"val/{k}": metrics[k] for k in STAT_NAMES}, plot=True)
    out_dir = Path(run_dir) / "eval" / str(iteration)
    report = write_eval_report(out_dir, coco_gt, predictions, settings, writer, iteration)
    if report is not None:
        logger.info("%s; plots and tables in %s", describe_f1(report), out_dir)
    return report
