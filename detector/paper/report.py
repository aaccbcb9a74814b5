"""Tables and plots of the paper's loss comparisons (Table 1a–d, Appendix A), of the
imbalance curve (detector/paper/curve.py) and of the schedule study (detector/paper/schedule.py)
from training runs.

Runs (``detector.paper.runs``) are filed under the table their config names (``experiment.name``,
set by ``configs/experiment/*.yaml``), grouped into rows by their setting, and averaged over
seeds: each cell is the mean ± the sample standard deviation (n − 1) over the runs that finished.
A run whose ``metrics.json`` says ``"diverged": true`` or is missing is counted in the row's
``runs`` column and left out of the mean.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detector.paper.curve import curve_section
from detector.paper.figures import pyplot, save
from detector.paper.imbalance import PRIOR, ce_loss_ratio
from detector.paper.meter import RunReadings, paper_mean_image
from detector.paper.runs import (
    ReportError,
    Row,
    Run,
    error_bar,
    find_runs,
    loss_name,
    mean_std,
    num,
    runs_cell,
)
from detector.paper.schedule import schedule_section

PAPER_AP_TABLE1A = {0.10: 0.0, 0.25: 10.8, 0.50: 30.2, 0.75: 31.1, 0.90: 30.8, 0.99: 28.7,
                    0.999: 25.1}  # fmt: skip
"""Table 1a of Lin et al. (2017): AP of CE (γ = 0) by α, ResNet-50 at 600 px on COCO minival."""

PAPER_AP_TABLE1B = {(0.0, 0.75): 31.1, (0.1, 0.75): 31.4, (0.2, 0.75): 31.9, (0.5, 0.50): 32.9,
                    (1.0, 0.25): 33.7, (2.0, 0.25): 34.0, (5.0, 0.25): 32.2}  # fmt: skip
"""Table 1b of Lin et al. (2017): AP of FL by (γ, α)."""


def _method(p: dict[str, Any]) -> str:
    if not p["ohem"]:
        return "FL" if p["gamma"] else "CE"
    f = p["ohem_fg_fraction"]
    return "OHEM" if f is None else f"OHEM 1:{(1 - f) / f:g}"


Column = tuple[str, Callable[[dict[str, Any]], str]]


@dataclass(frozen=True)
class TableSpec:
    """How one table of the paper is laid out."""

    name: str
    """``experiment.name`` of its runs."""
    title: str
    columns: tuple[Column, ...]
    """The setting columns: header and cell text of a run's params; they define the rows."""
    order: Callable[[dict[str, Any]], tuple]
    """Sort key of a row (its first run's params), in the paper's row order."""
    paper_ap: Callable[[dict[str, Any]], float | None] | None = None
    plot: tuple[str, str] | None = None
    """``(file name, x-axis label)``: an AP plot over the rows, in row order."""
    notes: str = ""


TABLES: tuple[TableSpec, ...] = (
    TableSpec(
        "table1a",
        "Table 1a: α-balanced CE (γ = 0) over α",
        (("α", lambda p: num(p["alpha"])), ("γ", lambda p: num(p["gamma"]))),
        order=lambda p: (p["alpha"],),
        paper_ap=lambda p: PAPER_AP_TABLE1A.get(p["alpha"]),
        plot=("table1a_ap_vs_alpha.png", "α (CE, γ = 0)"),
    ),
    TableSpec(
        "table1b",
        "Table 1b: focal loss over (γ, α)",
        (("γ", lambda p: num(p["gamma"])), ("α", lambda p: num(p["alpha"]))),
        order=lambda p: (p["gamma"], p["alpha"]),
        paper_ap=lambda p: PAPER_AP_TABLE1B.get((p["gamma"], p["alpha"])),
        plot=("table1b_ap_vs_gamma.png", "γ (with its α)"),
    ),
    TableSpec(
        "table1c",
        "Table 1c: anchors per location (#scales × #aspect ratios), FL",
        (("#sc", lambda p: str(p["num_scales"])), ("#ar", lambda p: str(p["num_ratios"]))),
        order=lambda p: (p["num_ratios"], p["num_scales"]),
    ),
    TableSpec(
        "table1d",
        "Table 1d: OHEM with CE against FL",
        (
            ("method", _method),
            ("batch size", lambda p: num(p["ohem_batch"]) if p["ohem"] else "n/a"),
            ("nms thr", lambda p: num(p["ohem_nms"]) if p["ohem"] else "n/a"),
        ),
        order=lambda p: (
            not p["ohem"],
            p["ohem_fg_fraction"] is not None,
            -(p["ohem_nms"] or 0.0),
            p["ohem_batch"] or 0,
        ),
    ),
    TableSpec(
        "fl_star",
        "Appendix A: FL* over (γ, β)",
        (("γ", lambda p: num(p["gamma"])), ("β", lambda p: num(p["beta"]))),
        order=lambda p: (p["gamma"], p["beta"]),
    ),
    TableSpec(
        "no_prior",
        "§4.1: classification prior π at initialisation (π = 0.5: bias 0, no prior)",
        (("loss", loss_name), ("prior π", lambda p: num(p["prior_prob"]))),
        order=lambda p: (p["gamma"], p["prior_prob"]),
        notes="A diverged run stopped on a non-finite loss; it has no AP.",
    ),
)
"""The reproduced tables, in report order."""


