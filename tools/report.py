"""Tabulate loss-comparison sweeps.

    python tools/report.py runs=RUNS_DIR [out=DIR] [meter_images=40]
    python tools/report.py curve_csv=[A.csv,B.csv] out=DIR

Keys (configs/report.yaml): ``runs`` the folder of runs, ``out`` the report folder (default
``RUNS_DIR/report``), ``meter_images`` the training images the imbalance meter counts for each
table row's data (0: no meter column). Reads every run under RUNS_DIR (``config.yaml`` +
``metrics.json``, as ``tools/train.py -m +experiment=...`` leaves them), and writes to DIR:
``report.md`` with Table 1a–d, Appendix A and the prior ablation in the paper's layout (mean ± std
over seeds, the paper's AP beside ours, each row's imbalance meter reading), the imbalance
curve (AP against the meter's reading) and the schedule study (AP against iterations), AP plots
as PNG, every run of the curve as ``imbalance_curve_runs.csv``, and TensorBoard HParams under
``DIR/tensorboard``. With ``curve_csv`` instead of ``runs``, draws the imbalance curve (table and
plot) from such runs tables alone, their runs pooled (seeds trained on other machines, say). See
docs/reproduction.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig

from detector.engine.cli import run_tool
from detector.engine.config import ConfigError
from detector.paper.curve import curve_report
from detector.paper.report import ReportError, write_report


def run(cfg: DictConfig) -> int:
    value = cfg.curve_csv  # a list, or one file without brackets
    tables = [Path(str(p)) for p in ([value] if isinstance(value, str) else value or [])]
    if (cfg.runs is None) == (not tables):
        raise ConfigError("give either runs=DIR (training runs) or curve_csv=[FILE,...] "
                          "(runs tables of the imbalance curve)")  # fmt: skip
    try:
        if tables:
            if cfg.out is None:
                raise ConfigError("curve_csv needs out=DIR, the folder for the report and plot")
            path = curve_report(tables, Path(str(cfg.out)))
        else:
            runs_dir = Path(str(cfg.runs))
            out_dir = runs_dir / "report" if cfg.out is None else Path(str(cfg.out))
            path = write_report(runs_dir, out_dir, cfg.meter_images)
    except ReportError as e:
        print(f"focaldet: {e}", file=sys.stderr)
        return 1
    print(path.read_text(), end="")
    print(f"wrote {path}")
    return 0


def main(argv: list[str]) -> int:
    """Exit status of the tool for the command-line arguments ``argv`` (2: a config error)."""
    return run_tool("report", run, argv, __doc__, ("runs", "out"))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
