"""Fixtures for the command-line tools: a tiny dataset, tiny checkpoints, and two runners (a
subprocess, and the same command line in this process)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import hydra.utils
import pytest
import torch

from data.synthetic import ensure_synthetic
from detector.checkpoint import save_checkpoint
from detector.engine.state import inference_checkpoint

ROOT = Path(__file__).resolve().parents[2]

RESIZE_64 = [
    {"_target_": "data.transforms.ResizeShortestEdge", "short_sizes": [64], "max_size": 96}
]

TINY_MODEL: dict[str, Any] = {
    "_target_": "detector.RetinaNet",
    "backbone": {"_target_": "detector.ResNetBackbone", "depth": 18, "frozen_stages": 0,
                 "norm": "bn", "weights": None},
    "fpn": {"_target_": "detector.FPN", "in_channels": [128, 256, 512], "out_channels": 32},
    "head": {"_target_": "detector.RetinaNetHead", "in_channels": 32, "num_anchors": 9,
             "num_classes": 5, "num_convs": 1},
    "anchor_generator": {"_target_": "detector.AnchorGenerator", "sizes": [16, 32, 64, 128, 256]},
}  # fmt: skip


def postprocess_config(score_thresh: float) -> dict[str, Any]:
    return {
        "_target_": "detector.RetinaNetPostProcessor",
        "box_coder": {"_target_": "detector.BoxCoder"},
        "score_thresh": score_thresh,
    }


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tools") / "synthetic"
    ensure_synthetic(root, seed=0, num_train=2, num_val=4)
    return root


@pytest.fixture(scope="session")
def make_checkpoint(
    tmp_path_factory: pytest.TempPathFactory, tiny_data: Path
) -> Callable[[float], Path]:
    """``make_checkpoint(score_thresh)``: a random-weight tiny model saved as a checkpoint.

    Its classification prior (π = 0.01) puts every score near 0.01, so ``score_thresh=0.005``
    keeps plenty of detections and ``score_thresh=0.5`` none.
    """
    import json

    classes = [
        {"id": c["id"], "name": c["name"]}
        for c in json.loads((tiny_data / "annotations" / "instances_val.json").read_text())[
            "categories"
        ]
    ]

    def make(score_thresh: float) -> Path:
        torch.manual_seed(0)
        model = hydra.utils.instantiate(TINY_MODEL, _convert_="all").eval()
        ckpt = inference_checkpoint(model, TINY_MODEL, postprocess_config(score_thresh), classes)
        ckpt["config"] = {"data": {"val": {"transforms": RESIZE_64}}}
        path = tmp_path_factory.mktemp("ckpt") / f"thresh{score_thresh}.pt"
        save_checkpoint(path, ckpt)
        return path

    return make


@pytest.fixture
def run_in_process(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    load_tool: Callable[[str], ModuleType],
) -> Callable[..., subprocess.CompletedProcess]:
    """``run_in_process("train.py", *args)``: a tool's command line in this process, reported as
    :func:`run_tool` reports it, without the seconds a new Python spends importing torch. A tool
    with ``main(argv)`` runs whole; a Hydra tool (train, evaluate, infer, loss_cdf) runs its
    ``check_command_line`` only, the part that turns a bad config into exit 2 and one line
    (returncode 0: the config passed; a good command line's run needs :func:`run_tool`)."""

    def run(name: str, *args: str) -> subprocess.CompletedProcess:
        path = ROOT / "tools" / name
        module = load_tool(path.stem)
        monkeypatch.setattr(sys, "argv", [str(path), *args])
        capsys.readouterr()
        try:
            if hasattr(module, "check_command_line"):
                module.check_command_line()
                code = 0
            else:
                code = module.main(list(args))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        out = capsys.readouterr()
        return subprocess.CompletedProcess([str(path), *args], code, out.out, out.err)

    return run


@pytest.fixture
def run_tool() -> Callable[..., subprocess.CompletedProcess]:
    """``run_tool("train.py", *args)``: run ``tools/<name>`` in a subprocess from the repo root."""

    def run(name: str, *args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
        return subprocess.run(
            [sys.executable, str(ROOT / "tools" / name), *args],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    return run
