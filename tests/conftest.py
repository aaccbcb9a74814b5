"""Fixtures for every test folder."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from data.shared import RACCOON

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def raccoon() -> Path:
    """The shared raccoon photos (VOC XML, data/shared.py); skips where they are absent."""
    if not RACCOON.is_dir():
        pytest.skip(f"shared raccoon dataset not found at {RACCOON} (set FOCALDET_SHARED)")
    return RACCOON


@pytest.fixture(scope="session")
def load_tool() -> Callable[[str], ModuleType]:
    """``load_tool("infer")``: a fresh module of ``tools/infer.py``. The tools are scripts, not a
    package, so this is how a test reaches their functions without a subprocess."""

    def load(name: str) -> ModuleType:
        path = ROOT / "tools" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"tool_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
