"""Converters from PASCAL VOC XML and YOLO txt annotations to a COCO instances dict.

Image sizes always come from the image files (header only, EXIF orientation applied), because the
sizes written in VOC XML are often stale. Category ids are ``1..K`` in the order of the class
list; ``file_name`` is relative to the image folder.
"""

from __future__ import annotations

import json
import logging
import random
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from data.decode import read_image_size
from data.validate import DatasetError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def read_class_names(path: str | Path) -> list[str]:
    """Class names, one per non-empty line (a YOLO ``classes.txt`` / ``obj.names``)."""
    names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not names:
        raise DatasetError(f"class names file {path} is empty")
    if len(set(names)) != len(names):
        raise DatasetError(f"class names file {path} repeats a name: {names}")
    return names


def _coco_dict(
    images: list[dict[str, Any]], annotations: list[dict[str, Any]], classes: list[str], source: str
) -> dict[str, Any]:
    categories = [
        {"id": i + 1, "name": name, "supercategory": ""} for i, name in enumerate(classes)
    ]
    return {
        "info": {"description": f"converted by focaldet from {source}"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def _add_box(
    annotations: list[dict[str, Any]],
    image: dict[str, Any],
    category_id: int,
    xyxy: tuple[float, float, float, float],
    iscrowd: bool,
) -> None:
    """Append a COCO annotation for ``xyxy`` clipped to ``image``."""
    x1, y1, x2, y2 = xyxy
    x1, x2 = min(max(x1, 0.0), image["width"]), min(max(x2, 0.0), image["width"])
    y1, y2 = min(max(y1, 0.0), image["height"]), min(max(y2, 0.0), image["height"])
    width, height = x2 - x1, y2 - y1
    annotations.append(
        {
            "id": len(annotations) + 1,
            "image_id": image["id"],
            "category_id": category_id,
            "bbox": [x1, y1, width, height],
            "area": width * height,
            "iscrowd": int(iscrowd),
        }
    )


def _problem_list(header: str, lines: list[str]) -> str:
    """``header`` and one indented line per problem."""
    return "\n".join([header] + [f"  - {line}" for line in lines])


def _text(node: ET.Element, path: str, xml_file: Path) -> str:
    found = node.find(path)
    if found is None or found.text is None:
        raise DatasetError(f"{xml_file}: missing <{path}>")
    return found.text.strip()


def voc_to_coco(
    ann_dir: str | Path,
    img_dir: str | Path,
    classes: list[str] | None = None,
    difficult_as_crowd: bool = True,
) -> dict[str, Any]:
    """COCO dict from the PASCAL VOC XML files in ``ann_dir`` (sorted by name).

    VOC pixel indices are 1-based and inclusive, so ``xmin - 1, ymin - 1, xmax, ymax`` is the box
    in COCO's continuous coordinates (as detectron2's VOC loader). ``classes`` fixes the category
    order (default: sorted names found); an unknown name then is an error. ``difficult`` objects
    become crowd (ignore) regions when ``difficult_as_crowd``, matching VOC's evaluation.
    """
    ann_dir, img_dir = Path(ann_dir), Path(img_dir)
    xml_files = sorted(ann_dir.glob("*.xml"))
    if not xml_files:
        raise DatasetError(f"no .xml files in {ann_dir}")
    parsed = []
    for xml_file in xml_files:
        try:
            root = ET.parse(xml_file).getroot()
        except ET.ParseError as error:
            raise DatasetError(f"{xml_file}: not valid XML ({error})") from error
        objects = []
        for obj in root.findall("object"):
            box = tuple(
                float(_text(obj, f"bndbox/{key}", xml_file))
                for key in ("xmin", "ymin", "xmax", "ymax")
            )
            difficult = obj.find("difficult")
            is_difficult = difficult is not None and (difficult.text or "0").strip() == "1"
            objects.append((_text(obj, "name", xml_file), box, is_difficult))
        parsed.append((xml_file, _text(root, "filename", xml_file), objects))

    names = sorted({name for _, _, objects in parsed for name, _, _ in objects})
    classes = list(classes) if classes is not None else names
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise DatasetError(f"VOC files in {ann_dir} use classes {unknown} not in {classes}")
    cat_ids = {name: i + 1 for i, name in enumerate(classes)}

    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    problems = []
    for xml_file, file_name, objects in parsed:
        try:
            height, width = read_image_size(img_dir / file_name)
        except OSError as error:
            problems.append(f"{xml_file.name}: image {file_name}: {error}")
            continue
        image = {"id": len(images) + 1, "file_name": file_name, "height": height, "width": width}
        images.append(image)
        for name, (x1, y1, x2, y2), is_difficult in objects:
            crowd = is_difficult and difficult_as_crowd
            _add_box(annotations, image, cat_ids[name], (x1 - 1.0, y1 - 1.0, x2, y2), crowd)
    if problems:
        raise DatasetError(_problem_list(f"cannot convert {ann_dir}:", problems))
    return _coco_dict(images, annotations, classes, f"PASCAL VOC {ann_dir}")


def yolo_to_coco(labels_dir: str | Path, img_dir: str | Path, classes: list[str]) -> dict[str, Any]:
    """COCO dict from YOLO label files (``class cx cy w h``, normalised) and their images.

    Every image in ``img_dir`` (sorted) becomes a COCO image; its labels are
    ``labels_dir/<stem>.txt``, and an image without one (or with an empty one) has no objects.
    Class index ``c`` becomes category id ``c + 1``.
    """
    labels_dir, img_dir = Path(labels_dir), Path(img_dir)
    image_files = sorted(
        path for path in img_dir.iterdir() if path.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not image_files:
        raise DatasetError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {img_dir}")
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    problems = []
    for image_file in image_files:
        height, width = read_image_size(image_file)
        image = {
            "id": len(images) + 1,
            "file_name": image_file.name,
            "height": height,
            "width": width,
        }
        images.append(image)
        label_file = labels_dir / f"{image_file.stem}.txt"
        if not label_file.is_file():
            continue
        for line_no, line in enumerate(label_file.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{label_file}:{line_no}"
            fields = line.split()
            try:
                values = [float(v) for v in fields]
            except ValueError:
                values = []
            if len(values) != 5 or not values[0].is_integer():
                problems.append(f"{where}: expected 'class cx cy w h', got {line.strip()!r}")
                continue
            label, cx, cy, w, h = values
            if not 0 <= label < len(classes):
                problems.append(f"{where}: class {int(label)} not in 0..{len(classes) - 1}")
                continue
            if w < 0 or h < 0:
                problems.append(f"{where}: negative box size {w} x {h}")
                continue
            xyxy = ((cx - w / 2) * width, (cy - h / 2) * height)
            xyxy += ((cx + w / 2) * width, (cy + h / 2) * height)
            _add_box(annotations, image, int(label) + 1, xyxy, iscrowd=False)
    if problems:
        raise DatasetError(_problem_list(f"cannot convert {labels_dir}:", problems))
    return _coco_dict(images, annotations, classes, f"YOLO {labels_dir}")


def write_coco(dataset: dict[str, Any], out: str | Path) -> Path:
    """Write ``dataset`` as JSON to ``out`` (parents created); returns the path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dataset))
    logger.info(
        "wrote %s: %d images, %d annotations, %d categories",
        out,
        len(dataset["images"]),
        len(dataset["annotations"]),
        len(dataset["categories"]),
    )
    return out


def split_coco(
    dataset: dict[str, Any], val_fraction: float, seed: int = 0
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a COCO dict by image into ``(train, val)``.

    ``round(val_fraction * N)`` images, chosen by a shuffle seeded with ``seed``, go to val; each
    annotation follows its image. Both halves keep the categories and info, and both keep at
    least one image. Image and annotation ids are unchanged, so either half can be traced back.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be between 0 and 1 (exclusive), not {val_fraction}")
    images = dataset["images"]
    if len(images) < 2:
        raise DatasetError(f"cannot split {len(images)} image(s) into train and val")
    num_val = min(max(round(val_fraction * len(images)), 1), len(images) - 1)
    order = list(range(len(images)))
    random.Random(seed).shuffle(order)
    val_ids = {images[i]["id"] for i in order[:num_val]}

    def part(in_val: bool) -> dict[str, Any]:
        return {
            **dataset,
            "images": [image for image in images if (image["id"] in val_ids) == in_val],
            "annotations": [
                ann for ann in dataset["annotations"] if (ann["image_id"] in val_ids) == in_val
            ],
        }

    return part(False), part(True)
