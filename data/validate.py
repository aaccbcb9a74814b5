"""Checks of a COCO-format dataset before training.

Two kinds of problem:

- **structural** (the JSON is not COCO or lists no image or category, ids are duplicated or
  unknown, images are missing, unreadable, truncated, of another size than the JSON says, or
  outside the image folder): training cannot be trusted, so they stop it with one
  :class:`DatasetError` listing them all;
- **per box** (negative size, outside the image, degenerate after clipping): the box is dropped
  and counted, and a policy says whether that is silent (``"skip"``), logged (``"warn"``) or
  fatal (``"error"``).

:func:`check_structure` runs on the loaded JSON (no image reads) and is what the dataset calls;
:func:`validate_coco` adds the box and image checks and returns a full :class:`Report`.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from data.image_check import check_image_headers

logger = logging.getLogger(__name__)

BadBoxPolicy = Literal["skip", "warn", "error"]
BAD_BOX_POLICIES: tuple[str, ...] = ("skip", "warn", "error")

MIN_BOX_SIDE = 1.0
"""Boxes narrower or shorter than this (pixels, after clipping) are degenerate and dropped."""

OUTSIDE_TOLERANCE = 1.0
"""Boxes may exceed the image by this many pixels (float rounding in COCO's own files) silently."""

MAX_LISTED = 50
"""Problems listed in a :class:`DatasetError` message; the report holds all of them."""


class DatasetError(ValueError):
    """The dataset cannot be used as it is; the message lists every problem found."""


@dataclass(frozen=True)
class Problem:
    """One problem found in a dataset.

    ``where`` names the file, image or annotation (``"image 3 (a.jpg)"``,
    ``"annotation 17 of image 3 (a.jpg)"``); ``structural`` tells the two kinds apart.
    """

    kind: str
    where: str
    message: str
    structural: bool

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def format_problems(header: str, problems: list[Problem], limit: int = MAX_LISTED) -> str:
    """``header`` followed by one line per problem, at most ``limit`` of them."""
    lines = [header] + [f"  - {problem}" for problem in problems[:limit]]
    if len(problems) > limit:
        lines.append(
            f"  ... and {len(problems) - limit} more (tools/validate_dataset.py lists them all)"
        )
    return "\n".join(lines)


@dataclass
class Report:
    """Result of :func:`validate_coco`: counts and every problem found."""

    ann_file: str
    img_dir: str
    num_images: int = 0
    num_annotations: int = 0
    num_categories: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def structural(self) -> list[Problem]:
        """Problems that stop training."""
        return [problem for problem in self.problems if problem.structural]

    @property
    def box_problems(self) -> list[Problem]:
        """Per-box problems, handled by the bad-box policy."""
        return [problem for problem in self.problems if not problem.structural]

    @property
    def ok(self) -> bool:
        """True when there is no structural problem (per-box problems are allowed)."""
        return not self.structural

    def summary(self) -> str:
        """Human-readable report listing every problem."""
        counts = Counter(problem.kind for problem in self.problems)
        head = (
            f"{self.ann_file} ({self.img_dir}): {self.num_images} images, "
            f"{self.num_annotations} annotations, {self.num_categories} categories; "
            f"{len(self.structural)} structural problems, {len(self.box_problems)} box problems"
        )
        lines = [head]
        if counts:
            lines.append("  by kind: " + ", ".join(f"{k}={n}" for k, n in sorted(counts.items())))
        lines += [f"  - {problem}" for problem in self.problems]
        return "\n".join(lines)

    def raise_if_structural(self) -> None:
        """Raise :class:`DatasetError` listing the structural problems, if any."""
        if self.structural:
            raise DatasetError(
                format_problems(
                    f"dataset {self.ann_file} with images in {self.img_dir} is not usable:",
                    self.structural,
                )
            )


def load_coco_json(ann_file: str | Path, drop_keys: Collection[str] = ()) -> dict[str, Any]:
    """Read ``ann_file`` as JSON; a missing or unparsable file raises :class:`DatasetError`.

    Keys in ``drop_keys`` are removed from every object as it is parsed, so that e.g. COCO's
    polygons (most of the file) are never all in memory at once.
    """
    ann_file = Path(ann_file)
    if not ann_file.is_file():
        raise DatasetError(f"annotation file not found: {ann_file}")
    hook = None
    if drop_keys:
        drop = frozenset(drop_keys)
        hook = lambda pairs: {key: value for key, value in pairs if key not in drop}
    try:
        with ann_file.open("rb") as handle:
            return json.load(handle, object_pairs_hook=hook)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"annotation file {ann_file} is not valid JSON: {error}") from error


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _image_name(image: dict[str, Any]) -> str:
    return f"image {image.get('id')} ({image.get('file_name')})"


