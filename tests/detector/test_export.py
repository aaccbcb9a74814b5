"""ONNX and TorchScript export (tools/export.py, detector/export.py): ONNX Runtime's and the
TorchScript file's detections equal the eager model's on images of several sizes, alone and
padded together, one of them without detections."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from detector import Predictor
from detector.checkpoint import save_checkpoint
from detector.engine.state import inference_checkpoint
from detector.export import TorchScriptPredictor, pad_batch, split_detections

ROOT = Path(__file__).resolve().parents[2]
RESIZE = [{"_target_": "data.transforms.ResizeShortestEdge", "short_sizes": [160], "max_size": 256}]
CLASSES = [{"id": 3, "name": "a"}, {"id": 5, "name": "b"}]
MODEL = {
    "_target_": "detector.RetinaNet",
    "backbone": {"_target_": "detector.ResNetBackbone", "depth": 18, "weights": None},
    "fpn": {"_target_": "detector.FPN", "in_channels": [128, 256, 512], "out_channels": 32},
    "head": {"_target_": "detector.RetinaNetHead", "in_channels": 32, "num_anchors": 9,
             "num_classes": 2, "num_convs": 1},
    "anchor_generator": {"_target_": "detector.AnchorGenerator"},
}  # fmt: skip
SCORE_THRESH = 0.4
"""Between the best score of the grey image (0.33) and of the random ones (0.68, 0.63)."""


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, s, dtype=np.uint8) for s in [(150, 200, 3), (300, 170, 3)]]
    return [*images, np.full((160, 160, 3), 128, np.uint8)]  # grey: no detection above 0.4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_checkpoint(tmp_path_factory.mktemp("export"), RESIZE)


def _write_checkpoint(folder: Path, transforms: list[dict]) -> Path:
    """The test model behind ``transforms`` (the checkpoint's validation resize)."""
    from detector.safe_config import MODEL_TARGETS, build_config

    torch.manual_seed(0)
    model = build_config(MODEL, MODEL_TARGETS, "model").eval()
    with torch.no_grad():  # spread the scores so that some pass SCORE_THRESH
        model.head.cls_score.weight.normal_(0, 0.05)
        model.head.cls_score.bias.fill_(-1.0)
    post = {
        "_target_": "detector.RetinaNetPostProcessor",
        "box_coder": {"_target_": "detector.BoxCoder"},
        "score_thresh": SCORE_THRESH,
    }
    ckpt = inference_checkpoint(model, MODEL, post, CLASSES)
    ckpt["config"] = {"data": {"val": {"transforms": transforms}}}
    save_checkpoint(folder / "model.pt", ckpt)
    return folder / "model.pt"


@pytest.fixture(scope="module")
def exported(checkpoint: Path, load_tool) -> tuple[Predictor, Path]:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    assert load_tool("export").main([f"checkpoint={checkpoint}"]) == 0
    return Predictor.from_checkpoint(checkpoint, device="cpu"), checkpoint.with_suffix(".onnx")


@pytest.fixture(scope="module")
def scripted(checkpoint: Path, load_tool) -> tuple[Predictor, Path]:
    assert load_tool("export").main([f"checkpoint={checkpoint}", "format=torchscript"]) == 0
    path = checkpoint.with_suffix(".torchscript")
    return Predictor.from_checkpoint(checkpoint, device="cpu"), path


def assert_same(ours, theirs) -> None:
    """The same detections: boxes within 0.01 px, scores within 1e-4, same labels. Order is
    by score, and two scores a rounding apart (6e-8 in a real case) may swap places, so each
    detection is matched to one of the other side's, in order where it can be."""
    assert len(ours) == len(theirs)
    close = (
        ((ours.boxes[:, None] - theirs.boxes[None]).abs().amax(-1) <= 0.01)
        & ((ours.scores[:, None] - theirs.scores[None]).abs() <= 1e-4)
        & (ours.labels[:, None] == theirs.labels[None])
    )
    unused = torch.ones(len(theirs), dtype=torch.bool)
    for i in range(len(ours)):
        candidates = (close[i] & unused).nonzero().flatten()
        assert len(candidates), f"detection {i} ({ours.boxes[i].tolist()}) has no match"
        unused[candidates[0]] = False
    assert sorted(ours.category_ids) == sorted(theirs.category_ids)


def assert_runs_like_eager(predictor: Predictor, run) -> None:
    """``run(images, image_sizes, orig_sizes)`` (the exported model's four outputs) against the
    eager model: each image alone (batch 1), then all three padded into one batch of 3."""
    resized = [predictor.resize(image) for image in _images()]
    orig = torch.tensor([image.shape[:2] for image in _images()])
    batches = [[i] for i in range(len(resized))] + [list(range(len(resized)))]
    counts = []
    for indices in batches:
        batch, sizes = pad_batch([resized[i] for i in indices])
        theirs = split_detections(run(batch, sizes, orig[indices]), len(indices), CLASSES)
        with torch.inference_mode():
            outputs = predictor.model(batch, sizes)
            eager = [predictor._wrap(d) for d in predictor.postprocessor(outputs, orig[indices])]
        for ours, exported in zip(eager, theirs, strict=True):
            assert_same(exported, ours)
        counts.append([len(d) for d in eager])
    assert counts[0][0] > 0 and counts[1][0] > 0 and counts[2] == [0]
    assert counts[3][2] == 0 and counts[3][0] > 0


@pytest.mark.slow
def test_onnx_runtime_detects_what_the_eager_model_detects(exported) -> None:
    import onnxruntime as ort

    predictor, path = exported
    sidecar = json.loads(Path(f"{path}.json").read_text())
    assert sidecar["format"] == "onnx"
    assert sidecar["classes"] == CLASSES and sidecar["transforms"] == RESIZE
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(images, image_sizes, orig_sizes):
        feeds = {"images": images.numpy(), "image_sizes": image_sizes.numpy(),
                 "orig_sizes": orig_sizes.numpy()}  # fmt: skip
        return session.run(None, feeds)

    assert_runs_like_eager(predictor, run)


def test_torchscript_detects_what_the_eager_model_detects(scripted) -> None:
    """The trace was recorded on a batch of 2 at 300 × 420: other batch sizes and image sizes
    (a smaller top pyramid level, fewer candidates than top-k) must not be frozen into it."""
    predictor, path = scripted
    sidecar = json.loads(Path(f"{path}.json").read_text())
    assert sidecar["format"] == "torchscript"
    assert sidecar["classes"] == CLASSES and sidecar["transforms"] == RESIZE
    module = TorchScriptPredictor(path).module
    assert isinstance(module, torch.jit.ScriptModule)
    with torch.inference_mode():
        assert_runs_like_eager(predictor, module)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnx", "torchscript"])
def test_infer_backend(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, load_tool
) -> None:
    from detector.export import OnnxPredictor

    predictor, path = request.getfixturevalue("exported" if backend == "onnx" else "scripted")
    loaded = (OnnxPredictor if backend == "onnx" else TorchScriptPredictor)(path)
    images = _images()
    for ours, theirs in zip(predictor(images), loaded(images), strict=True):
        assert_same(theirs, ours)
    infer = load_tool("infer")
    from omegaconf import OmegaConf
    from PIL import Image

    (tmp_path / "in").mkdir()
    Image.fromarray(images[0]).save(tmp_path / "in" / "a.png")
    cfg = OmegaConf.create({"checkpoint": str(path), "input": str(tmp_path / "in"),
                            "output": str(tmp_path / "out"), "score_thresh": 0.3,
                            "device": "cpu", "backend": backend, "batch_size": 2,
                            "transforms": None})  # fmt: skip
    predictions = infer.run(cfg)
    expected = predictor(images[0]).to_coco()
    assert len(predictions) == len(expected) > 0
    for got, want in zip(predictions, expected, strict=True):
        assert got["file_name"] == "a.png" and got["category_id"] == want["category_id"]
        assert got["bbox"] == pytest.approx(want["bbox"], abs=0.02)
        assert got["score"] == pytest.approx(want["score"], abs=1e-4)
    assert (tmp_path / "out" / "a.png").is_file()


TORCHVISION_RESIZE = [{"_target_": "data.transforms.TorchvisionResize", "min_size": 160,
                       "max_size": 256}]  # fmt: skip


@pytest.mark.parametrize("backend", ["torchscript", pytest.param("onnx", marks=pytest.mark.slow)])
def test_export_behind_torchvision_resize(backend: str, tmp_path: Path, load_tool) -> None:
    """A converted torchvision checkpoint's resize hands the model float32 in [0, 1], not
    uint8: the exported graph is typed by it, and detects what the eager predictor detects."""
    from detector.export import OnnxPredictor

    if backend == "onnx":
        for module in ("onnx", "onnxscript", "onnxruntime"):
            pytest.importorskip(module)
    checkpoint = _write_checkpoint(tmp_path, TORCHVISION_RESIZE)
    assert load_tool("export").main([f"checkpoint={checkpoint}", f"format={backend}"]) == 0
    path = checkpoint.with_suffix(f".{backend}")
    sidecar = json.loads(Path(f"{path}.json").read_text())
    assert "float32 RGB in [0, 1]" in sidecar["inputs"]["images"]
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    assert predictor.resize(_images()[0]).dtype == torch.float32
    loaded = (OnnxPredictor if backend == "onnx" else TorchScriptPredictor)(path)
    eager = predictor(_images())
    for ours, theirs in zip(eager, loaded(_images()), strict=True):
        assert_same(theirs, ours)
    assert sum(len(d) for d in eager) > 0


def test_export_tool_rejects_bad_arguments(tmp_path: Path, capsys, load_tool) -> None:
    tool = load_tool("export")
    assert tool.main([f"checkpoint={tmp_path / 'nope.pt'}"]) == 2
    assert capsys.readouterr().err == (
        f"focaldet: config error: checkpoint: {tmp_path / 'nope.pt'}: no such file\n"
    )
    (tmp_path / "m.pt").write_bytes(b"")
    assert tool.main([f"checkpoint={tmp_path / 'm.pt'}", "format=tflite"]) == 2
    err = capsys.readouterr().err
    assert err == "focaldet: config error: format must be one of onnx, torchscript, got 'tflite'\n"


@pytest.fixture(scope="module")
def calibration(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight random photos of several sizes, and a text file the folder listing skips."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("calibration")
    rng = np.random.default_rng(1)
    for i, size in enumerate([(200, 180, 3), (150, 260, 3)] * 4):
        Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.mark.slow
def test_int8_export_quantises_every_convolution(
    exported, checkpoint: Path, calibration: Path, load_tool
) -> None:
    """``int8=true``: every convolution's weights int8 (one scale per output channel), the
    rest of the graph and the sidecar as in the float32 file; the detections move a little,
    not a lot (a random-weight model: docs/benchmarks.md measures the AP of a trained one)."""
    from detector.export import OnnxPredictor, load_exported
    from detector.quantize import quantized_fraction

    _, float_path = exported
    # By default the weights stay within ±64, whose products cannot saturate on any x86 CPU, so
    # the comparison below holds on every machine (full-range weights: the next test).
    args = [f"checkpoint={checkpoint}", "int8=true", f"calibration={calibration}",
            "calibration_images=6"]  # fmt: skip
    assert load_tool("export").main(args) == 0
    path = checkpoint.with_suffix(".int8.onnx")
    quantized, convs = quantized_fraction(path)
    assert quantized == convs == quantized_fraction(float_path)[1] > 40
    assert quantized_fraction(float_path)[0] == 0
    assert _int8_weight_range(path) == (-64, 64)
    assert path.stat().st_size < 0.35 * float_path.stat().st_size  # 1-byte weights, not 4
    meta, float_meta = (json.loads(Path(f"{p}.json").read_text()) for p in (path, float_path))
    quantization = meta.pop("quantization")
    assert meta == float_meta
    assert quantization["calibration_method"] == "minmax"
    assert quantization["calibration_images"] == [str(calibration / f"{i}.png") for i in range(6)]
    assert quantization["reduce_range"] is True
    assert quantization["weights"] == "int8 within ±64 (7 bits), one scale per output channel " \
        "(convolutions)"  # fmt: skip

    int8, fp32 = load_exported(path)(_images()), OnnxPredictor(float_path)(_images())
    assert [len(d) > 0 for d in int8] == [len(d) > 0 for d in fp32] == [True, True, False]
    for ours, theirs in zip(int8[:2], fp32[:2], strict=True):
        assert ours.labels[0] == theirs.labels[0]
        assert box_iou(ours.boxes[:1], theirs.boxes[:1]).item() > 0.95
        assert ours.scores[0].item() == pytest.approx(theirs.scores[0].item(), abs=0.03)
        assert ours.scores[0].item() != pytest.approx(theirs.scores[0].item(), abs=1e-4)


def _int8_weight_range(path: Path) -> tuple[int, int]:
    """The smallest and largest int8 weight of the ONNX file ``path``."""
    import onnx
    from onnx.numpy_helper import to_array

    weights = [to_array(i) for i in onnx.load(str(path)).graph.initializer
               if i.data_type == onnx.TensorProto.INT8]  # fmt: skip
    return min(int(w.min()) for w in weights), max(int(w.max()) for w in weights)


@pytest.mark.slow
def test_int8_export_with_full_range_weights_warns_where_they_saturate(
    checkpoint: Path, calibration: Path, tmp_path: Path, load_tool, monkeypatch, caplog
) -> None:
    """``reduce_range=false``: the full int8 range (for CPUs whose products add in 32 bits);
    loading that file where products saturate (x86 without VNNI) warns, naming it."""
    import detector.quantize
    from detector.export import OnnxPredictor

    monkeypatch.setattr(detector.quantize, "int8_saturates", lambda: False)
    out = tmp_path / "full.int8.onnx"
    args = [f"checkpoint={checkpoint}", "int8=true", f"calibration={calibration}",
            "calibration_images=2", f"out={out}", "reduce_range=false"]  # fmt: skip
    assert load_tool("export").main(args) == 0
    assert _int8_weight_range(out) == (-127, 127)
    quantization = json.loads(Path(f"{out}.json").read_text())["quantization"]
    assert quantization["reduce_range"] is False
    assert quantization["weights"] == "int8, one scale per output channel (convolutions)"

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "detector.export"]

    caplog.clear()
    with caplog.at_level("WARNING", logger="detector.export"):
        OnnxPredictor(out)
        assert warnings() == []
        monkeypatch.setattr(detector.quantize, "int8_saturates", lambda: True)
        OnnxPredictor(out)
    assert warnings() == [
        f"{out}: its int8 weights use the full 8-bit range, which this CPU (x86 without VNNI) "
        "adds in 16 bits with saturation, so its scores and boxes can be wrong; export it "
        "again with reduce_range=true"
    ]


@pytest.mark.parametrize(
    ("flags", "machine", "saturates"),
    [
        ({"sse4_2", "avx2", "fma"}, "x86_64", True),  # Zen 3, Skylake client
        ({"avx2", "avx512f", "avx512bw"}, "x86_64", True),  # Skylake-SP: AVX-512 without VNNI
        ({"avx2", "avx512f", "avx512_vnni"}, "x86_64", False),  # Cascade Lake, Zen 4 and 5
        ({"avx2", "avx_vnni"}, "AMD64", False),  # Alder Lake
        (None, "x86_64", True),  # flags unknown (macOS, Windows): assume the worst
        (None, "aarch64", False),
        (None, "arm64", False),
    ],
)
def test_int8_saturates(flags, machine: str, saturates: bool) -> None:
    from detector.quantize import int8_saturates

    flags = None if flags is None else frozenset(flags)
    if flags is None and machine.startswith("x86"):
        import detector.quantize

        with pytest.MonkeyPatch.context() as m:
            m.setattr(detector.quantize, "cpu_flags", lambda: None)
            assert int8_saturates(None, machine) is saturates
    else:
        assert int8_saturates(flags, machine) is saturates


def test_int8_export_rejects_bad_settings(
    checkpoint: Path, calibration: Path, tmp_path: Path, capsys, load_tool
) -> None:
    tool = load_tool("export")
    ckpt = f"checkpoint={checkpoint}"
    cases = [
        (["int8=true"], "int8=true needs calibration=DIR: a folder of images like those the "
         "model will see (its validation images, say)"),
        (["int8=true", "format=torchscript", f"calibration={calibration}"],
         "int8=true needs format=onnx, got format=torchscript"),
        (["int8=true", f"calibration={tmp_path / 'none'}"],
         f"calibration: {tmp_path / 'none'} is not a folder of images"),
        (["int8=true", f"calibration={tmp_path}"],
         f"calibration: {tmp_path} holds no image (.bmp, .jpeg, .jpg, .png, .tif, .tiff, .webp)"),
        (["int8=true", f"calibration={calibration}", "calibration_images=0"],
         "calibration_images must be >= 1, got 0"),
        (["int8=true", f"calibration={calibration}", "calibration_method=mse"],
         "calibration_method must be one of minmax, percentile, entropy, got 'mse'"),
    ]  # fmt: skip
    for args, message in cases:
        assert tool.main([ckpt, *args]) == 2, args
        assert capsys.readouterr().err == f"focaldet: config error: {message}\n"
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"\x89PNG broken")
    pytest.importorskip("onnxruntime")
    with pytest.raises(SystemExit, match=f"focaldet: calibration image {broken / 'a.png'}: "):
        tool.main([ckpt, "int8=true", f"calibration={broken}", f"out={tmp_path / 'q.onnx'}"])


def test_load_exported_names_what_is_missing(checkpoint: Path, tmp_path: Path) -> None:
    from detector.checkpoint import CheckpointError
    from detector.export import is_exported, load_exported

    assert is_exported("a/m.onnx") and is_exported("m.torchscript") and not is_exported("m.pt")
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"m\.onnx: its sidecar m\.onnx\.json is missing"):
        load_exported(model)
