"""Convert PASCAL VOC XML or YOLO txt annotations to a COCO instances JSON.

    python tools/convert_dataset.py format=voc ann_dir=DIR img_dir=DIR out=FILE.json [classes=NAMES]
    python tools/convert_dataset.py format=yolo labels_dir=DIR img_dir=DIR classes=NAMES \
        out=FILE.json

``classes`` is a file with one class name per line (required for YOLO; for VOC it fixes the
category order, default: sorted names found).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from omegaconf import MISSING, OmegaConf

from data.convert import read_class_names, voc_to_coco, write_coco, yolo_to_coco
from data.validate import DatasetError


@dataclass
class Config:
    format: str = MISSING
    img_dir: str = MISSING
    out: str = MISSING
    ann_dir: str | None = None
    labels_dir: str | None = None
    classes: str | None = None


def main(argv: list[str]) -> int:
    cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.from_cli(argv))
    classes = read_class_names(cfg.classes) if cfg.classes else None
    try:
        if cfg.format == "voc":
            if cfg.ann_dir is None:
                raise DatasetError("format=voc needs ann_dir=DIR (the folder of XML files)")
            dataset = voc_to_coco(cfg.ann_dir, cfg.img_dir, classes)
        elif cfg.format == "yolo":
            if cfg.labels_dir is None or classes is None:
                raise DatasetError("format=yolo needs labels_dir=DIR and classes=NAMES_FILE")
            dataset = yolo_to_coco(cfg.labels_dir, cfg.img_dir, classes)
        else:
            raise DatasetError(f"format must be voc or yolo, not {cfg.format!r}")
    except DatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    write_coco(dataset, cfg.out)
    print(
        f"wrote {cfg.out}: {len(dataset['images'])} images, {len(dataset['annotations'])} boxes, "
        f"{len(dataset['categories'])} categories"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