ProblemSink = Callable[[str, str, str], None]
"""``report(kind, where, message)``: records one structural problem."""


def check_structure(dataset: Any, img_dir: str | Path) -> list[Problem]:
    """Structural problems of a loaded COCO instances dict; reads no image.

    Checks: top-level keys and types, at least one image and one category, required fields of
    images, annotations and categories,
    duplicate image, annotation and category ids, annotations naming unknown images or
    categories, and file names that resolve outside ``img_dir``.
    """

    def structural(kind: str, where: str, message: str) -> None:
        problems.append(Problem(kind, where, message, structural=True))

    problems: list[Problem] = []
    if not isinstance(dataset, dict):
        structural("not_coco", "file", f"top level is a {type(dataset).__name__}, not an object")
        return problems
    for key in ("images", "annotations", "categories"):
        if not isinstance(dataset.get(key), list):
            structural("not_coco", "file", f'missing list "{key}" (not a COCO instances file)')
    if problems:
        return problems
    # Nothing to train or score on: refused here rather than found at the first batch or as an
    # AP of -1 at the end.
    for key in ("images", "categories"):
        if not dataset[key]:
            structural(f"no_{key}", "file", f'"{key}" is empty (the dataset has no {key})')
    image_ids = _check_images(dataset["images"], Path(img_dir).resolve(), structural)
    category_ids = _check_categories(dataset["categories"], structural)
    _check_annotations(dataset["annotations"], image_ids, category_ids, structural)
    return problems


def _check_images(images: list[Any], root: Path, structural: ProblemSink) -> Counter[Any]:
    """Fields, sizes and file names of ``images``; returns how often each id occurs."""
    image_ids: Counter[Any] = Counter()
    for index, image in enumerate(images):
        if not isinstance(image, dict):
            structural("not_coco", f"images[{index}]", "is not an object")
            continue
        missing = [key for key in ("id", "file_name", "width", "height") if key not in image]
        if missing:
            structural("not_coco", f"images[{index}]", f"missing {', '.join(missing)}")
            continue
        where = _image_name(image)
        if not _is_int(image["id"]):
            structural("not_coco", where, f"id {image['id']!r} is not an integer")
        image_ids[image["id"]] += 1
        if (
            not (_is_int(image["width"]) and _is_int(image["height"]))
            or min(image["width"], image["height"]) <= 0
        ):
            structural(
                "bad_image_size", where, f"width/height {image['width']}x{image['height']} invalid"
            )
        file_name = image["file_name"]
        if not isinstance(file_name, str) or not file_name:
            structural("not_coco", where, "file_name is not a non-empty string")
        elif not (root / file_name).resolve().is_relative_to(root):
            structural("outside_img_dir", where, f"file name resolves outside {root}")
    _duplicates(image_ids, "image", structural)
    return image_ids


def _check_categories(categories: list[Any], structural: ProblemSink) -> Counter[Any]:
    """Ids and names of ``categories``; returns how often each id occurs."""
    category_ids: Counter[Any] = Counter()
    for index, category in enumerate(categories):
        if not isinstance(category, dict) or not _is_int(category.get("id")):
            structural("not_coco", f"categories[{index}]", "needs an integer id")
            continue
        if not isinstance(category.get("name"), str):
            structural("not_coco", f"category {category['id']}", "needs a string name")
        category_ids[category["id"]] += 1
    _duplicates(category_ids, "category", structural)
    return category_ids


def _check_annotations(
    annotations: list[Any],
    image_ids: Counter[Any],
    category_ids: Counter[Any],
    structural: ProblemSink,
) -> None:
    """Fields, references and box shapes of ``annotations``, and duplicate ids."""
    annotation_ids: Counter[Any] = Counter()
    for index, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            structural("not_coco", f"annotations[{index}]", "is not an object")
            continue
        missing = [key for key in ("id", "image_id", "category_id", "bbox") if key not in ann]
        where = f"annotation {ann.get('id', f'#{index}')}"
        if missing:
            structural("not_coco", where, f"missing {', '.join(missing)}")
            continue
        annotation_ids[ann["id"]] += 1
        if ann["image_id"] not in image_ids:
            structural("unknown_image_id", where, f"image_id {ann['image_id']} is not an image")
        if ann["category_id"] not in category_ids:
            structural(
                "unknown_category_id", where, f"category_id {ann['category_id']} is not a category"
            )
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(_is_number, bbox))):
            structural("bad_bbox", where, f"bbox {bbox!r} is not 4 finite numbers [x, y, w, h]")
    _duplicates(annotation_ids, "annotation", structural)


