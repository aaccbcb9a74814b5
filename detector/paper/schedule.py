"""The schedule study (issue 13): AP against iterations, one line per loss.

Runs of ``experiment.name: paper_schedule`` (configs/experiment/paper_schedule.yaml) train the
best CE and FL rows of the paper-regime tables for a longer schedule and evaluate every
``train.eval_period`` iterations; each evaluation is a ``val/AP`` row of the run's
``results.csv``. A loss's line is the mean over its seeds at each evaluated iteration, so the
report shows whether one loss only starts slower or ends lower.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from detector.paper.figures import pyplot, save
from detector.paper.runs import (
    ReportError,
    Row,
    Run,
    error_bar,
    loss_name,
    mean_std,
    runs_cell,
)

EXPERIMENT = "paper_schedule"
PLOT = "schedule_ap_vs_iteration.png"


def evaluations(run: Run) -> dict[int, float]:
    """Iteration → AP of each evaluation of ``run`` (its ``results.csv``; ReportError naming
    the file when it is missing or has no evaluation)."""
    path = run.path / "results.csv"
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        message = "missing (the run's AP against iterations is read from it)"
        raise ReportError(f"{path}: {message}") from None
    try:
        found = {int(r["iteration"]): float(r["val/AP"]) for r in rows if r.get("val/AP")}
    except (KeyError, ValueError) as e:
        raise ReportError(f"{path}: not a training run's results.csv ({e!r})") from None
    if not found:
        raise ReportError(f"{path}: no evaluation (no val/AP row; set train.eval_period)")
    return found


def schedule_rows(runs: Sequence[Run]) -> list[Row]:
    """One row per loss of the study's runs (others are ignored), CE before FL."""
    rows: dict[str, Row] = {}
    for run in runs:
        if run.params["table"] == EXPERIMENT:
            name = loss_name(run.params)
            rows.setdefault(name, Row((name,))).add(run, EXPERIMENT)
    return sorted(rows.values(), key=lambda r: (r.params["gamma"] or 0.0, r.params["alpha"] or 0.0))


Curves = list[dict[int, float]]
"""The evaluations (iteration → AP) of each finished run of a row."""


def finished_curves(row: Row) -> Curves:
    """The evaluations of each finished run of ``row`` (a diverged run has no line)."""
    return [evaluations(run) for run in row.runs if run.metrics is not None]


def by_iteration(curves: Curves) -> dict[int, list[float]]:
    """Iteration → the AP of each run that evaluated there, in iteration order."""
    iterations = sorted({i for curve in curves for i in curve})
    return {i: [c[i] for c in curves if i in c] for i in iterations}


def schedule_table(rows: Sequence[Row], curves: Sequence[Curves]) -> str:
    """One row per loss: AP (mean ± std over seeds) at each evaluated iteration."""
    iterations = sorted({i for runs in curves for curve in runs for i in curve})
    header = ["loss", *(f"AP at {i}" for i in iterations), "runs"]
    out = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for row, runs in zip(rows, curves, strict=True):
        cells = [mean_std([c[i] for c in runs if i in c]) for i in iterations]
        out.append("| " + " | ".join([row.cells[0], *cells, runs_cell(row)]) + " |")
    return "\n".join(out)


def plot_schedule(rows: Sequence[Row], curves: Sequence[Curves], path: Path) -> Path:
    """AP (mean ± std over seeds) against iterations, one line per loss."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for row, runs in zip(rows, curves, strict=True):
        points = by_iteration(runs)
        if not points:
            continue
        means, stds = zip(*(error_bar(v) for v in points.values()), strict=True)
        ax.errorbar(list(points), means, yerr=stds, marker="o", capsize=3, label=row.cells[0])
    ax.set_xlabel("iteration")
    ax.set_ylabel("AP (mean ± std over seeds)")
    ax.set_title("AP against iterations")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return save(fig, path)


def schedule_section(runs: Sequence[Run], out_dir: Path) -> list[str]:
    """The report's markdown lines for the schedule study (none without its runs), and its
    plot."""
    rows = schedule_rows(runs)
    if not rows:
        return []
    iters = sorted({row.params["max_iter"] for row in rows}, key=str)
    title = "The schedule: AP against iterations"
    curves = [finished_curves(row) for row in rows]  # each results.csv read once
    parts = ["", f"## {title}", "", schedule_table(rows, curves)]
    parts += [
        "",
        f"Schedule of {', '.join(map(str, iters))} iterations; the lr drops at the same "
        "fractions of it as in the tables, so AP midway is taken before the drops. `runs`: "
        "finished runs.",
    ]
    if any(curves):
        plot = plot_schedule(rows, curves, out_dir / PLOT)
        parts += ["", f"![{title}]({plot.name})"]
    return parts
