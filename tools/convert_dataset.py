"""Convert PASCAL VOC XML or YOLO txt annotations to a COCO instances JSON.

    python tools/convert_dataset.py format=voc ann_dir=DIR img_dir=DIR out=FILE.json [classes=NAMES]
    python tools/convert_dataset.py format=yolo labels_dir=DIR img_dir=DIR classes=NAMES \
        out=FILE.json
    python tools/convert_dataset.py ... out=DIR/instances.json val_fraction=0.2 [seed=0]

``classes`` is a file with one class name per line (required for YOLO; for VOC it fixes the
category order, default: sorted names found). With ``val_fraction`` the images are split at
random (seeded) into ``<out>_train.json`` and ``<out>_val.json``, e.g. ``instances_train.json`` and
``instances_val.json`` for ``out=instances.json``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from omegaconf import MISSING, OmegaConf

from data.convert import read_class_names, split_coco, voc_to_coco, write_coco, yolo_to_coco
from data.validate import DatasetError


@dataclass
class Config:
    format: str = MISSING
    img_dir: str = MISSING
    out: str = MISSING
    ann_dir: str | None = None
    labels_dir: str | None = None
    classes: str | None = None
    val_fraction: float | None = None
    seed: int = 0


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
        if cfg.val_fraction is None:
            outputs = {Path(cfg.out): dataset}
        else:
            out = Path(cfg.out)
            train, val = split_coco(dataset, cfg.val_fraction, cfg.seed)
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


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
