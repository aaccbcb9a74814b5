"""The imbalance curve (issue 13): AP against the imbalance meter's reading, one line per loss.

Runs of ``experiment.name: imbalance_curve`` (configs/experiment/imbalance_curve.yaml) differ in
their data (a setting of the synthetic data's dial) and their loss. Each (data, loss) cell
averages its seeds; a data setting's x is the meter's reading of its data without α (the
negatives' CE loss over the positives' at the prior: a property of the data, the same for every
loss), so the curve reads left to right from balanced to imbalanced, with the paper's setting
marked for scale.

The report also writes every run of the curve to ``imbalance_curve_runs.csv`` (its setting's data
and reading, loss, seed, AP), and draws the curve from such files alone
(``tools/report.py curve_csv=[A.csv,B.csv]``), so that seeds trained on other machines are
pooled without their run folders.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from detector.paper.figures import pyplot, save
from detector.paper.imbalance import ce_loss_ratio
from detector.paper.meter import RunReadings, paper_mean_image
from detector.paper.runs import (
    ReportError,
    Row,
    Run,
    error_bar,
    loss_name,
    mean_std,
    runs_cell,
)

EXPERIMENT = "imbalance_curve"
PLOT = "imbalance_curve.png"
RUNS_CSV = "imbalance_curve_runs.csv"
CSV_FIELDS = ("data", "ratio", "gamma", "alpha", "seed", "AP", "AP50", "AP75", "status")
"""The columns of :data:`RUNS_CSV`: ``ratio`` is the meter's reading of ``data`` (empty: not
measured), ``status`` the run's (finished, diverged, missing; only finished ones have AP)."""
CSV_METRICS = ("AP", "AP50", "AP75")


@dataclass
class Setting:
    """One setting of the dial: its data, the meter's reading, and one row of runs per loss."""

    data: str
    ratio: float | None
    """The meter's CE loss ratio of the data, without α (None: not measurable)."""
    rows: dict[str, Row]
    """Loss name (:func:`detector.paper.runs.loss_name`) → its runs."""


def curve_settings(runs: Sequence[Run], readings: RunReadings) -> list[Setting]:
    """The curve's data settings from ``runs`` (others are ignored), by the meter's reading."""
    settings: dict[str, Setting] = {}
    for run in runs:
        if run.params["table"] != EXPERIMENT:
            continue
        data = str(run.params["data"])
        if data not in settings:
            settings[data] = Setting(data, readings.ratio(run.path, None), {})
        name = loss_name(run.params)
        settings[data].rows.setdefault(name, Row((data, name))).add(run, EXPERIMENT)
    return sorted(settings.values(), key=lambda s: (s.ratio is None, s.ratio or 0.0, s.data))


def line_names(settings: Sequence[Setting]) -> list[str]:
    """The losses of the curve, CE before FL, each by its α."""
    names = {name: row.params for s in settings for name, row in s.rows.items()}
    return sorted(names, key=lambda n: (names[n]["gamma"] or 0.0, names[n]["alpha"] or 0.0))


def curve_table(settings: Sequence[Setting]) -> str:
    """One row per dial setting: its data, its reading, AP (mean ± std over seeds) per loss."""
    lines = line_names(settings)
    header = ["data", "neg:pos (no α)", *(f"AP, {name}" for name in lines), "runs"]
    out = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for s in settings:
        rows = [s.rows.get(name) for name in lines]
        aps = [mean_std(row.values("AP")) if row else "—" for row in rows]
        counts = ", ".join(runs_cell(row) if row else "0" for row in rows)
        ratio = "—" if s.ratio is None else f"{s.ratio:,.1f}"
        out.append("| " + " | ".join([f"`{s.data}`", ratio, *aps, counts]) + " |")
    return "\n".join(out)


