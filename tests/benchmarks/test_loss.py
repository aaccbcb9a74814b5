"""detector/benchmarks/loss.py: its arguments from configs/benchmark.yaml, its inputs and its
table (the benchmark itself is not a test)."""

import inspect

import pytest
import torch

from detector.benchmarks import loss as benchmark
from detector.benchmarks.common import busy_processes
from detector.engine.cli import compose_tool, typed_kwargs
from detector.engine.config import ConfigError
from losses import BACKGROUND, IGNORE


def loss_kwargs(*overrides: str) -> dict:
    cfg = compose_tool("benchmark", list(overrides))
    return typed_kwargs(benchmark.run, cfg[cfg.what], cfg.what)


def test_arguments():
    assert compose_tool("benchmark", []).what == "loss"
    defaults = {k: p.default for k, p in inspect.signature(benchmark.run).parameters.items()}
    expected = {"device": "cpu", "threads": 0, "repeats": 7, "warmup": 2, "load": 0}
    assert loss_kwargs() == defaults == expected
    kwargs = loss_kwargs("what=loss", "loss.threads=2", "loss.load=1", "json=out.json")
    assert kwargs["threads"] == 2 and kwargs["device"] == "cpu" and kwargs["repeats"] == 7
    assert kwargs["load"] == 1
    assert compose_tool("benchmark", ["json=out.json"]).json == "out.json"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["loss.threads=two"], "loss.threads: Value 'two' of type 'str' could not be converted"),
        (
            ["speed=fast"],
            r"unknown key 'speed' \(choose from what, json, loss, model, data, eval, dataset, "
            r"gpu, predict\)",
        ),
        (["loss"], "Error parsing override 'loss'"),
    ],
)
def test_arguments_rejected(argv, message):
    with pytest.raises(ConfigError, match=message):
        loss_kwargs(*argv)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"device": "tpu"}, "device must be cpu or cuda, got 'tpu'"),
        ({"repeats": 0}, "repeats >= 1"),
        ({"threads": -1}, "threads, warmup and load must be >= 0"),
        ({"load": -2}, "threads, warmup and load must be >= 0"),
    ],
)
def test_run_rejects(kwargs, message):
    with pytest.raises(ValueError, match=message):
        benchmark.run(**kwargs)


def test_table_relative_to_torchvision_under_the_same_load():
    records = [
        {"shape": [4, 2], "impl": impl, "load": load, "median_ms": ms, "peak_mib": mib}
        for impl, load, ms, mib in (
            ("torchvision_onehot", 0, 2.0, 8.0),
            ("focaldet_labels", 0, 1.0, 2.0),
            ("torchvision_onehot", 1, 4.0, 8.0),
            ("focaldet_labels", 1, 5.0, 2.0),
        )
    ]
    lines = benchmark.format_table({"records": records}).splitlines()
    assert lines[0] == (
        "| shape | load | implementation | median ms | peak MiB | time ×tv | mem ×tv |"
    )
    assert lines[2] == "| (4, 2) | 0 | torchvision_onehot | 2.0 | 8.0 | 1.00 | 1.00 |"
    assert lines[3] == "| (4, 2) | 0 | focaldet_labels | 1.0 | 2.0 | 0.50 | 0.25 |"
    assert lines[5] == "| (4, 2) | 1 | focaldet_labels | 5.0 | 2.0 | 1.25 | 0.25 |"


def test_busy_processes_run_during_the_block_and_are_reaped():
    with busy_processes(2) as procs:
        assert len(procs) == 2 and all(p.poll() is None for p in procs)
    assert all(p.returncode is not None for p in procs)
    with busy_processes(0) as procs:
        assert procs == []


def test_run_times_quiet_and_loaded_side_by_side(monkeypatch):
    monkeypatch.setattr(benchmark, "LOSS_SHAPES", ((300, 5),))
    monkeypatch.setattr(benchmark, "peak_memory", lambda impl, shape, dev, threads: 1 << 20)
    loads = []

    def counting(count):
        loads.append(count)
        return busy_processes(count)

    monkeypatch.setattr(benchmark, "busy_processes", counting)
    result = benchmark.run(threads=1, repeats=2, warmup=0, load=1)
    assert loads == [0, 1] and result["config"]["load"] == 1
    records = result["records"]
    assert [(r["load"], r["impl"]) for r in records] == [
        (load, impl) for load in (0, 1) for impl in benchmark.LOSS_IMPLS
    ]
    assert all(len(r["times_ms"]) == 2 and r["peak_mib"] == 1.0 for r in records)
    assert len(benchmark.format_table(result).splitlines()) == 2 + 2 * len(benchmark.LOSS_IMPLS)


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