def _duplicates(counts: Counter[Any], noun: str, report: ProblemSink) -> None:
    """Report each id of ``counts`` seen more than once, as ``duplicate_<noun>_id``."""
    for id_, count in counts.items():
        if count > 1:
            report(f"duplicate_{noun}_id", f"{noun} id {id_}", f"appears {count} times")


def sanitize_box(
    bbox: list[float], width: int, height: int, where: str
) -> tuple[np.ndarray | None, Problem | None]:
    """COCO ``[x, y, w, h]`` → clipped ``xyxy`` float32 ``(4,)``, or ``None`` when unusable.

    Returns the box (``None`` when it must be dropped) and the per-box problem found, if any:
    negative size, more than ``OUTSIDE_TOLERANCE`` px outside the ``width`` × ``height`` image
    (clipped; dropped when nothing is left), or a side under ``MIN_BOX_SIDE`` px after clipping.
    """
    x, y, w, h = (float(v) for v in bbox)
    if w < 0 or h < 0:
        return None, Problem("negative_size", where, f"bbox {bbox} has negative size", False)
    x1, y1, x2, y2 = x, y, x + w, y + h
    problem = None
    tol = OUTSIDE_TOLERANCE
    if x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol:
        problem = Problem(
            "outside_image", where, f"bbox {bbox} exceeds the {width}x{height} image", False
        )
    x1, x2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
    y1, y2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
    if x2 - x1 < MIN_BOX_SIDE or y2 - y1 < MIN_BOX_SIDE:
        reason = "outside the image" if problem else f"under {MIN_BOX_SIDE:g} px"
        message = f"bbox {bbox} is degenerate after clipping ({reason}); dropped"
        return None, Problem("degenerate", where, message, False)
    return np.array([x1, y1, x2, y2], dtype=np.float32), problem


def check_boxes(dataset: dict[str, Any]) -> list[Problem]:
    """Per-box problems of a structurally valid COCO dict (see :func:`sanitize_box`)."""
    images = {image["id"]: image for image in dataset["images"]}
    problems = []
    for ann in dataset["annotations"]:
        image = images[ann["image_id"]]
        where = f"annotation {ann['id']} of {_image_name(image)}"
        _, problem = sanitize_box(ann["bbox"], image["width"], image["height"], where)
        if problem is not None:
            problems.append(problem)
    return problems


def check_image_files(dataset: dict[str, Any], img_dir: str | Path) -> list[Problem]:
    """Missing, unreadable, truncated (JPEG) and wrongly sized images, from each image's header
    and a JPEG's last bytes (:func:`data.image_check.check_image_headers`, in parallel)."""
    root = Path(img_dir).resolve()
    # Names resolving outside img_dir are already reported by check_structure.
    images = [
        image
        for image in dataset["images"]
        if (root / image["file_name"]).resolve().is_relative_to(root)
    ]
    sizes = np.array([(i["height"], i["width"]) for i in images], np.int64).reshape(-1, 2)
    found = check_image_headers([root / image["file_name"] for image in images], sizes)
    return [
        Problem(kind, _image_name(images[index]), message, True)
        for index, (kind, message) in found.items()
    ]


def validate_coco(ann_file: str | Path, img_dir: str | Path, check_images: bool = True) -> Report:
    """Check a COCO instances file and its image folder; returns a :class:`Report`.

    With ``check_images`` every image header is read (missing, unreadable, size mismatch).
    Never raises for problems in the data; call ``report.raise_if_structural()`` to stop on them.
    """
    report = Report(ann_file=str(ann_file), img_dir=str(img_dir))
    try:
        dataset = load_coco_json(ann_file)
    except DatasetError as error:
        report.problems.append(Problem("not_coco", str(ann_file), str(error), True))
        return report
    report.problems += check_structure(dataset, img_dir)
    if isinstance(dataset, dict):
        for key in ("images", "annotations", "categories"):
            value = dataset.get(key)
            setattr(report, f"num_{key}", len(value) if isinstance(value, list) else 0)
    if report.structural:
        return report
    report.problems += check_boxes(dataset)
    if check_images:
        report.problems += check_image_files(dataset, img_dir)
    return report
