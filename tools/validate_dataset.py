"""Check a COCO-format dataset and list every problem.

    python tools/validate_dataset.py ann_file=FILE.json img_dir=DIR [check_images=true] \
        [strict_boxes=false]

Exit status 1 when there are structural problems (or box problems with ``strict_boxes=true``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from omegaconf import MISSING, OmegaConf

from data.validate import validate_coco


@dataclass
class Config:
    ann_file: str = MISSING
    img_dir: str = MISSING
    check_images: bool = True
    strict_boxes: bool = False


def main(argv: list[str]) -> int:
    cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.from_cli(argv))
    report = validate_coco(cfg.ann_file, cfg.img_dir, check_images=cfg.check_images)
    print(report.summary())
    failed = not report.ok or (cfg.strict_boxes and report.box_problems)
    print("FAILED" if failed else "OK")
    return int(bool(failed))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
