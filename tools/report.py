"""Tabulate loss-comparison sweeps: ``python tools/report.py RUNS_DIR [out=DIR]``.

Reads every run under RUNS_DIR (``config.yaml`` + ``metrics.json``, as ``tools/train.py -m
+experiment=...`` leaves them), and writes to DIR (default ``RUNS_DIR/report``): ``report.md``
with Table 1a–d, Appendix A and the prior ablation in the paper's layout (mean ± std over seeds,
the paper's AP beside ours), AP plots as PNG, and TensorBoard HParams under ``DIR/tensorboard``.
See docs/reproduction.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

from detector.paper.report import ReportError, write_report

USAGE = "usage: python tools/report.py RUNS_DIR [out=DIR]"


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip() + "\n\n" + USAGE)
        return 0 if argv else 2
    runs_dir, options = Path(argv[0]), argv[1:]
    out_dir = runs_dir / "report"
    for option in options:
        key, sep, value = option.partition("=")
        if key != "out" or not sep or not value:
            print(f"focaldet: unknown argument {option!r}; {USAGE}", file=sys.stderr)
            return 2
        out_dir = Path(value)
    try:
        path = write_report(runs_dir, out_dir)
    except ReportError as e:
        print(f"focaldet: {e}", file=sys.stderr)
        return 1
    print(path.read_text(), end="")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
