"""detector.Predictor: every input type gives the same detections as the model and
post-processor run by hand, a batch equals its images alone, and bad inputs name themselves."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data.transforms import build_transforms
from detector import BoxCoder, Predictor, RetinaNetPostProcessor
from detector.checkpoint import CheckpointError, save_checkpoint
from detector.engine.state import inference_checkpoint
from detector.predictor import InputError

RESIZE = [{"_target_": "data.transforms.ResizeShortestEdge", "short_sizes": [96], "max_size": 160}]
CLASSES = [{"id": 7, "name": "cat"}, {"id": 9, "name": "dog"}, {"id": 11, "name": "owl"}]
MODEL = {
    "_target_": "detector.RetinaNet",
    "backbone": {"_target_": "detector.ResNetBackbone", "depth": 18, "weights": None},
    "fpn": {"_target_": "detector.FPN", "in_channels": [128, 256, 512], "out_channels": 32},
    "head": {"_target_": "detector.RetinaNetHead", "in_channels": 32, "num_anchors": 9,
             "num_classes": 3, "num_convs": 1},
    "anchor_generator": {"_target_": "detector.AnchorGenerator"},
}  # fmt: skip
POST = {"_target_": "detector.RetinaNetPostProcessor",
        "box_coder": {"_target_": "detector.BoxCoder"}, "score_thresh": 0.05}  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random ResNet-18 checkpoint whose classification layer is sharpened, so that scores
    spread over (0, 1) and many pass 0.05."""
    from detector.safe_config import MODEL_TARGETS, build_config

    torch.manual_seed(0)
    model = build_config(MODEL, MODEL_TARGETS, "model").eval()
    with torch.no_grad():
        model.head.cls_score.weight.normal_(0, 0.05)
        model.head.cls_score.bias.zero_()
    ckpt = inference_checkpoint(model, MODEL, POST, CLASSES)
    ckpt["config"] = {"data": {"val": {"transforms": RESIZE}}}
    path = tmp_path_factory.mktemp("predictor") / "model.pt"
    save_checkpoint(path, ckpt)
    return path


@pytest.fixture(scope="module")
def predictor(checkpoint: Path) -> Predictor:
    return Predictor.from_checkpoint(checkpoint, device="cpu", batch_size=4)


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for shape in
            [(120, 90, 3), (120, 90, 3), (61, 203, 3), (120, 90, 3)]]  # fmt: skip


def _by_hand(predictor: Predictor, image: np.ndarray) -> dict[str, torch.Tensor]:
    """The model and post-processor called directly on the resized image."""
    transforms = build_transforms(RESIZE, train=False)
    empty = np.zeros((0, 4))
    resized = transforms(image=image, bboxes=empty, labels=np.zeros(0), iscrowd=np.zeros(0))
    tensor = torch.from_numpy(resized["image"]).permute(2, 0, 1)
    with torch.no_grad():
        outputs = predictor.model([tensor])
        return predictor.postprocessor(outputs, torch.tensor([image.shape[:2]]))[0]


