"""focaldet's converted RetinaNet against a seeded torchvision ``retinanet_resnet50_fpn``."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.models.detection import retinanet_resnet50_fpn

from data.decode import read_image
from data.shared import RACCOON as RACCOON_DATASET
from data.transforms import build_transforms
from detector import Predictor, build_from_checkpoint, convert_torchvision_state_dict
from detector.checkpoint import load_checkpoint, save_checkpoint
from detector.torchvision_convert import torchvision_val_transforms

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "convert_torchvision.py"
RACCOON = RACCOON_DATASET / "images"
HEIGHT, WIDTH = 256, 384  # multiples of 128: neither model pads differently
SCORE_THRESH = 0.1


def seeded_torchvision(**kwargs):
    """A randomly initialised torchvision RetinaNet (no download) with varied weights."""
    torch.manual_seed(0)
    model = retinanet_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=91, score_thresh=SCORE_THRESH, **kwargs
    )
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        # Non-trivial BatchNorm statistics and a sharper head, so that the comparison sees
        # varied features and many detections above the threshold.
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
        model.head.classification_head.cls_logits.weight.normal_(0, 0.3, generator=g)
        model.head.regression_head.bbox_reg.weight.normal_(0, 0.05, generator=g)
    return model.eval()


@pytest.fixture(scope="module")
def torchvision_model():
    return seeded_torchvision(min_size=HEIGHT, max_size=WIDTH, detections_per_img=100)


@pytest.fixture(scope="module")
def checkpoint(torchvision_model):
    # nn.BatchNorm2d's eps (1e-5) becomes the FrozenBatchNorm eps.
    return convert_torchvision_state_dict(torchvision_model.state_dict(), bn_eps=1e-5)


def test_same_anchors_head_outputs_and_detections(torchvision_model, checkpoint):
    model, post, classes = build_from_checkpoint(checkpoint)
    post.score_thresh = SCORE_THRESH
    g = torch.Generator().manual_seed(2)
    images = [torch.rand(3, HEIGHT, WIDTH, generator=g)]
    tv = torchvision_model
    with torch.no_grad():
        image_list, _ = tv.transform(images)
        assert image_list.tensors.shape == (1, 3, HEIGHT, WIDTH)
        features = list(tv.backbone(image_list.tensors).values())
        tv_head = tv.head(features)
        tv_anchors = tv.anchor_generator(image_list, features)[0]
        tv_dets = tv(images)
        outputs = model(images)
        dets = post(outputs)
    torch.testing.assert_close(outputs.anchors, tv_anchors, rtol=0, atol=0)
    torch.testing.assert_close(outputs.cls_logits, tv_head["cls_logits"], rtol=0, atol=1e-4)
    torch.testing.assert_close(outputs.box_deltas, tv_head["bbox_regression"], rtol=0, atol=1e-4)
    for ours, theirs in zip(dets, tv_dets, strict=True):
        assert len(ours["boxes"]) == len(theirs["boxes"]) == 100
        torch.testing.assert_close(ours["boxes"], theirs["boxes"], rtol=0, atol=1e-3)
        torch.testing.assert_close(ours["scores"], theirs["scores"], rtol=0, atol=1e-5)
        assert ours["labels"].tolist() == theirs["labels"].tolist()
    assert len(classes) == 91


def test_checkpoint_format(checkpoint, tmp_path):
    assert checkpoint["format_version"] == 1
    assert checkpoint["model_config"]["_target_"] == "detector.RetinaNet"
    assert checkpoint["model_config"]["fpn"]["p6_from"] == "p5"
    assert checkpoint["model_config"]["head"]["num_classes"] == 91
    classes = checkpoint["classes"]
    assert classes[0] == {"id": 0, "name": "unused_0"}
    assert classes[1] == {"id": 1, "name": "person"} and classes[12]["name"] == "unused_12"
    assert classes[90] == {"id": 90, "name": "toothbrush"}
    path = save_checkpoint(tmp_path / "tv.pt", checkpoint)
    model, post, _ = build_from_checkpoint(load_checkpoint(path))
    assert post.score_thresh == 0.05 and post.detections_per_img == 100
    assert model.backbone.bn1.eps == 1e-5
    assert not any(p.requires_grad for p in model.backbone.layer1.parameters())


def test_converter_rejects_wrong_state_dicts(torchvision_model):
    state = torchvision_model.state_dict()
    with pytest.raises(ValueError, match="no 'head.classification_head.cls_logits.weight'"):
        convert_torchvision_state_dict({"x": torch.zeros(1)})
    wrong = dict(state)
    wrong["head.classification_head.cls_logits.weight"] = torch.zeros(9 * 80, 256, 3, 3)
    with pytest.raises(ValueError, match="got 720"):
        convert_torchvision_state_dict(wrong)
    extra = dict(state)
    extra["roi_heads.box_predictor.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="unexpected key 'roi_heads"):
        convert_torchvision_state_dict(extra)


def test_command_line_tool(torchvision_model, tmp_path, capsys, load_tool):
    tool = load_tool("convert_torchvision")
    src, out = tmp_path / "tv.pth", tmp_path / "out" / "focaldet.pt"
    torch.save({"model": torchvision_model.state_dict()}, src)
    assert tool.main([f"src={src}", f"out={out}", "bn_eps=1e-5"]) == 0
    ckpt = load_checkpoint(out)
    assert ckpt["model_config"]["backbone"]["norm_eps"] == 1e-5
    torch.testing.assert_close(
        ckpt["model"]["head.cls_score.weight"],
        torchvision_model.state_dict()["head.classification_head.cls_logits.weight"],
    )
    assert tool.main([f"src={tmp_path / 'nope.pth'}", f"out={out}"]) == 2
    assert capsys.readouterr().err == (
        f"focaldet: config error: src: {tmp_path / 'nope.pth'}: no such file\n"
    )
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(SystemExit, match="not a torchvision retinanet_resnet50_fpn"):
        tool.main([f"src={bad}", f"out={out}"])
    (tmp_path / "text.pth").write_text("not a tensor file")
    with pytest.raises(SystemExit, match="cannot be read as a PyTorch file"):
        tool.main([f"src={tmp_path / 'text.pth'}", f"out={out}"])
    assert tool.main([f"src={src}", f"out={out}", "bn_eps=x"]) == 2
    assert capsys.readouterr().err == (
        "focaldet: config error: convert_torchvision.bn_eps: Value 'x' of type 'str' could not be"
        " converted to Float\n"
    )


def test_command_line_usage_as_a_script():
    done = subprocess.run(
        [sys.executable, str(TOOL), "src=a.pth", "dst=b.pt"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr == (
        "focaldet: config error: unknown key 'dst' (choose from src, out, bn_eps)\n"
    )


def assert_same_detections(ours, theirs, tie=1e-5):
    """Same boxes (0.01 px), scores (1e-4) and labels in the same order, except that detections
    whose scores lie within ``tie`` of each other may come in either order (float rounding of
    ~1e-6, e.g. another convolution algorithm, decides such ties; torchvision itself reorders
    them from one CPU to another)."""
    assert len(ours["scores"]) == len(theirs["scores"])
    torch.testing.assert_close(ours["scores"], theirs["scores"], rtol=0, atol=1e-4)
    scores = theirs["scores"]
    groups = torch.cat([torch.zeros(1, dtype=torch.long), (scores[:-1] - scores[1:] > tie).long()])
    groups = groups.cumsum(0)
    for g in groups.unique().tolist():
        idx = (groups == g).nonzero().flatten()

        def canonical(det, idx=idx):
            rows = torch.cat([det["labels"][idx, None].float(), det["boxes"][idx]], dim=1)
            order = sorted(range(len(idx)), key=lambda i: rows[i].tolist())
            return rows[order]

        a, b = canonical(ours), canonical(theirs)
        assert a[:, 0].tolist() == b[:, 0].tolist()
        torch.testing.assert_close(a[:, 1:], b[:, 1:], rtol=0, atol=0.01)


def _odd_size_photos():
    """A generated image and a raccoon photo (417 x 650, where ``../shared`` has them; set
    FOCALDET_SHARED elsewhere), no side a multiple of 32."""
    rng = np.random.default_rng(3)
    generated = rng.integers(0, 256, (389, 517, 3), dtype=np.uint8)
    photos = [("generated 389x517", generated)]
    raccoon = RACCOON / "raccoon-1.jpg"
    if raccoon.is_file():
        photos.append((raccoon.name, read_image(raccoon)))
    return photos


@pytest.mark.slow
def test_converted_checkpoint_detects_what_torchvision_detects_at_800_1333(tmp_path):
    """torchvision's own transform settings (min_size 800, max_size 1333) on odd-size photos,
    through the Python predictor and tools/infer.py."""
    tv = seeded_torchvision(detections_per_img=300)
    ckpt = convert_torchvision_state_dict(tv.state_dict(), bn_eps=1e-5)
    path = save_checkpoint(tmp_path / "tv.pt", ckpt)
    predictor = Predictor.from_checkpoint(path, device="cpu", score_thresh=SCORE_THRESH)
    predictor.postprocessor.detections_per_img = 300  # above the NMS survivors: no cut-off tie
    for name, image in _odd_size_photos():
        with torch.no_grad():
            theirs = tv([torch.from_numpy(image).permute(2, 0, 1).float() / 255])[0]
        det = predictor(image)
        ours = {"boxes": det.boxes, "scores": det.scores, "labels": det.labels}
        assert len(theirs["scores"]) > 100, name
        assert_same_detections(ours, theirs)
    if len(_odd_size_photos()) == 1:
        pytest.skip(f"checked on the generated image only: no raccoon photos at {RACCOON}")


def test_torchvision_resize_sizes_and_pixels():
    """TorchvisionResize gives torchvision's output size (floor, not round) and pixels."""
    tv = seeded_torchvision()
    rng = np.random.default_rng(0)
    for shape in [(417, 650), (389, 517), (1000, 333), (64, 2000)]:
        image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        resize = build_transforms(torchvision_val_transforms(), train=False)
        empty = np.zeros((0, 4))
        ours = resize(image=image, bboxes=empty, labels=np.zeros(0), iscrowd=np.zeros(0))["image"]
        tensor = torch.from_numpy(image).permute(2, 0, 1).float() / 255
        theirs, _ = tv.transform.resize(tensor, None)
        assert ours.shape == (*theirs.shape[1:], 3) and ours.dtype == np.float32, shape
        torch.testing.assert_close(torch.from_numpy(ours).permute(2, 0, 1), theirs)
