"""tools/benchmark.py end to end: the model benchmark on a tiny model writes its JSON and table,
and bad arguments end in one line and exit code 2 (the figures themselves are not tested)."""

from __future__ import annotations

import json


def test_tiny_model_run(run_tool, tmp_path) -> None:
    out = tmp_path / "model.json"
    args = ["depth=18", "size=128", "batch=1", "num_classes=3", "iters=1", "warmup=0",
            "memory=false", "threads=1"]  # fmt: skip
    done = run_tool("benchmark.py", "what=model", *[f"model.{a}" for a in args], f"json={out}")
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["config"]["size"] == 128 and result["config"]["depth"] == 18
    assert result["meta"]["command"].startswith("python tools/benchmark.py what=model model.depth")
    meta = json.loads(done.stdout.splitlines()[0])
    assert meta["size"] == 128 and "load_average" in meta and "hardware" in meta
    assert "| infer | focaldet |" in done.stdout


def test_bad_arguments(run_in_process) -> None:
    for args, message in (
        (["what=speed"],
         "what='speed': expected one of loss, model, data, eval, dataset, gpu, predict"),
        (["what=model", "model.size=100"],
         "model: size must be a positive multiple of 128 (the P7 stride), got 100"),
        (["what=model", "model.amp=maybe"],
         "model.amp: Value 'maybe' is not a valid bool (type str)"),
    ):  # fmt: skip
        done = run_in_process("benchmark.py", *args)
        assert done.returncode == 2
        assert done.stderr == f"focaldet: config error: {message}\n"


def test_help_tells_the_keys(run_tool) -> None:
    done = run_tool("benchmark.py", "--help")
    assert done.returncode == 0
    assert "what=model [model.depth=50]" in done.stdout and "BENCHMARKS" in done.stdout
