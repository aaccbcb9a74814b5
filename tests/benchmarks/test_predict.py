"""detector/benchmarks/predict.py on two small generated photos: its result and table hold what
was measured, the ratios are the times' quotients, and a bad argument is a one-line config error
(the times themselves are not tested)."""

import inspect
import json
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detector.benchmarks import predict as bench
from detector.engine.cli import compose_tool, typed_kwargs
from detector.engine.compile import compile_network

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for name, shape in (("a.jpg", (90, 120, 3)), ("b.png", (130, 70, 3))):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not a photo")
    return tmp_path


def test_tiny_run(photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """onnx and onnx_int8 asked for but "not installed": left out with a note (and no slow
    export)."""
    monkeypatch.setattr(bench, "find_spec", lambda name: None)
    result = bench.run(
        images=str(photos), n=2, threads=1, repeats=2, min_size=64, max_size=96,
        backends=("torchvision", "predictor", "onnx", "onnx_int8"), matmul_size=64,
    )  # fmt: skip
    assert result["notes"] == [
        "onnx left out: onnx, onnxscript, onnxruntime not installed (pip install -e .[export])"
    ]
    results, check = result["results"], result["check"]
    assert list(results) == ["torchvision", "predictor"]
    assert check["images"] == 2 and check["photo_sizes"] == [[90, 120], [130, 70]]
    # The same model, resize and post-processing: the same detections on every photo.
    assert check["detections"]["predictor"] == check["detections"]["torchvision"]
    assert all(0 < count <= 100 for count in check["detections"]["torchvision"])
    reference = results["torchvision"]["s_per_image"]
    for record in results.values():
        assert len(record["passes_s"]) == 2
        assert record["s_per_image"] == statistics.median(record["passes_s"]) / 2
        assert record["ratio"] == record["s_per_image"] / reference
    assert results["torchvision"]["ratio"] == 1.0
    assert result["config"]["threads"] == 1
    assert result["config"]["calibration"] == ["a.jpg", "b.png"]  # < n + 8 photos: the first
    arithmetic = result["arithmetic"]
    gflop = arithmetic["gflop_per_image"]
    assert gflop == pytest.approx(conv_gflop_per_image(photos, tmp_path / "model"), rel=1e-12)
    for record in results.values():
        assert record["gflop_per_s"] == gflop / record["s_per_image"]
    assert arithmetic["matmul_gflop_per_s"] > 0
    assert arithmetic["floor_ratio"] == (
        gflop / arithmetic["matmul_gflop_per_s"] / results["torchvision"]["s_per_image"]
    )
    lines = bench.format_table(result).splitlines()
    assert lines[0].startswith("RetinaNet R50-FPN (random weights), CPU, batch 1, 2 photos")
    assert lines[1].startswith(f"{gflop:.1f} GFLOP per image; a 64² float32 matmul runs at ")
    assert lines[2] == result["notes"][0]
    assert lines[4] == (
        "| backend | ms / image | × torchvision | GFLOP/s | × matmul | detections |"
    )
    count = sum(check["detections"]["torchvision"])
    assert lines[6].startswith("| torchvision | ") and lines[6].endswith(f" | {count} |")
    json.dumps(result)


def conv_gflop_per_image(photos: Path, folder: Path) -> float:
    """The benchmark's model on the same two photos, its convolutions' arithmetic summed by
    hand from their output sizes: 2 × outputs × input channels per group × kernel area."""
    folder.mkdir()
    model, _ = bench.build_models(64, 96, folder)
    total = 0

    def count(conv: torch.nn.Conv2d, args: object, out: torch.Tensor) -> None:
        nonlocal total
        kernel = conv.kernel_size[0] * conv.kernel_size[1]
        total += 2 * out.numel() * conv.in_channels // conv.groups * kernel

    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_hook(count)
    with torch.inference_mode():
        for photo in bench.load_photos(str(photos), 2):
            model([torch.from_numpy(photo).permute(2, 0, 1).float() / 255.0])
    return total / 2 / 1e9


def test_compiled_predictor_is_a_second_compiled_model(
    photos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``predictor_compiled`` compiles a Predictor of its own (dynamo with the eager backend
    here: inductor's code generation would take minutes), and detects what torchvision does."""
    compiled = []

    def compile_eager(model):
        compiled.append(model)
        return compile_network(model, "eager")

    monkeypatch.setattr(bench, "compile_network", compile_eager)
    result = bench.run(
        images=str(photos), n=2, threads=1, repeats=1, min_size=64, max_size=96,
        backends=("torchvision", "predictor", "predictor_compiled"),
    )  # fmt: skip
    assert len(compiled) == 1 and compiled[0].backbone._compiled_call_impl is not None
    detections = result["check"]["detections"]
    assert detections["predictor_compiled"] == detections["torchvision"] == detections["predictor"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("predict.n=0", "predict: n, repeats and matmul_size must be >= 1 and threads >= 0, "
         "got 0, 5, 2048, 0"),
        ("predict.backends=[predictor,tflite]", "predict: backends must be among torchvision, "
         "predictor, onnx, onnx_int8, torchscript, predictor_compiled and include torchvision, "
         "got ['predictor', 'tflite']"),
        ("predict.repeats=many", "predict.repeats"),
    ],
)  # fmt: skip
def test_bad_arguments_are_one_line_config_errors(
    override: str, message: str, capsys, load_tool
) -> None:
    assert load_tool("benchmark").main(["what=predict", override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("focaldet: config error: ") and err.count("\n") == 1
    assert message in err


def test_config_defaults_are_the_run_defaults() -> None:
    kwargs = typed_kwargs(bench.run, compose_tool("benchmark", ["what=predict"]).predict, "predict")
    defaults = {k: p.default for k, p in inspect.signature(bench.run).parameters.items()}
    assert kwargs["backends"] == list(defaults.pop("backends"))
    kwargs.pop("backends")
    assert kwargs == defaults


def test_int8_is_calibrated_on_photos_it_is_not_timed_on(tmp_path: Path) -> None:
    for i in range(12):
        (tmp_path / f"{i:02d}.jpg").write_bytes(b"")
    assert [p.name for p in bench.calibration_paths(str(tmp_path), 3)] == [
        f"{i:02d}.jpg" for i in range(3, 11)
    ]
    assert len(bench.calibration_paths(str(tmp_path), 5)) == 8  # 5..11 is 7: the first 8
    assert bench.calibration_paths(str(tmp_path), 5)[0].name == "00.jpg"