def build_rows(spec: TableSpec, runs: Sequence[Run]) -> list[Row]:
    """The rows of ``spec`` from ``runs`` (other tables' runs are ignored), in paper order."""
    rows: dict[tuple[str, ...], Row] = {}
    for run in runs:
        if run.params["table"] != spec.name:
            continue
        cells = tuple(cell(run.params) for _, cell in spec.columns)
        rows.setdefault(cells, Row(cells)).add(run, spec.name)
    return sorted(rows.values(), key=lambda row: spec.order(row.params))


def markdown_table(
    spec: TableSpec, rows: Sequence[Row], imbalance: Sequence[float | None] | None = None
) -> str:
    """The table in the paper's layout, our AP ± std over seeds, the paper's AP beside it, and
    each row's imbalance meter reading where given."""
    header = [name for name, _ in spec.columns] + ["AP", "AP50", "AP75"]
    if spec.paper_ap is not None:
        header.append("paper AP")
    if imbalance is not None:
        header.append("neg:pos")
    header.append("runs")
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    for index, row in enumerate(rows):
        cells = list(row.cells) + [mean_std(row.values(m)) for m in ("AP", "AP50", "AP75")]
        if spec.paper_ap is not None:
            paper = spec.paper_ap(row.params)
            cells.append("—" if paper is None else f"{paper:.1f}")
        if imbalance is not None:
            ratio = imbalance[index]
            cells.append("—" if ratio is None else f"{ratio:,.1f}")
        cells.append(runs_cell(row))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_table(spec: TableSpec, rows: Sequence[Row], path: Path) -> Path:
    """AP (mean ± std over seeds) per row against the row's setting, with the paper's AP."""
    plt = pyplot()

    assert spec.plot is not None
    labels = [" ".join(row.cells) if len(row.cells) == 1 else "\n".join(row.cells) for row in rows]
    x = list(range(len(rows)))
    bars = [error_bar(v) if (v := row.values("AP")) else (float("nan"), 0.0) for row in rows]
    means, stds = zip(*bars, strict=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.errorbar(x, means, yerr=stds, marker="o", capsize=3, label="focaldet (mean ± std)")
    if spec.paper_ap is not None:
        paper = [spec.paper_ap(row.params) for row in rows]
        paper_y = [float("nan") if p is None else p for p in paper]
        ax.plot(x, paper_y, "s--", label="Lin et al. 2017 (COCO)")
    ax.set_xticks(x, labels)
    ax.set_xlabel(spec.plot[1])
    ax.set_ylabel("AP")
    ax.set_title(spec.title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save(fig, path)


def write_hparams(runs: Sequence[Run], runs_dir: Path, log_dir: Path) -> int:
    """Log every finished run to TensorBoard's HParams view under ``log_dir``; return the count.

    Each run becomes a session named by its path relative to ``runs_dir``; ``None`` settings are
    logged as the string ``"none"`` (HParams takes numbers, strings and booleans only).
    """
    from torch.utils.tensorboard import SummaryWriter

    finished = [r for r in runs if r.metrics is not None]
    with SummaryWriter(str(log_dir)) as writer:
        for run in finished:
            hparams = {k: "none" if v is None else v for k, v in run.params.items()}
            metrics = {f"hparam/{k}": v for k, v in run.metrics.items()}  # type: ignore[union-attr]
            writer.add_hparams(hparams, metrics, run_name=str(run.path.relative_to(runs_dir)))
    return len(finished)


def _slug(dataset: str | None) -> str:
    """A file-name-safe short name of a dataset path (``datasets/raccoon`` → ``raccoon``)."""
    if dataset is None:
        return "unknown"
    path = Path(dataset)
    name = path.stem if path.suffix == ".json" else path.name
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name) or "dataset"


def imbalance_note(readings: RunReadings) -> str:
    """What the ``neg:pos`` column is, with the paper's setting for scale."""
    paper = paper_mean_image()
    note = (
        "neg:pos: the imbalance meter's reading of the row's data (its first run's config, first "
        f"{readings.images} training images): the negatives' CE loss over the positives' at the "
        f"prior π = {PRIOR}, with the row's α applied (×(1 − α)/α; `python tools/imbalance.py`). "
        f"The paper's setting reads {ce_loss_ratio(paper):,.1f} without α, "
        f"{ce_loss_ratio(paper, 0.25):,.1f} at α = .25."
    )
    if readings.failure is not None:
        note += f" Not measured (—): {readings.failure}"
    return note


def unmeasured_note(readings: RunReadings) -> str:
    reason = readings.failure or "turned off (meter_images=0)"
    return f"Imbalance meter: not measured: {reason}"


def write_report(runs_dir: str | Path, out_dir: str | Path, meter_images: int = 40) -> Path:
    """Write ``report.md`` (every table with runs), the AP plots and TensorBoard HParams.

    Each table gets the imbalance meter's reading of its rows' data (``meter_images`` training
    images of each distinct setting; 0: none). Returns the path of ``report.md``.
    """
    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    runs = find_runs(runs_dir)
    readings = RunReadings(meter_images)
    if not runs:
        raise ReportError(f"{runs_dir}: no run folders (config.yaml with experiment.name) found")
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = [f"# Loss comparison: runs under `{runs_dir}`", ""]
    parts.append(
        "AP, AP50, AP75: COCO AP ×100 on the validation split, mean ± sample std over seeds; "
        "`runs`: finished runs (diverged or missing ones are not averaged)."
    )
    # Runs on different datasets or schedules never share a table; where the folder holds
    # several, each table's title and plot name say which one it is.
    names = {spec.name for spec in TABLES}
    table_runs = [r for r in runs if r.params["table"] in names]
    settings = sorted({(r.params["data"], r.params["max_iter"]) for r in table_runs}, key=str)
    several_data = len({data for data, _ in settings}) > 1
    several_iters = len({iters for _, iters in settings}) > 1
    for data, iters in settings:
        group = [r for r in table_runs if (r.params["data"], r.params["max_iter"]) == (data, iters)]
        where = ([f"on `{data}`"] if several_data else []) + (
            [f"{iters} iterations"] if several_iters else []
        )
        prefix = "".join(
            ([f"{_slug(data)}_"] if several_data else [])
            + ([f"{iters}it_"] if several_iters else [])
        )
        for spec in TABLES:
            rows = build_rows(spec, group)
            if not rows:
                continue
            title = ", ".join([spec.title, *where])
            ratios = [readings.ratio(row.runs[0].path, row.params["alpha"]) for row in rows]
            measured = any(r is not None for r in ratios)
            table = markdown_table(spec, rows, ratios if measured else None)
            parts += ["", f"## {title}", "", table]
            parts += ["", imbalance_note(readings) if measured else unmeasured_note(readings)]
            if spec.notes:
                parts += ["", spec.notes]
            if spec.plot is not None:
                plot = plot_table(spec, rows, out_dir / f"{prefix}{spec.plot[0]}")
                parts += ["", f"![{title}]({plot.name})"]
    parts += curve_section(runs, readings, out_dir)
    parts += schedule_section(runs, out_dir)
    count = write_hparams(runs, runs_dir, out_dir / "tensorboard")
    parts += [
        "",
        f"TensorBoard HParams ({count} runs): `tensorboard --logdir {out_dir / 'tensorboard'}`",
    ]
    path = out_dir / "report.md"
    path.write_text("\n".join(parts) + "\n")
    return path
