"""Figure 4 (detector/paper/loss_cdf.py, tools/loss_cdf.py): exact curves on a hand-built case."""

import json
import math
import runpy
import subprocess
import sys
from pathlib import Path

import hydra.utils
import pytest
import torch
from omegaconf import OmegaConf

from data.synthetic import ensure_synthetic
from detector import AnchorLabeler, DenseOutputs, Matcher
from detector.checkpoint import save_checkpoint
from detector.engine.state import inference_checkpoint
from detector.labeling import IGNORE
from detector.paper.loss_cdf import (
    LossSamples,
    add_batch,
    cumulative_loss,
    labeler_from_config,
    share_of_hardest,
)

ROOT = Path(__file__).resolve().parents[3]


def test_cumulative_loss_by_hand() -> None:
    fraction, cumulative = cumulative_loss(torch.tensor([1.0, 3.0, 0.0, 4.0]))
    assert fraction.tolist() == [0.25, 0.5, 0.75, 1.0]
    assert cumulative.tolist() == [0.0, 0.125, 0.5, 1.0]
    assert share_of_hardest(torch.tensor([1.0, 3.0, 0.0, 4.0]), 0.25) == 0.5
    fraction, cumulative = cumulative_loss(torch.zeros(3))
    assert cumulative.tolist() == [0.0, 0.0, 0.0]
    assert cumulative_loss(torch.zeros(0))[0].numel() == 0


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_anchor_losses_and_curves_are_exact() -> None:
    """One class; anchor 0 is the ground truth box, anchors 1–3 background, anchor 4 ignored."""
    anchors = torch.tensor(
        [[0, 0, 10, 10], [100, 0, 110, 10], [200, 0, 210, 10], [300, 0, 310, 10], [4, 0, 14, 10]],
        dtype=torch.float32,
    )
    xs = [0.0, 0.0, math.log(1 / 3), math.log(3), 5.0]  # p = .5, .5, .25, .75, σ(5)
    outputs = DenseOutputs(
        torch.tensor(xs, dtype=torch.float64)[None, :, None],
        torch.zeros(1, 5, 4),
        anchors,
        [5],
        torch.tensor([[20, 320]]),
    )
    target = {"boxes": anchors[:1].clone(), "labels": torch.tensor([0]), "image_id": 7}
    labeler = AnchorLabeler(Matcher(allow_low_quality_matches=False))
    assert labeler(anchors, target)[0][4] == IGNORE  # IoU 6/14 with the box
    samples = LossSamples((0.0, 2.0))
    add_batch(samples, outputs, [target], labeler)
    for gamma in (0.0, 2.0):
        # eq. 5 without α: positive (1 - p)^γ (-log p), negative p^γ (-log(1 - p)).
        positive = [(1 - sigmoid(xs[0])) ** gamma * softplus(-xs[0])]
        negative = [sigmoid(x) ** gamma * softplus(x) for x in xs[1:4]]
        torch.testing.assert_close(
            samples.get("positive", gamma), torch.tensor(positive, dtype=torch.float64)
        )
        torch.testing.assert_close(
            samples.get("negative", gamma), torch.tensor(negative, dtype=torch.float64)
        )
        ordered = sorted(negative)
        expected = [sum(ordered[: i + 1]) / sum(ordered) for i in range(3)]
        _, cumulative = cumulative_loss(samples.get("negative", gamma))
        torch.testing.assert_close(cumulative, torch.tensor(expected, dtype=torch.float64))
    # γ = 2 moves the loss to the hardest negative (p = .75): its share grows from 58.6% to 83.4%.
    ce_share = share_of_hardest(samples.get("negative", 0.0), 1 / 3)
    fl_share = share_of_hardest(samples.get("negative", 2.0), 1 / 3)
    assert ce_share == pytest.approx(softplus(math.log(3)) / sum(
        softplus(x) for x in xs[1:4]), rel=1e-12)  # fmt: skip
    assert fl_share > ce_share


def test_labeler_from_a_training_config() -> None:
    """The matcher settings of the run, read as values: no _target_ of the file is built."""
    settings = {"fg_iou_thresh": 0.6, "bg_iou_thresh": 0.3, "allow_low_quality_matches": False}
    foreign = {"_target_": "os.system", **settings}
    current = {"criterion": {"labeler": {"_target_": "os.system", "matcher": foreign}}}
    before_labeler = {"criterion": {"matcher": foreign}}  # checkpoints of older runs
    for config in (current, before_labeler):
        matcher = labeler_from_config(config).matcher
        assert type(matcher) is Matcher
        assert (matcher.fg_iou_thresh, matcher.bg_iou_thresh) == (0.6, 0.3)
        assert matcher.allow_low_quality_matches is False
    default = labeler_from_config({}).matcher
    assert (default.fg_iou_thresh, default.bg_iou_thresh, default.allow_low_quality_matches) == (
        0.5, 0.4, True)  # fmt: skip


TINY_MODEL = {
    "_target_": "detector.RetinaNet",
    "backbone": {"_target_": "detector.ResNetBackbone", "depth": 18, "frozen_stages": 0,
                 "norm": "bn", "weights": None},
    "fpn": {"_target_": "detector.FPN", "in_channels": [128, 256, 512], "out_channels": 16},
    "head": {"_target_": "detector.RetinaNetHead", "in_channels": 16, "num_anchors": 9,
             "num_classes": 5, "num_convs": 1},
    "anchor_generator": {"_target_": "detector.AnchorGenerator", "sizes": [16, 32, 64, 128, 256]},
}  # fmt: skip


def test_tool_writes_the_figure(tmp_path: Path) -> None:
    data = tmp_path / "synthetic"
    ensure_synthetic(data, seed=0, num_train=1, num_val=3)
    classes = json.loads((data / "annotations" / "instances_val.json").read_text())["categories"]
    torch.manual_seed(0)
    model = hydra.utils.instantiate(TINY_MODEL, _convert_="all").eval()
    ckpt = inference_checkpoint(
        model, TINY_MODEL, None, [{"id": c["id"], "name": c["name"]} for c in classes]
    )
    save_checkpoint(tmp_path / "model.pt", ckpt)
    out = tmp_path / "fig4.png"
    resize = "[{_target_:data.transforms.ResizeShortestEdge,short_sizes:[64],max_size:96}]"
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "loss_cdf.py"), f"checkpoint={tmp_path / 'model.pt'}",
         f"data.root={data}", f"data.val.transforms={resize}", "workers=0", "device=cpu",
         f"out={out}", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert "negative γ=2:" in done.stdout and "positive γ=0.5:" in done.stdout


def test_tool_rejects_a_missing_checkpoint(tmp_path: Path) -> None:
    tool = runpy.run_path(str(ROOT / "tools" / "loss_cdf.py"))  # not __main__: nothing runs
    cfg = OmegaConf.create({"checkpoint": str(tmp_path / "no.pt")})
    with pytest.raises(tool["ConfigError"], match=r"checkpoint: .*no.pt does not exist"):
        tool["validate"](cfg)
