"""Training runs of the paper's loss comparisons, read back from their folders.

A run is a directory holding the resolved ``config.yaml`` that ``tools/train.py`` writes and, once
it has finished, its ``metrics.json`` (COCO AP ×100). What a run trained (which criterion, which
loss) is read from its config by the classes its ``_target_``s name, never from their spelling.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra.utils
from omegaconf import OmegaConf

from detector.anchors import DEFAULT_SCALES
from detector.paper.ohem import OHEMCriterion
from losses.focal_star import FocalLossStar

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
"""The metrics of ``metrics.json`` a report reads (COCO AP on a 0–100 scale)."""


class ReportError(ValueError):
    """A run folder cannot be read (the message names the file and the problem)."""


@dataclass
class Run:
    """One training run: its setting (flat, from the resolved config) and its outcome."""

    path: Path
    params: dict[str, Any]
    """``table``, ``seed``, ``loss`` (class name), ``fl_star`` (an FL* loss), ``alpha``,
    ``gamma``, ``beta``, ``criterion`` (class name), ``ohem`` (an OHEM criterion),
    ``ohem_batch``, ``ohem_nms``, ``ohem_fg_fraction``, ``num_scales``, ``num_ratios``,
    ``prior_prob`` (``None`` where the setting does not apply)."""
    metrics: dict[str, float] | None
    """``METRICS`` of a finished run; ``None`` if it diverged or has no ``metrics.json``."""
    status: str
    """``"finished"``, ``"diverged"`` or ``"missing"``."""


def _class(node: dict[str, Any], key: str) -> type:
    """The class ``node["_target_"]`` names (imported, not built)."""
    target = node["_target_"]
    try:
        return hydra.utils.get_class(target)
    except Exception:  # noqa: BLE001 - Hydra raises several types for an unimportable path
        raise ReportError(f"{key}._target_ {target!r} is not an importable class") from None


def run_params(cfg: dict[str, Any]) -> dict[str, Any]:
    """The flat setting of a run from its resolved config (``config.yaml`` as a dict)."""
    loss = cfg["criterion"]["cls_loss"]
    criterion = cfg["criterion"]
    anchors = cfg["model"]["anchor_generator"]
    loss_class = _class(loss, "criterion.cls_loss")
    criterion_class = _class(criterion, "criterion")
    return {
        "table": cfg.get("experiment", {}).get("name"),
        "seed": cfg["train"]["seed"],
        "loss": loss_class.__name__,
        "fl_star": issubclass(loss_class, FocalLossStar),
        "alpha": loss.get("alpha"),
        "gamma": loss.get("gamma"),
        "beta": loss.get("beta"),
        "criterion": criterion_class.__name__,
        "ohem": issubclass(criterion_class, OHEMCriterion),
        "ohem_batch": criterion.get("batch_size_per_image"),
        "ohem_nms": criterion.get("nms_thresh"),
        "ohem_fg_fraction": criterion.get("fg_fraction"),
        "num_scales": len(anchors.get("scales", DEFAULT_SCALES)),
        "num_ratios": len(anchors["ratios"]),
        "prior_prob": cfg["model"]["head"].get("prior_prob"),
        "data": _dataset(cfg),
        "max_iter": cfg["train"].get("max_iter"),
    }


def _dataset(cfg: dict[str, Any]) -> str | None:
    """The run's dataset: ``data.root``, else the validation annotation file, else None."""
    data = cfg.get("data") or {}
    return data.get("root") or (data.get("val") or {}).get("ann_file")


