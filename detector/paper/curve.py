"""The imbalance curve (issue 13): AP against the imbalance meter's reading, one line per loss.

Runs of ``experiment.name: imbalance_curve`` (configs/experiment/imbalance_curve.yaml) differ in
their data (a setting of the synthetic data's dial) and their loss. Each (data, loss) cell
averages its seeds; a data setting's x is the meter's reading of its data without α (the
negatives' CE loss over the positives' at the prior: a property of the data, the same for every
loss), so the curve reads left to right from balanced to imbalanced, with the paper's setting
marked for scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from detector.paper.figures import pyplot, save
from detector.paper.imbalance import ce_loss_ratio
from detector.paper.meter import RunReadings, paper_mean_image
from detector.paper.runs import Row, Run, error_bar, loss_name, mean_std, runs_cell

EXPERIMENT = "imbalance_curve"
PLOT = "imbalance_curve.png"


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
    """The report's markdown lines for the curve (none without its runs), and its plot."""
    settings = curve_settings(runs, readings)
    if not settings:
        return []
    parts = ["", "## The imbalance curve: AP against the imbalance", "", curve_table(settings)]
    parts += [
        "",
        "neg:pos (no α): the imbalance meter's reading of the setting's data (first "
        f"{readings.images} training images), without α; `runs`: finished runs per loss, in "
        "the columns' order.",
    ]
    if readings.failure is not None:
        parts[-1] += f" Not measured (—): {readings.failure}"
    if any(s.ratio is not None for s in settings):
        plot = plot_curve(settings, out_dir / PLOT)
        parts += ["", f"![AP against the imbalance]({plot.name})"]
    return parts
