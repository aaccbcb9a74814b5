"""COCO-format detection dataset (any COCO instances JSON + an image folder)."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO

from data.compact import file_key, headers_cache_file, load_compact
from data.decode import read_image
from data.image_check import check_image_headers
from data.validate import BAD_BOX_POLICIES, BadBoxPolicy, DatasetError, load_coco_json

BAD_IMAGE_POLICIES = ("error", "skip")
"""``data.bad_image_policy``: stop on an image failing the check at start, or train without it."""

LISTED_IMAGES = 3
"""Bad images named in the one-line error (tools/validate_dataset.py lists them all)."""

logger = logging.getLogger(__name__)


class CocoDetection(torch.utils.data.Dataset):
    """Images and boxes of a COCO instances file.

    COCO's sparse category ids are mapped to contiguous labels ``0..K-1`` in ascending id order
    (``cat_id_to_label``, ``label_to_cat_id``, ``classes``). Images without annotations are kept:
    they are the pure negatives the focal loss is about. Crowd annotations are kept with
    ``iscrowd=True`` (ignore regions for the matcher). Boxes are clipped to the image; boxes under
    1 px after clipping or of negative size are dropped and counted in ``stats``; how loudly is
    ``bad_box_policy``: ``"skip"`` (count only), ``"warn"`` (log them) or ``"error"`` (raise).
    Structural problems (see :mod:`data.validate`) raise :class:`DatasetError` at construction.

    With ``check_images`` every image's header is checked at construction (exists, decodable
    header, the JSON's size, a JPEG's end-of-image marker; :mod:`data.image_check`, cached by file
    size and mtime). ``bad_image_policy``: ``"error"`` raises one line naming the first bad files
    and their count; ``"skip"`` leaves those images out and counts them in
    ``stats["images_skipped"]``.

    What training reads is held in a few flat arrays (:class:`data.compact.CompactAnnotations`),
    cached beside the annotation file (``cache``, ``cache_dir``: see
    :func:`data.compact.load_compact`), so a DataLoader worker receives tens of MB, not the JSON.
    The pycocotools ground truth the evaluator scores against is :attr:`coco_gt`, loaded on first
    use by the process that scores.

    ``transforms`` is called as ``transforms(image=HWC uint8, bboxes=(M, 4) xyxy, labels=(M,),
    iscrowd=(M,))`` and returns the same keys (an albumentations ``Compose`` built by
    :func:`data.transforms.build_transforms`).

    ``__getitem__(i)`` returns ``(image, target)``: ``image`` uint8 ``(3, H, W)`` RGB, ``target``
    with ``boxes`` float32 ``(M, 4)`` xyxy in input pixels, ``labels`` int64 ``(M,)``,
    ``iscrowd`` bool ``(M,)``, ``image_id`` int, ``orig_size`` and ``size`` ``(h, w)`` ints.
    """

    def __init__(
        self,
        ann_file: str | Path,
        img_dir: str | Path,
        transforms: Callable[..., dict[str, Any]] | None = None,
        bad_box_policy: BadBoxPolicy = "skip",
        cache: bool = True,
        cache_dir: str | Path | None = None,
        check_images: bool = False,
        bad_image_policy: str = "error",
    ) -> None:
        if bad_box_policy not in BAD_BOX_POLICIES:
            raise ValueError(
                f"bad_box_policy must be one of {BAD_BOX_POLICIES}, not {bad_box_policy!r}"
            )
        if bad_image_policy not in BAD_IMAGE_POLICIES:
            raise ValueError(
                f"bad_image_policy must be one of {BAD_IMAGE_POLICIES}, not {bad_image_policy!r}"
            )
        self.ann_file = Path(ann_file)
        self.img_dir = Path(img_dir)
        self.transforms = transforms
        self._data = load_compact(self.ann_file, self.img_dir, cache=cache, cache_dir=cache_dir)
        self._ann_file_key = file_key(self.ann_file)
        self._coco_gt: COCO | None = None
        self.classes: list[dict[str, Any]] = self._data.classes()
        self.label_to_cat_id: list[int] = [category["id"] for category in self.classes]
        self.cat_id_to_label: dict[int, int] = {
            cat_id: label for label, cat_id in enumerate(self.label_to_cat_id)
        }
        self.stats: dict[str, int] = self._data.stats_dict()
        # The policy is applied on every construction, from the cache too.
        report = self._data.box_report()
        if report and bad_box_policy == "error":
            raise DatasetError(f"bad boxes in {self.ann_file}:\n{report}")
        if report and bad_box_policy == "warn":
            logger.warning("bad boxes in %s:\n%s", self.ann_file, report)
        if check_images:
            self._check_images(bad_image_policy, headers_cache_file(
                self.ann_file, self.img_dir, cache_dir) if cache else None)  # fmt: skip

    def _check_images(self, policy: str, cache_file: Path | None) -> None:
        """Check every image header; stop on the bad ones or leave them out (``policy``)."""
        data = self._data
        paths = [self.img_dir / data.file_name(i) for i in range(len(data))]
        bad = check_image_headers(paths, data.sizes, cache_file, data.image_list_key())
        if policy == "skip":
            self.stats["images_skipped"] = len(bad)
        if not bad:
            return
        named = "; ".join(
            f"image {data.image_ids[i]} ({data.file_name(i)}): {message}"
            for i, (_, message) in list(bad.items())[:LISTED_IMAGES]
        )
        more = f"; and {len(bad) - LISTED_IMAGES} more" if len(bad) > LISTED_IMAGES else ""
        summary = f"{len(bad)} of the {len(data)} images of {self.ann_file} fail the check: "
        if policy == "error":
            raise DatasetError(
                f"{summary}{named}{more} (tools/validate_dataset.py lists them all; "
                "data.bad_image_policy=skip trains without them)"
            )
        if len(bad) == len(data):
            raise DatasetError(f"{summary}{named}{more}: no image is left to use")
        logger.warning("skipping them: %s%s%s", summary, named, more)
        self._data = data.without(bad)

    @property
    def num_classes(self) -> int:
        """K, the number of foreground classes."""
        return len(self.classes)

    @property
    def coco_gt(self) -> COCO:
        """The pycocotools ground truth (segmentations left out), for scoring bbox results.

        Loaded from the annotation file on first use, so only the process that scores pays for
        it; it is never pickled into DataLoader workers. A file changed since the dataset was
        built raises :class:`DatasetError` instead of scoring against other boxes.
        """
        if self._coco_gt is None:
            if file_key(self.ann_file) != self._ann_file_key:
                raise DatasetError(f"{self.ann_file} changed since the dataset was built")
            coco = COCO()
            coco.dataset = load_coco_json(self.ann_file, drop_keys=("segmentation",))
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
                coco.createIndex()
            self._coco_gt = coco
        return self._coco_gt

    def __getstate__(self) -> dict[str, Any]:
        """What a worker receives: the arrays, the class lists and the transforms, never the
        pycocotools ground truth."""
        return {**self.__dict__, "_coco_gt": None}

    def __len__(self) -> int:
        return len(self._data)

    def image_id(self, index: int) -> int:
        """COCO id of image ``index``."""
        return int(self._data.image_ids[index])

    def image_size(self, index: int) -> tuple[int, int]:
        """``(height, width)`` of image ``index`` from the JSON."""
        height, width = self._data.sizes[index]
        return int(height), int(width)

    def file_name(self, index: int) -> str:
        """File name of image ``index`` (relative to ``img_dir``) as the JSON spells it."""
        return self._data.file_name(index)

    def aspect_ratios(self) -> list[float]:
        """Height / width of every image from the JSON (no decoding), for batch grouping."""
        return (self._data.sizes[:, 0] / self._data.sizes[:, 1]).tolist()

    def annotations(self, index: int) -> dict[str, np.ndarray]:
        """Untransformed ``boxes`` float32 ``(M, 4)`` xyxy, ``labels`` int64 ``(M,)`` and
        ``iscrowd`` bool ``(M,)`` of image ``index`` (no image read)."""
        boxes, labels, iscrowd = self._data.annotations(index)
        return {"boxes": boxes, "labels": labels, "iscrowd": iscrowd}

    def load(self, index: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Decoded image ``(H, W, 3)`` uint8 and its untransformed boxes, labels, crowd flags."""
        path = self.img_dir / self.file_name(index)
        image = read_image(path)
        height, width = self.image_size(index)
        if image.shape[:2] != (height, width):
            raise DatasetError(
                f"image {self.image_id(index)} ({path}) decodes to {image.shape[1]}x"
                f"{image.shape[0]} (w x h) but the JSON says {width}x{height}"
            )
        return image, self.annotations(index)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        image, annotations = self.load(index)
        boxes, labels, iscrowd = annotations["boxes"], annotations["labels"], annotations["iscrowd"]
        if self.transforms is not None:
            out = self.transforms(image=image, bboxes=boxes, labels=labels, iscrowd=iscrowd)
            image = out["image"]
            boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
            labels = np.asarray(out["labels"], dtype=np.int64)
            iscrowd = np.asarray(out["iscrowd"], dtype=bool)
        target = {
            "boxes": torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32)),
            "labels": torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)),
            "iscrowd": torch.from_numpy(np.ascontiguousarray(iscrowd, dtype=bool)),
            "image_id": self.image_id(index),
            "orig_size": self.image_size(index),
            "size": (int(image.shape[0]), int(image.shape[1])),
        }
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        return tensor, target
