"""Where the datasets shared beside a checkout are: ``$FOCALDET_SHARED``, by default ``../shared``
next to the repository. The tests, the benchmarks and the docs use its 200 raccoon photos (VOC
XML, ``datasets/raccoon/{images,annotations}``) where it exists; nothing else depends on it."""

from __future__ import annotations

import os
from pathlib import Path

SHARED = Path(
    os.environ.get("FOCALDET_SHARED", Path(__file__).resolve().parents[1] / ".." / "shared")
)
RACCOON = SHARED / "datasets" / "raccoon"
"""The raccoon dataset: ``images/`` (JPEG photos) and ``annotations/`` (VOC XML)."""