def load_run(run_dir: Path) -> Run:
    """Read ``run_dir/config.yaml`` and, if present, ``run_dir/metrics.json``."""
    config_path = run_dir / "config.yaml"
    try:
        cfg = OmegaConf.to_container(OmegaConf.load(config_path), resolve=True)
        params = run_params(cfg)  # type: ignore[arg-type]
    except (KeyError, TypeError, AttributeError) as e:
        raise ReportError(f"{config_path}: not a training config ({e!r} is missing)") from None
    except ReportError as e:
        raise ReportError(f"{config_path}: {e}") from None
    except OSError as e:  # e.g. a linked-in run whose target is gone
        raise ReportError(f"{config_path}: cannot be read ({e.strerror})") from None
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        return Run(run_dir, params, None, "missing")
    try:
        raw = json.loads(metrics_path.read_text())
    except json.JSONDecodeError as e:
        raise ReportError(f"{metrics_path}: invalid JSON ({e})") from None
    if raw.get("diverged"):
        return Run(run_dir, params, None, "diverged")
    absent = [m for m in METRICS if not isinstance(raw.get(m), (int, float))]
    if absent:
        raise ReportError(f"{metrics_path}: no numeric {', '.join(absent)}")
    return Run(run_dir, params, {m: float(raw[m]) for m in METRICS}, "finished")


def find_runs(runs_dir: str | Path) -> list[Run]:
    """Every run under ``runs_dir`` (any depth) whose config names an experiment, by path.

    Hydra's own unresolved copy (``.hydra/config.yaml``) is not a run.
    """
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise ReportError(f"{runs_dir}: no such directory")
    runs = [load_run(path) for path in run_folders(runs_dir)]
    return [r for r in runs if r.params["table"] is not None]


def run_folders(runs_dir: Path) -> list[Path]:
    """The folders under ``runs_dir`` that hold a ``config.yaml``, sorted, following symbolic
    links (runs gathered from several machines are often linked in, not copied); a folder
    reached twice, through a link or a link loop, is listed once (under its first name)."""
    found, seen = [], set()
    for folder, subfolders, files in os.walk(runs_dir, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders.clear()
            continue
        seen.add(real)
        subfolders[:] = sorted(name for name in subfolders if name != ".hydra")
        if "config.yaml" in files:
            found.append(Path(folder))
    return sorted(found)


def num(value: Any) -> str:
    """A setting as a table cell: ``none``, or the shortest float spelling."""
    if value is None:
        return "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def loss_name(p: dict[str, Any]) -> str:
    """A run's loss in words: ``CE α=0.25``, ``FL γ=2 α=0.25``, ``FL* γ=2 β=1``."""
    if p["fl_star"]:
        return f"FL* γ={num(p['gamma'])} β={num(p['beta'])}"
    name = "CE" if not p["gamma"] else f"FL γ={num(p['gamma'])}"
    return f"{name} α={num(p['alpha'])}"


@dataclass
class Row:
    """One setting of a table and its runs (all seeds)."""

    cells: tuple[str, ...]
    runs: list[Run] = field(default_factory=list)

    @property
    def params(self) -> dict[str, Any]:
        return self.runs[0].params

    def values(self, metric: str) -> list[float]:
        return [r.metrics[metric] for r in self.runs if r.metrics is not None]

    def add(self, run: Run, table: str) -> None:
        """Add ``run`` (a seed of this row of ``table``); a :class:`ReportError` naming both
        folders when the row has that seed already."""
        # A row averages seeds; two runs with one seed differ in a setting the table does not
        # show (e.g. a sweep with another schedule or gradient clipping in the same folder).
        twin = next((r for r in self.runs if r.params["seed"] == run.params["seed"]), None)
        if twin is not None:
            raise ReportError(
                f"{twin.path} and {run.path} fill the same row of {table} with the same seed "
                f"{run.params['seed']}: they differ in a setting the table does not show; "
                "report their folders separately"
            )
        self.runs.append(run)


def mean_std(values: Sequence[float]) -> str:
    """``"m"`` for one value, ``"m ± s"`` (sample std) for more, ``"—"`` for none; 1 decimal."""
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def error_bar(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std of ``values`` (std 0 for a single value), for a plot's error bar."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def runs_cell(row: Row) -> str:
    """Finished runs of ``row``, and how many diverged or are missing."""
    counts = {s: sum(r.status == s for r in row.runs) for s in ("finished", "diverged", "missing")}
    extra = [f"+{counts[s]} {s}" for s in ("diverged", "missing") if counts[s]]
    return f"{counts['finished']}" + (f" ({', '.join(extra)})" if extra else "")
