"""Image decoding: any common file → RGB ``uint8`` array ``(H, W, 3)``.

OpenCV decodes first: it is faster than PIL on JPEG (see docs/benchmarks.md), applies the EXIF
orientation, replicates grayscale, expands palettes, drops alpha and scales 16-bit samples to
8 bits (``v >> 8``). PIL is the fallback for what OpenCV cannot read (GIF, some TIFFs); there the
same rules are applied by hand, because PIL's own ``convert("RGB")`` clips 16-bit values to 255
instead of scaling them.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)
"""OpenCV ≥ 4.10 decodes straight to RGB, saving a full-image channel swap."""


IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
"""File suffixes taken as images when a folder is listed (tools/infer.py, the benchmarks)."""


def image_files(folder: Path) -> list[Path]:
    """The images directly inside ``folder`` (by :data:`IMAGE_SUFFIXES`), sorted by name."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


class ImageDecodeError(OSError):
    """An image file exists but cannot be decoded by OpenCV or PIL, or is a truncated JPEG."""


_JPEG_START = b"\xff\xd8\xff"
_JPEG_END = b"\xff\xd9"
_JPEG_TAIL = 64 * 1024
"""Bytes read from the end of a JPEG: its end-of-image marker, after any zero padding."""


def jpeg_truncation(path: str | Path) -> str | None:
    """Why the JPEG at ``path`` is truncated, or ``None`` (also for a file that is no JPEG).

    A JPEG ends with the end-of-image marker ``FF D9`` (trailing zero bytes, which some cameras
    and tools pad with, are ignored). A file cut short lacks it, and libjpeg decodes it anyway
    with grey rows, printing "Premature end of JPEG file" without naming the file.
    """
    with open(path, "rb") as handle:
        if handle.read(3) != _JPEG_START:
            return None
        size = handle.seek(0, 2)
        handle.seek(max(3, size - _JPEG_TAIL))
        tail = handle.read().rstrip(b"\x00")
    if tail.endswith(_JPEG_END):
        return None
    return "truncated JPEG (no end-of-image marker FFD9 at its end)"


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
    """PIL image of any mode → RGB ``uint8`` ``(H, W, 3)``, EXIF orientation applied."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grayscale (PIL may widen it to mode "I"): scale to 8 bits as OpenCV does.
        array = np.clip(np.asarray(image, dtype=np.int64), 0, 0xFFFF)
        gray = (array >> 8).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.asarray(image.convert("RGB"))


def read_image(path: str | Path) -> np.ndarray:
    """Decode ``path`` to a contiguous RGB ``uint8`` array of shape ``(H, W, 3)``.

    Handles grayscale, RGBA/LA (alpha dropped), palette, 16-bit and EXIF-rotated images.
    Raises ``FileNotFoundError`` for a missing file and ``ImageDecodeError`` naming the file when
    neither decoder can read it or it is a truncated JPEG (see :func:`jpeg_truncation`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    truncated = jpeg_truncation(path)
    if truncated:
        raise ImageDecodeError(f"cannot decode image {path}: {truncated}")
    if _IMREAD_RGB is not None:
        rgb = cv2.imread(str(path), _IMREAD_RGB)
        if rgb is not None:
            return rgb
    else:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is not None:
            return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    try:
        with Image.open(path) as image:
            return np.ascontiguousarray(_pil_to_rgb(image))
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ImageDecodeError(f"cannot decode image {path}: {error}") from error


def read_image_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` of the image at ``path`` after EXIF orientation, from its header only.

    Raises like :func:`read_image`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ImageDecodeError(f"cannot decode image {path}: {error}") from error
    # EXIF orientations 5..8 transpose the image (90° rotations).
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return height, width
