"""Tabulate loss-comparison sweeps.

    python tools/report.py runs=RUNS_DIR [out=DIR] [meter_images=40]

Keys (configs/report.yaml): ``runs`` the folder of runs, ``out`` the report folder (default
``RUNS_DIR/report``), ``meter_images`` the training images the imbalance meter counts for each
table row's data (0: no meter column). Reads every run under RUNS_DIR (``config.yaml`` +
``metrics.json``, as ``tools/train.py -m +experiment=...`` leaves them), and writes to DIR:
``report.md`` with Table 1a–d, Appendix A and the prior ablation in the paper's layout (mean ± std
over seeds, the paper's AP beside ours, each row's imbalance meter reading), the imbalance
curve (AP against the meter's reading) and the schedule study (AP against iterations), AP plots
as PNG, and TensorBoard HParams under ``DIR/tensorboard``. See docs/reproduction.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig

from detector.engine.cli import run_tool
from detector.paper.report import ReportError, write_report


def run(cfg: DictConfig) -> int:
    runs_dir = Path(str(cfg.runs))
    out_dir = runs_dir / "report" if cfg.out is None else Path(str(cfg.out))
    try:
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
