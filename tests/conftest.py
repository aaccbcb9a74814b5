"""Fixtures for every test folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from data.shared import RACCOON


@pytest.fixture
def raccoon() -> Path:
    """The shared raccoon photos (VOC XML, data/shared.py); skips where they are absent."""
    if not RACCOON.is_dir():
        pytest.skip(f"shared raccoon dataset not found at {RACCOON} (set FOCALDET_SHARED)")
    return RACCOON
