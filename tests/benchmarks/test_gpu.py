"""detector/benchmarks/gpu.py in dry-run mode: the whole GPU check runs on the CPU at toy sizes, so
that the command prepared for a GPU window cannot rot (the figures themselves are not tested)."""

import functools
import json

import pytest

from detector.benchmarks import gpu
from detector.engine.cli import compose_tool, typed_kwargs


def test_arguments_from_the_config():
    cfg = compose_tool("benchmark", ["what=gpu", "gpu.dry_run=true", "gpu.budget_s=0"])
    kwargs = typed_kwargs(gpu.run, cfg[cfg.what], cfg.what)
    assert kwargs["dry_run"] is True and kwargs["budget_s"] == 0 and kwargs["device"] == "cuda"


def test_bad_arguments():
    with pytest.raises(ValueError, match="iters and precision_steps must be >= 1"):
        gpu.run(dry_run=True, iters=0)


def test_dry_run_records_every_part():
    result = gpu.run(dry_run=True, precision_steps=1, budget_s=3600)
    assert "errors" not in result, result.get("errors")
    assert result["config"]["device"] == "cpu" and result["config"]["compile_backend"] == "eager"
    precision = result["precision"]
    assert len(precision["fp32"]["losses"]) == 1
    for name in ("bf16", "fp16"):
        assert precision[name]["finite"] and precision[name]["ok"], precision[name]
    train = result["train"]
    assert [(t["batch"], t["channels_last"], t["compile"]) for t in train] == [
        (1, True, False), (2, True, False), (1, False, False), (1, True, True),
    ]  # fmt: skip
    for t in train:
        figures = t["figures"]
        assert figures["focaldet"]["img_per_s"] > 0 and figures["torchvision"]["img_per_s"] > 0
        assert figures["ratio_img_per_s"] > 0
    infer = result["infer"]
    assert infer["postprocess_s"] > 0 and infer["focaldet"]["img_per_s"] > 0
    det = infer["detections"]
    assert det["focaldet_detections"] == det["torchvision_detections"]
    ddp = result["ddp"]
    assert ddp["backend"] == "gloo" and ddp["world_size"] == 1 and ddp["all_reduce_ok"]
    json.dumps(result)  # the record is JSON as it is
    table = gpu.format_table(result).splitlines()
    assert table[0].startswith("| train bf16 | focaldet img/s |") and len(table) >= 6


def test_budget_skips_the_compiled_configurations_and_errors_are_recorded(monkeypatch):
    def broken(*args):
        raise RuntimeError("no NCCL here")

    monkeypatch.setattr(gpu, "check_ddp", broken)
    monkeypatch.setattr(gpu, "check_precision", broken)
    monkeypatch.setattr(gpu, "check_inference", broken)
    monkeypatch.setattr(gpu, "_train_figures", lambda *args: {"stub": True})
    result = gpu.run(dry_run=True, budget_s=0)
    assert result["errors"] == {
        "precision": "RuntimeError: no NCCL here",
        "infer": "RuntimeError: no NCCL here",
        "ddp": "RuntimeError: no NCCL here",
    }
    assert [t.get("skipped") for t in result["train"]] == [None] * 3 + ["over budget_s=0"]


def test_main_runs_without_hydra(monkeypatch, tmp_path):
    seen = {}

    @functools.wraps(gpu.run)
    def fake_run(**kwargs):
        seen.update(kwargs)
        return {"train": []}

    monkeypatch.setattr(gpu, "run", fake_run)
    out = tmp_path / "gpu.json"
    argv = ["dry_run=true", "iters=2", "compile_backend=aot_eager", f"json={out}"]
    assert gpu.main(argv) == 0
    assert seen == {"dry_run": True, "iters": 2, "compile_backend": "aot_eager"}
    assert json.loads(out.read_text()) == {"train": []}
    with pytest.raises(SystemExit, match="unknown key 'speed' \\(choose from json, dry_run"):
        gpu.main(["speed=1"])
