"""detector/benchmarks/model.py: the two models it compares compute the same function, and a
tiny run produces the table and JSON-able record (the figures themselves are not tested)."""

import json

import pytest
import torch

from detector.benchmarks import model as bm
from detector.engine.cli import compose_tool, typed_kwargs
from detector.engine.config import ConfigError


def test_both_models_compute_the_same_function():
    tv, ours, _, post = bm.build_pair(depth=18, size=128, num_classes=3)
    tv.eval(), ours.eval()
    images, _ = bm.make_inputs(batch=2, size=128, num_classes=3, device=torch.device("cpu"))
    with torch.no_grad():
        image_list, _ = tv.transform(images)
        features = list(tv.backbone(image_list.tensors).values())
        tv_head = tv.head(features)
        outputs = ours(images)
        tv_dets, dets = tv(images), post(outputs)
    torch.testing.assert_close(outputs.cls_logits, tv_head["cls_logits"], rtol=0, atol=1e-4)
    torch.testing.assert_close(outputs.box_deltas, tv_head["bbox_regression"], rtol=0, atol=1e-4)
    check = bm.compare_detections(dets, tv_dets)
    assert check["focaldet_detections"] == check["torchvision_detections"]
    assert check["max_score_diff"] < 1e-5
    # Same frozen parts: the stem and res2 do not train in either.
    assert not tv.backbone.body.layer1[0].conv1.weight.requires_grad
    assert not ours.backbone.layer1[0].conv1.weight.requires_grad
    assert tv.backbone.body.layer2[0].conv1.weight.requires_grad
    assert ours.backbone.layer2[0].conv1.weight.requires_grad


def test_tiny_run_table_and_json():
    result = bm.run(
        depth=18, size=128, batch=1, num_classes=3, iters=2, warmup=1, memory=False, threads=1
    )
    for mode in ("train", "infer"):
        for impl in ("focaldet", "torchvision"):
            record = result["results"][mode][impl]
            assert len(record["times_s"]) == 2 and record["median_s"] > 0
            assert len(record["cpu_times_s"]) == 2
        ratio = result["results"][mode]["ratio"]
        mine, theirs = result["results"][mode]["focaldet"], result["results"][mode]["torchvision"]
        assert ratio["time"] == pytest.approx(mine["median_s"] / theirs["median_s"])
    assert result["config"]["depth"] == 18 and result["meta"]["torch"] == torch.__version__
    table = bm.format_table(result).splitlines()
    assert len(table) == 6 and table[0].split(" | ")[:3] == ["| mode", "implementation", "median s"]
    assert table[2].startswith("| infer | focaldet | ")
    json.dumps(result)


def model_kwargs(*overrides: str) -> dict:
    """The ``model`` node of configs/benchmark.yaml with ``overrides``, as ``run``'s kwargs."""
    return typed_kwargs(
        bm.run, compose_tool("benchmark", ["what=model", *overrides]).model, "model"
    )


def test_config_defaults_are_the_run_defaults():
    import inspect

    defaults = {k: p.default for k, p in inspect.signature(bm.run).parameters.items()}
    assert model_kwargs() == defaults


def test_bad_arguments():
    with pytest.raises(
        ConfigError, match=r"unknown key 'model.dpeth' \(choose from model.depth, model.size,"
    ):
        model_kwargs("model.dpeth=50")
    with pytest.raises(ConfigError, match=r"model.amp: Value 'maybe' is not a valid bool"):
        model_kwargs("model.amp=maybe")
    with pytest.raises(ConfigError, match=r"model.iters: Value 'x' .* could not be converted"):
        model_kwargs("model.iters=x")
    assert model_kwargs("model.iters=3", "model.amp=true")["iters"] == 3
    with pytest.raises(ValueError, match="size must be a positive multiple of 128"):
        bm.run(size=100)
    with pytest.raises(ValueError, match="depth must be 18, 34, 50 or 101"):
        bm.run(depth=152)
    with pytest.raises(ValueError, match="device must be cpu or cuda"):
        bm.run(device="tpu")
    with pytest.raises(ValueError, match="iters must be >= 1 and warmup >= 0, got 2, 80, 2, 0, 2"):
        bm.run(iters=0)
