"""tools/benchmark.py's argument parsing and loss inputs (the benchmark itself is not a test)."""

import importlib.util
from pathlib import Path

import pytest
import torch

from losses import BACKGROUND, IGNORE

_PATH = Path(__file__).resolve().parents[2] / "tools" / "benchmark.py"
_SPEC = importlib.util.spec_from_file_location("benchmark_tool", _PATH)
benchmark = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(benchmark)


def test_parse_args():
    args = benchmark.parse_args(["what=loss", "threads=2", "json=out.json"])
    assert args["what"] == "loss" and args["threads"] == "2" and args["json"] == "out.json"
    assert args["device"] == "cpu" and args["repeats"] == "7"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["what=model"], r"what='model': expected one of \['loss'\]"),
        (["device=tpu"], "device='tpu': expected cpu or cuda"),
        (["threads=two"], "threads='two': expected a non-negative integer"),
        (["speed=fast"], "unknown argument 'speed=fast'"),
        (["loss"], "unknown argument 'loss'"),
    ],
)
def test_parse_args_rejects(argv, message):
    with pytest.raises(ValueError, match=message):
        benchmark.parse_args(argv)


def test_loss_inputs_agree():
    inputs = benchmark.make_loss_inputs((2, 1000, 6), torch.device("cpu"))
    labels, onehot = inputs["labels"], inputs["onehot"].view(-1, 6)
    assert inputs["logits"].shape == (2, 1000, 6) and labels.shape == (2000,)
    foreground = labels >= 0
    assert int(foreground.sum()) == 2 * benchmark.POSITIVES_PER_IMAGE
    assert int((labels == IGNORE).sum()) > 0 and int((labels == BACKGROUND).sum()) > 0
    rows = foreground.nonzero().squeeze(1)
    assert torch.all(onehot[rows, labels[rows]] == 1)
    assert onehot.sum() == rows.numel()
