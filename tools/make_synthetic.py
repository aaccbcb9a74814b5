"""Write the embedded synthetic COCO dataset.

    python tools/make_synthetic.py out=DIR [seed=0] [num_train=400] [num_val=100] [force=false]

Without ``force`` an existing complete dataset with the same parameters is kept as is.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from omegaconf import MISSING, OmegaConf

from data.synthetic import ensure_synthetic, make_synthetic_coco


@dataclass
class Config:
    out: str = MISSING
    seed: int = 0
    num_train: int = 400
    num_val: int = 100
    force: bool = False


def main(argv: list[str]) -> None:
    cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.from_cli(argv))
    start = time.perf_counter()
    make = make_synthetic_coco if cfg.force else ensure_synthetic
    paths = make(cfg.out, seed=cfg.seed, num_train=cfg.num_train, num_val=cfg.num_val)
    print(f"synthetic dataset ready in {time.perf_counter() - start:.1f} s:")
    for name, path in paths._asdict().items():
        print(f"  {name}: {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