def test_detections_equal_the_model_run_by_hand(predictor: Predictor) -> None:
    image = _images()[2]
    det = predictor(image)
    expected = _by_hand(predictor, image)
    assert 0 < len(det) <= 100
    torch.testing.assert_close(det.boxes, expected["boxes"], rtol=0, atol=0)
    torch.testing.assert_close(det.scores, expected["scores"], rtol=0, atol=0)
    assert det.labels.tolist() == expected["labels"].tolist()
    assert det.category_ids == [CLASSES[k]["id"] for k in det.labels.tolist()]
    assert det.class_names == [CLASSES[k]["name"] for k in det.labels.tolist()]
    # Original pixels: inside the 203 x 61 image.
    assert det.boxes[:, 2].max() <= 203 and det.boxes[:, 3].max() <= 61
    coco = det.to_coco(image_id=5)
    x0, y0, x1, y1 = det.boxes[0].tolist()
    assert coco[0]["image_id"] == 5 and coco[0]["category_id"] == det.category_ids[0]
    assert coco[0]["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0], abs=1e-4)
    assert coco[0]["score"] == det.scores[0].item() and len(coco) == len(det)


def test_a_batch_equals_each_image_alone(predictor: Predictor) -> None:
    images = _images()
    together = predictor(images)
    assert len(together) == len(images)
    for image, det in zip(images, together, strict=True):
        alone = predictor(image)
        torch.testing.assert_close(det.boxes, alone.boxes, rtol=0, atol=1e-3)
        torch.testing.assert_close(det.scores, alone.scores, rtol=0, atol=1e-5)
        assert det.labels.tolist() == alone.labels.tolist()


def test_every_input_type_gives_the_same_detections(predictor: Predictor, tmp_path: Path) -> None:
    image = _images()[0]
    Image.fromarray(image).save(tmp_path / "a.png")
    chw = torch.from_numpy(image).permute(2, 0, 1)
    inputs = [str(tmp_path / "a.png"), tmp_path / "a.png", Image.fromarray(image), image, chw]
    reference = predictor(image)
    for det in predictor(inputs):  # one batch of five: convolution sums in another order
        torch.testing.assert_close(det.boxes, reference.boxes, rtol=0, atol=1e-3)
        torch.testing.assert_close(det.scores, reference.scores, rtol=0, atol=1e-5)
        assert det.labels.tolist() == reference.labels.tolist()
    # A float tensor in [0, 1] is resized in float: close to, not equal to, the uint8 path.
    floats = predictor(chw.float() / 255)
    assert len(floats) > 0
    drawn = predictor.draw(image, reference)
    assert drawn.shape == image.shape and drawn.dtype == np.uint8 and (drawn != image).any()


def test_bf16_autocast_runs_and_returns_float32(checkpoint: Path) -> None:
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu", amp="bf16")
    det = predictor(_images()[0])
    assert det.boxes.dtype == det.scores.dtype == torch.float32 and len(det) > 0


def test_score_thresh_replaces_the_checkpoints(checkpoint: Path, predictor: Predictor) -> None:
    strict = Predictor.from_checkpoint(checkpoint, device="cpu", score_thresh=0.3)
    image = _images()[2]
    assert predictor.postprocessor.score_thresh == 0.05
    high = strict(image)
    assert (high.scores > 0.3).all()
    assert len(high) == int((predictor(image).scores > 0.3).sum())


def test_bad_inputs_raise_one_clear_error(predictor: Predictor, tmp_path: Path) -> None:
    good = _images()[0]
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a JPEG")
    cases = [
        (
            tmp_path / "missing.png",
            re.escape(f"input 1 ({tmp_path / 'missing.png'}): no such file"),
        ),
        (tmp_path / "broken.jpg", re.escape(f"input 1 ({tmp_path / 'broken.jpg'}): cannot decode")),
        (good[..., 0], r"input 1: expected an \(H, W, 3\) uint8 RGB array, got uint8 \(120, 90\)"),
        (good.astype(np.float32), "input 1: expected an .* uint8 RGB array, got float32"),
        (torch.zeros(4, 8, 8), r"input 1: expected a \(3, H, W\) tensor, got \(4, 8, 8\)"),
        (torch.zeros(3, 8, 8, dtype=torch.int32), "input 1: expected a uint8 or float tensor"),
        (42, "input 1: unsupported type int"),
    ]
    for bad, message in cases:
        with pytest.raises(InputError, match=message):
            predictor([good, bad])


def test_a_checkpoint_transform_that_runs_code_is_refused(checkpoint: Path, tmp_path: Path) -> None:
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["config"]["data"]["val"]["transforms"] = [{"_target_": "os.system", "command": "true"}]
    save_checkpoint(tmp_path / "evil.pt", ckpt)
    with pytest.raises(CheckpointError, match=r"transforms\[0\]._target_: 'os.system' is not"):
        Predictor.from_checkpoint(tmp_path / "evil.pt", device="cpu")


def test_constructor_checks() -> None:
    model = build_small()
    post = RetinaNetPostProcessor(BoxCoder())
    with pytest.raises(ValueError, match="amp must be None, 'bf16' or 'fp16'"):
        Predictor(model, post, CLASSES, RESIZE, amp="int8")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        Predictor(model, post, CLASSES, RESIZE, batch_size=0)


def build_small() -> torch.nn.Module:
    from detector.safe_config import MODEL_TARGETS, build_config

    return build_config(MODEL, MODEL_TARGETS, "model").eval()
