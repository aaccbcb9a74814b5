"""tools/benchmark_model.py: the two models it compares compute the same function, and a tiny
run produces the table and JSON-able record (the figures themselves are not tested)."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

TOOL = Path(__file__).resolve().parents[2] / "tools" / "benchmark_model.py"


@pytest.fixture(scope="module")
def bm():
    spec = importlib.util.spec_from_file_location("benchmark_model", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_both_models_compute_the_same_function(bm):
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


def test_tiny_run_table_and_json(bm, tmp_path, capsys):
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
    assert len(table) == 5 and table[0].split()[:3] == ["mode", "implementation", "median"]
    json.dumps(result)
    out = tmp_path / "model.json"
    assert (
        bm.main(
            [
                "depth=18",
                "size=128",
                "batch=1",
                "num_classes=3",
                "iters=1",
                "warmup=0",
                "memory=false",
                "threads=1",
                f"json={out}",
            ]
        )
        == 0
    )
    assert json.loads(out.read_text())["config"]["size"] == 128
    assert "infer  focaldet" in capsys.readouterr().out


def test_bad_arguments(bm, capsys):
    with pytest.raises(ValueError, match="unknown argument 'dpeth=50'"):
        bm.parse_args(["dpeth=50"])
    with pytest.raises(ValueError, match="amp='maybe': expected true or false"):
        bm.parse_args(["amp=maybe"])
    with pytest.raises(ValueError, match="iters='x': expected a non-negative integer"):
        bm.parse_args(["iters=x"])
    with pytest.raises(ValueError, match="size must be a positive multiple of 128"):
        bm.run(size=100)
    with pytest.raises(ValueError, match="depth must be 18, 34, 50 or 101"):
        bm.run(depth=152)
    assert bm.main(["device=tpu"]) == 2
    assert "device must be cpu or cuda" in capsys.readouterr().err