def plot_curve(settings: Sequence[Setting], path: Path) -> Path:
    """AP (mean ± std over seeds) against the meter's reading (log scale), one line per loss,
    the paper's setting as a dotted line."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    measured = [s for s in settings if s.ratio is not None]
    for name in line_names(measured):
        points = [(s.ratio, s.rows[name].values("AP")) for s in measured if name in s.rows]
        points = [(x, v) for x, v in points if v]
        if not points:
            continue
        x = [p[0] for p in points]
        means, stds = zip(*(error_bar(v) for _, v in points), strict=True)
        ax.errorbar(x, means, yerr=stds, marker="o", capsize=3, label=name)
    paper = ce_loss_ratio(paper_mean_image())
    ax.axvline(paper, color="grey", linestyle=":", label=f"the paper's setting ({paper:.0f})")
    ax.set_xscale("log")
    ax.set_xlabel("imbalance: negatives' CE loss / positives' at the prior (no α)")
    ax.set_ylabel("AP (mean ± std over seeds)")
    ax.set_title("AP against the imbalance")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    return save(fig, path)


def curve_section(runs: Sequence[Run], readings: RunReadings, out_dir: Path) -> list[str]:
    """The report's markdown lines for the curve (none without its runs), its plot and its
    runs table (:data:`RUNS_CSV`)."""
    settings = curve_settings(runs, readings)
    if not settings:
        return []
    note = (
        "neg:pos (no α): the imbalance meter's reading of the setting's data (first "
        f"{readings.images} training images), without α; `runs`: finished runs per loss, in "
        "the columns' order."
    )
    if readings.failure is not None:
        note += f" Not measured (—): {readings.failure}"
    table = write_runs_csv(settings, out_dir / RUNS_CSV)
    return _section(settings, note + f" Every run: `{table.name}`.", out_dir)


def _section(settings: Sequence[Setting], note: str, out_dir: Path) -> list[str]:
    parts = ["", "## The imbalance curve: AP against the imbalance", "", curve_table(settings)]
    parts += ["", note]
    if any(s.ratio is not None for s in settings):
        plot = plot_curve(settings, out_dir / PLOT)
        parts += ["", f"![AP against the imbalance]({plot.name})"]
    return parts


def write_runs_csv(settings: Sequence[Setting], path: Path) -> Path:
    """Write ``path``: one line per run of ``settings`` (:data:`CSV_FIELDS`), by setting."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(CSV_FIELDS)
        for setting in settings:
            ratio = "" if setting.ratio is None else round(setting.ratio, 1)
            for row in setting.rows.values():
                for run in row.runs:
                    p, m = run.params, run.metrics
                    aps = [round(m[k], 2) for k in CSV_METRICS] if m else ["", "", ""]
                    writer.writerow([setting.data, ratio, p["gamma"], p["alpha"], p["seed"],
                                     *aps, run.status])  # fmt: skip
    return path


def read_runs_csv(paths: Sequence[Path]) -> list[Setting]:
    """The curve's settings from the runs tables ``paths`` (:func:`write_runs_csv`), their runs
    pooled, by reading; a :class:`ReportError` naming the file and line of a bad one."""
    settings: dict[str, Setting] = {}
    for path in map(Path, paths):
        try:
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                lines = list(reader)
                header = tuple(reader.fieldnames or ())
        except OSError as e:
            raise ReportError(f"{path}: {e.strerror}") from None
        if header != CSV_FIELDS:
            raise ReportError(
                f"{path}: not a runs table: the columns must be {','.join(CSV_FIELDS)}"
            )
        for number, line in enumerate(lines, start=2):
            try:
                run, ratio = _csv_run(path, line)
            except (TypeError, ValueError) as e:
                raise ReportError(f"{path}, line {number}: {e}") from None
            setting = settings.setdefault(line["data"], Setting(line["data"], ratio, {}))
            if setting.ratio != ratio:
                raise ReportError(
                    f"{path}, line {number}: {line['data']} reads {ratio} here and "
                    f"{setting.ratio} on an earlier line"
                )
            name = loss_name(run.params)
            setting.rows.setdefault(name, Row((setting.data, name))).add(run, path.name)
    return sorted(settings.values(), key=lambda s: (s.ratio is None, s.ratio or 0.0, s.data))


def _csv_run(path: Path, line: dict[str, str]) -> tuple[Run, float | None]:
    """The run of one line of a runs table, and its setting's reading."""
    status = line["status"]
    if status not in ("finished", "diverged", "missing"):
        raise ValueError(f"status must be finished, diverged or missing, got {status!r}")
    params = {
        "table": EXPERIMENT,
        "fl_star": False,
        "seed": int(line["seed"]),
        "gamma": float(line["gamma"]),
        "alpha": float(line["alpha"]),
        "data": line["data"],
    }
    metrics = {k: float(line[k]) for k in CSV_METRICS} if status == "finished" else None
    ratio = float(line["ratio"]) if line["ratio"] else None
    return Run(path, params, metrics, status), ratio


def curve_report(paths: Sequence[Path], out_dir: Path) -> Path:
    """Write ``report.md`` with the curve's table and plot drawn from the runs tables ``paths``
    alone (:func:`read_runs_csv`); returns its path."""
    settings = read_runs_csv(paths)
    if not settings:
        raise ReportError(f"{', '.join(map(str, paths))}: no runs")
    out_dir.mkdir(parents=True, exist_ok=True)
    note = (
        "neg:pos (no α): the imbalance meter's reading recorded with each setting; `runs`: "
        f"finished runs per loss, in the columns' order. From {', '.join(map(str, paths))}."
    )
    parts = [
        f"# The imbalance curve: {len(paths)} runs table(s)",
        *_section(settings, note, out_dir),
    ]
    path = out_dir / "report.md"
    path.write_text("\n".join(parts) + "\n")
    return path
