"""ONNX export (tools/export.py, detector/export.py): ONNX Runtime's detections equal the eager
model's on images of several sizes, alone and padded together, one of them without detections."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from detector import Predictor
from detector.checkpoint import save_checkpoint
from detector.engine.state import inference_checkpoint
from detector.export import pad_batch, split_detections

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

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


def _tool():
    spec = importlib.util.spec_from_file_location("focaldet_export", ROOT / "tools" / "export.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, s, dtype=np.uint8) for s in [(150, 200, 3), (300, 170, 3)]]
    return [*images, np.full((160, 160, 3), 128, np.uint8)]  # grey: no detection above 0.4


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Predictor, Path]:
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
    ckpt["config"] = {"data": {"val": {"transforms": RESIZE}}}
    folder = tmp_path_factory.mktemp("export")
    save_checkpoint(folder / "model.pt", ckpt)
    assert _tool().main([f"checkpoint={folder / 'model.pt'}"]) == 0
    return Predictor.from_checkpoint(folder / "model.pt", device="cpu"), folder / "model.onnx"


def assert_same(ours, theirs) -> None:
    assert len(ours) == len(theirs)
    torch.testing.assert_close(ours.boxes, theirs.boxes, rtol=0, atol=0.01)
    torch.testing.assert_close(ours.scores, theirs.scores, rtol=0, atol=1e-4)
    assert ours.labels.tolist() == theirs.labels.tolist()
    assert ours.category_ids == theirs.category_ids


@pytest.mark.slow
def test_onnx_runtime_detects_what_the_eager_model_detects(exported) -> None:
    predictor, path = exported
    sidecar = json.loads(Path(f"{path}.json").read_text())
    assert sidecar["classes"] == CLASSES and sidecar["transforms"] == RESIZE
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    resized = [predictor.resize(image) for image in _images()]
    orig = torch.tensor([image.shape[:2] for image in _images()])
    # Batch 1, each size alone; then all three padded into one batch of 3.
    batches = [[i] for i in range(len(resized))] + [list(range(len(resized)))]
    counts = []
    for indices in batches:
        batch, sizes = pad_batch([resized[i] for i in indices])
        feeds = {"images": batch.numpy(), "image_sizes": sizes.numpy(),
                 "orig_sizes": orig[indices].numpy()}  # fmt: skip
        theirs = split_detections(session.run(None, feeds), len(indices), CLASSES)
        with torch.inference_mode():
            outputs = predictor.model(batch, sizes)
            eager = [predictor._wrap(d) for d in predictor.postprocessor(outputs, orig[indices])]
        for ours, onnx in zip(eager, theirs, strict=True):
            assert_same(onnx, ours)
        counts.append([len(d) for d in eager])
    assert counts[0][0] > 0 and counts[1][0] > 0 and counts[2] == [0]
    assert counts[3][2] == 0 and counts[3][0] > 0


@pytest.mark.slow
def test_infer_backend_onnx(exported, tmp_path: Path) -> None:
    from detector.export import OnnxPredictor

    predictor, path = exported
    onnx = OnnxPredictor(path)
    images = _images()
    for ours, theirs in zip(predictor(images), onnx(images), strict=True):
        assert_same(theirs, ours)
    infer_spec = importlib.util.spec_from_file_location("infer", ROOT / "tools" / "infer.py")
    infer = importlib.util.module_from_spec(infer_spec)
    infer_spec.loader.exec_module(infer)
    from omegaconf import OmegaConf
    from PIL import Image

    (tmp_path / "in").mkdir()
    Image.fromarray(images[0]).save(tmp_path / "in" / "a.png")
    cfg = OmegaConf.create({"checkpoint": str(path), "input": str(tmp_path / "in"),
                            "output": str(tmp_path / "out"), "score_thresh": 0.3,
                            "device": "cpu", "backend": "onnx", "batch_size": 2,
                            "transforms": None})  # fmt: skip
    predictions = infer.run(cfg)
    expected = predictor(images[0]).to_coco()
    assert len(predictions) == len(expected) > 0
    for got, want in zip(predictions, expected, strict=True):
        assert got["file_name"] == "a.png" and got["category_id"] == want["category_id"]
        assert got["bbox"] == pytest.approx(want["bbox"], abs=0.02)
        assert got["score"] == pytest.approx(want["score"], abs=1e-4)
    assert (tmp_path / "out" / "a.png").is_file()


def test_export_tool_rejects_bad_arguments(tmp_path: Path, capsys) -> None:
    tool = _tool()
    assert tool.main([f"checkpoint={tmp_path / 'nope.pt'}"]) == 2
    assert capsys.readouterr().err == (
        f"focaldet: config error: checkpoint: {tmp_path / 'nope.pt'}: no such file\n"
    )
    (tmp_path / "m.pt").write_bytes(b"")
    assert tool.main([f"checkpoint={tmp_path / 'm.pt'}", "format=tflite"]) == 2
    assert "format must be one of onnx, got 'tflite'" in capsys.readouterr().err
