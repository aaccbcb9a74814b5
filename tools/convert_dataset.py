"""Convert PASCAL VOC XML or YOLO txt annotations to a COCO instances JSON.

    python tools/convert_dataset.py format=voc ann_dir=DIR img_dir=DIR out=FILE.json [classes=NAMES]
    python tools/convert_dataset.py format=yolo labels_dir=DIR img_dir=DIR classes=NAMES \
        out=FILE.json
    python tools/convert_dataset.py ... out=DIR/instances.json val_fraction=0.2 [seed=0]

Keys (configs/convert_dataset.yaml): ``format`` voc or yolo; ``ann_dir`` (VOC XML) or
``labels_dir`` (YOLO txt); ``img_dir``; ``out``; ``classes`` a file with one class name per line
(required for YOLO; for VOC it fixes the category order, default: sorted names found). With
``val_fraction`` the images are split at random (``seed``) into ``<out>_train.json`` and
``<out>_val.json``, e.g. ``instances_train.json`` and ``instances_val.json`` for
``out=instances.json``.
"""

import sys
from dataclasses import dataclass
from pathlib import Path

from omegaconf import MISSING, DictConfig

from data.convert import read_class_names, split_coco, voc_to_coco, write_coco, yolo_to_coco
from data.validate import DatasetError
from detector.engine.cli import run_tool, typed_config
from detector.engine.config import ConfigError


@dataclass
class Args:
    """The types of configs/convert_dataset.yaml (its values are the defaults)."""

    format: str = MISSING
    img_dir: str = MISSING
    out: str = MISSING
    ann_dir: str | None = MISSING
    labels_dir: str | None = MISSING
    classes: str | None = MISSING
    val_fraction: float | None = MISSING
    seed: int = MISSING


def convert(args: Args) -> dict:
    """The COCO dict of the annotations ``args`` names (``DatasetError`` on bad input)."""
    classes = read_class_names(args.classes) if args.classes else None
    if args.format == "voc":
        if args.ann_dir is None:
            raise ConfigError("format=voc needs ann_dir=DIR (the folder of XML files)")
        return voc_to_coco(args.ann_dir, args.img_dir, classes)
    if args.format == "yolo":
        if args.labels_dir is None or classes is None:
            raise ConfigError("format=yolo needs labels_dir=DIR and classes=NAMES_FILE")
        return yolo_to_coco(args.labels_dir, args.img_dir, classes)
    raise ConfigError(f"format must be voc or yolo, not {args.format!r}")


def run(cfg: DictConfig) -> int:
    args = typed_config(Args, cfg, "convert_dataset")
    out = Path(args.out)
    try:
        dataset = convert(args)
        if args.val_fraction is None:
            outputs = {out: dataset}
        else:
            train, val = split_coco(dataset, args.val_fraction, args.seed)
            outputs = {
                out.with_name(f"{out.stem}_train{out.suffix}"): train,
                out.with_name(f"{out.stem}_val{out.suffix}"): val,
            }
    except DatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for path, part in outputs.items():
        write_coco(part, path)
        print(
            f"wrote {path}: {len(part['images'])} images, {len(part['annotations'])} boxes, "
            f"{len(part['categories'])} categories"
        )
    return 0


def main(argv: list[str]) -> int:
    """Exit status of the tool for the command-line arguments ``argv`` (2: a config error)."""
    keys = ("img_dir", "out", "ann_dir", "labels_dir", "classes")
    return run_tool("convert_dataset", run, argv, __doc__, keys)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
