"""Check a COCO-format dataset and list every problem.

    python tools/validate_dataset.py ann_file=FILE.json img_dir=DIR [check_images=true] \
        [strict_boxes=false]

Keys (configs/validate_dataset.yaml): ``ann_file`` and ``img_dir`` the dataset, ``check_images``
opens every image too, ``strict_boxes`` counts box problems as failures. Exit status 1 when there
are structural problems (or box problems with ``strict_boxes=true``).
"""

import sys
from dataclasses import dataclass

from omegaconf import MISSING, DictConfig

from data.validate import validate_coco
from detector.engine.cli import run_tool, typed_config


@dataclass
class Args:
    """The types of configs/validate_dataset.yaml (its values are the defaults)."""

    ann_file: str = MISSING
    img_dir: str = MISSING
    check_images: bool = MISSING
    strict_boxes: bool = MISSING


def run(cfg: DictConfig) -> int:
    args = typed_config(Args, cfg, "validate_dataset")
    report = validate_coco(args.ann_file, args.img_dir, check_images=args.check_images)
    print(report.summary())
    failed = not report.ok or (args.strict_boxes and report.box_problems)
    print("FAILED" if failed else "OK")
    return int(bool(failed))


def main(argv: list[str]) -> int:
    """Exit status of the tool for the command-line arguments ``argv`` (2: a config error)."""
    return run_tool("validate_dataset", run, argv, __doc__, ("ann_file", "img_dir"))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
