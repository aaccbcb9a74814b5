"""Write the embedded synthetic COCO dataset.

    python tools/make_synthetic.py out=DIR [seed=0] [num_train=400] [num_val=100] [force=false]

Keys (configs/make_synthetic.yaml): ``out`` the dataset folder, ``seed``, ``num_train`` and
``num_val`` images; without ``force`` an existing complete dataset with the same parameters is
kept as is.
"""

import sys
import time
from dataclasses import dataclass

from omegaconf import MISSING, DictConfig

from data.synthetic import ensure_synthetic, make_synthetic_coco
from detector.engine.cli import run_tool, typed_config


@dataclass
class Args:
    """The types of configs/make_synthetic.yaml (its values are the defaults)."""

    out: str = MISSING
    seed: int = MISSING
    num_train: int = MISSING
    num_val: int = MISSING
    force: bool = MISSING


def run(cfg: DictConfig) -> int:
    args = typed_config(Args, cfg, "make_synthetic")
    start = time.perf_counter()
    make = make_synthetic_coco if args.force else ensure_synthetic
    paths = make(args.out, seed=args.seed, num_train=args.num_train, num_val=args.num_val)
    print(f"synthetic dataset ready in {time.perf_counter() - start:.1f} s:")
    for name, path in paths._asdict().items():
        print(f"  {name}: {path}")
    return 0


def main(argv: list[str]) -> int:
    """Exit status of the tool for the command-line arguments ``argv`` (2: a config error)."""
    return run_tool("make_synthetic", run, argv, __doc__, ("out",))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
