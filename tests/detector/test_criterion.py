import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection._utils import BoxCoder as TVBoxCoder
from torchvision.models.detection._utils import Matcher as TVMatcher
from torchvision.ops import box_iou, sigmoid_focal_loss

import losses._chunked
from detector import AnchorLabeler, BoxCoder, DenseOutputs, Matcher, RetinaNetCriterion
from detector.labeling import BACKGROUND, IGNORE
from losses import FocalLoss, GIoUBoxLoss, SmoothL1BoxLoss

K = 3


def make_criterion(**kw) -> RetinaNetCriterion:
    return RetinaNetCriterion(
        BoxCoder(), AnchorLabeler(Matcher()), FocalLoss(), SmoothL1BoxLoss(beta=0.1), **kw
    )


def make_outputs(anchors: torch.Tensor, n: int, seed: int = 0) -> DenseOutputs:
    g = torch.Generator().manual_seed(seed)
    r = anchors.shape[0]
    logits = torch.randn(n, r, K, generator=g).requires_grad_()
    deltas = (0.1 * torch.randn(n, r, 4, generator=g)).requires_grad_()
    return DenseOutputs(logits, deltas, anchors, [r], torch.tensor([[64, 64]] * n))


def grid_anchors() -> torch.Tensor:
    # 8 x 8 grid of 16 x 16 anchors plus 32 x 32 ones, stride 8 (R = 128).
    xy = torch.stack(torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij"), -1)
    xy = xy.reshape(-1, 2).flip(1) * 8
    small = torch.cat([xy, xy + 16], 1)
    large = torch.cat([xy, xy + 32], 1)
    return torch.cat([small, large])


def reference_losses(
    outputs: DenseOutputs, targets: list[dict]
) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's matcher and focal loss on one-hot targets, normalised over the batch."""
    matcher, coder = TVMatcher(0.5, 0.4, True), TVBoxCoder((1.0, 1.0, 1.0, 1.0))
    cls, box, num_pos = 0.0, 0.0, 0
    for logits, deltas, t in zip(outputs.cls_logits, outputs.box_deltas, targets, strict=True):
        if len(t["boxes"]) == 0:
            matched = torch.full((len(outputs.anchors),), -1)
        else:
            matched = matcher(box_iou(t["boxes"], outputs.anchors))
        fg = matched >= 0
        onehot = torch.zeros_like(logits)
        onehot[fg, t["labels"][matched[fg]]] = 1.0
        valid = matched != TVMatcher.BETWEEN_THRESHOLDS
        cls = cls + sigmoid_focal_loss(logits[valid], onehot[valid], reduction="sum")
        if fg.any():
            target = coder.encode_single(t["boxes"][matched[fg]], outputs.anchors[fg])
            box = box + F.smooth_l1_loss(deltas[fg], target, beta=0.1, reduction="sum")
        num_pos += int(fg.sum())
    return cls / max(num_pos, 1), box / max(num_pos, 1)


TARGETS = [
    {
        "boxes": torch.tensor([[2.0, 3.0, 20.0, 17.0], [30.0, 30.0, 62.0, 60.0]]),
        "labels": torch.tensor([2, 0]),
        "iscrowd": torch.tensor([False, False]),
    },
    {
        "boxes": torch.tensor([[10.0, 40.0, 44.0, 58.0]]),
        "labels": torch.tensor([1]),
        "iscrowd": torch.tensor([False]),
    },
]


def test_matches_torchvision_reference_over_the_batch():
    anchors = grid_anchors()
    outputs = make_outputs(anchors, 2)
    losses = make_criterion()(outputs, TARGETS)
    ref_cls, ref_box = reference_losses(outputs, TARGETS)
    torch.testing.assert_close(losses["loss_cls"], ref_cls)
    torch.testing.assert_close(losses["loss_box"], ref_box)
    (losses["loss_cls"] + losses["loss_box"]).backward()
    assert outputs.cls_logits.grad.abs().sum() > 0 and outputs.box_deltas.grad.abs().sum() > 0


def test_image_without_boxes():
    anchors = grid_anchors()
    outputs = make_outputs(anchors, 1)
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    for box_loss in (SmoothL1BoxLoss(beta=0.1), GIoUBoxLoss()):
        criterion = RetinaNetCriterion(BoxCoder(), AnchorLabeler(Matcher()), FocalLoss(), box_loss)
        losses = criterion(outputs, empty)
        assert losses["loss_box"].item() == 0.0
        assert losses["loss_cls"].item() > 0
        # All anchors are background and the normaliser is clamped to 1.
        ref = sigmoid_focal_loss(
            outputs.cls_logits[0], torch.zeros(len(anchors), K), reduction="sum"
        )
        torch.testing.assert_close(losses["loss_cls"], ref)
        labels, _ = criterion.labeler(anchors, empty[0])
        assert (labels == BACKGROUND).all()


def test_lone_image_equals_image_in_batch():
    anchors = grid_anchors()
    outputs = make_outputs(anchors, 2)
    criterion = make_criterion()
    batch = criterion(outputs, TARGETS)
    total_pos = 0
    parts = {"loss_cls": 0.0, "loss_box": 0.0}
    for i in range(2):
        alone = DenseOutputs(
            outputs.cls_logits[i : i + 1],
            outputs.box_deltas[i : i + 1],
            anchors,
            [len(anchors)],
            outputs.image_sizes[i : i + 1],
        )
        losses = criterion(alone, TARGETS[i : i + 1])
        pos = int((criterion.labeler(anchors, TARGETS[i])[0] >= 0).sum())
        total_pos += pos
        for key in parts:
            parts[key] = parts[key] + losses[key] * pos
    for key in parts:
        torch.testing.assert_close(batch[key], parts[key] / total_pos)


def test_crowd_box_is_an_ignore_region():
    anchors = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # IoU 1 with the normal box -> foreground
            [40.0, 40.0, 60.0, 60.0],  # IoU 1 with the crowd box -> ignore
            [40.0, 40.0, 60.0, 50.0],  # IoU 0.5 with the crowd box -> ignore
            [40.0, 40.0, 60.0, 46.0],  # IoU 0.3 with the crowd box -> background
            [90.0, 90.0, 99.0, 99.0],  # nothing -> background
        ]
    )
    target = {
        "boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [40.0, 40.0, 60.0, 60.0]]),
        "labels": torch.tensor([1, 2]),
        "iscrowd": torch.tensor([False, True]),
    }
    criterion = make_criterion()
    labels, matched = criterion.labeler(anchors, target)
    assert labels.tolist() == [1, IGNORE, IGNORE, BACKGROUND, BACKGROUND]
    torch.testing.assert_close(matched[0], target["boxes"][0])
    # Crowd-only image: no positives (the crowd box claims no low-quality match).
    crowd_only = {k: v[1:] for k, v in target.items()}
    labels, _ = criterion.labeler(anchors, crowd_only)
    assert labels.tolist() == [BACKGROUND, IGNORE, IGNORE, BACKGROUND, BACKGROUND]
    # The loss equals the reference without the crowd box and without the ignored anchors.
    outputs = make_outputs(anchors, 1)
    losses = criterion(outputs, [target])
    logits = outputs.cls_logits[0, [0, 3, 4]]
    onehot = torch.zeros(3, K)
    onehot[0, 1] = 1.0
    torch.testing.assert_close(
        losses["loss_cls"], sigmoid_focal_loss(logits, onehot, reduction="sum")
    )


def test_foreground_anchor_on_crowd_stays_foreground():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    target = {
        "boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 9.0]]),
        "labels": torch.tensor([0, 2]),
        "iscrowd": torch.tensor([False, True]),
    }
    labels, _ = make_criterion().labeler(anchors, target)
    assert labels.tolist() == [0]


def test_normalizer_ema():
    anchors = grid_anchors()
    outputs = make_outputs(anchors, 2)
    criterion = make_criterion(normalizer_momentum=0.9)
    num_pos = sum(int((criterion.labeler(anchors, t)[0] >= 0).sum()) for t in TARGETS)
    plain = make_criterion()(outputs, TARGETS)
    losses = criterion(outputs, TARGETS)
    expected_norm = 0.9 * 100.0 + 0.1 * num_pos
    torch.testing.assert_close(losses["loss_cls"], plain["loss_cls"] * num_pos / expected_norm)
    assert criterion.loss_normalizer.item() == pytest.approx(expected_norm)
    criterion.eval()
    criterion(outputs, TARGETS)
    assert criterion.loss_normalizer.item() == pytest.approx(expected_norm)


def test_target_classes_are_checked_once_not_in_the_loss(monkeypatch):
    """Classes outside 0..K-1 are named per image (on CPU; on a GPU a device-side assert); the
    loss itself does not read the labels back (the labeler made them)."""
    anchors = grid_anchors()
    outputs = make_outputs(anchors, 2)
    for bad_class in (K, -1, BACKGROUND):
        bad = [TARGETS[0], {**TARGETS[1], "labels": torch.tensor([bad_class]), "image_id": 9}]
        with pytest.raises(ValueError, match=rf"image 9: target classes must be in 0..{K - 1}"):
            make_criterion()(outputs, bad)
    expected = make_criterion()(outputs, TARGETS)

    def no_host_read(*args):
        raise AssertionError("label values read back to the host")

    monkeypatch.setattr(losses._chunked, "check_label_values", no_host_read)
    got = make_criterion()(outputs, TARGETS)
    assert torch.equal(got["loss_cls"], expected["loss_cls"])


def test_bfloat16_outputs_give_the_losses_of_their_float32_copy():
    """The criterion casts nothing itself: the losses compute in float32 from bf16 outputs, with
    the values and gradients a float32 copy of the same outputs gives."""
    anchors = grid_anchors()
    ref = make_outputs(anchors, 2)
    low = DenseOutputs(
        ref.cls_logits.detach().bfloat16().requires_grad_(),
        ref.box_deltas.detach().bfloat16().requires_grad_(),
        anchors, [len(anchors)], ref.image_sizes,
    )  # fmt: skip
    copy = low._replace(cls_logits=low.cls_logits.float(), box_deltas=low.box_deltas.float())
    for box_loss in (SmoothL1BoxLoss(beta=0.1), GIoUBoxLoss()):
        criterion = RetinaNetCriterion(BoxCoder(), AnchorLabeler(Matcher()), FocalLoss(), box_loss)
        got, want = criterion(low, TARGETS), criterion(copy, TARGETS)
        for key in ("loss_cls", "loss_box"):
            assert got[key].dtype == torch.float32 and torch.equal(got[key], want[key])
        grads = torch.autograd.grad(sum(got.values()), [low.cls_logits, low.box_deltas])
        want_grads = torch.autograd.grad(sum(want.values()), [low.cls_logits, low.box_deltas])
        for g, w in zip(grads, want_grads, strict=True):
            assert g.dtype == torch.bfloat16 and torch.equal(g, w)


def test_bad_targets():
    anchors = grid_anchors()
    outputs = make_outputs(anchors, 1)
    with pytest.raises(ValueError, match="2 targets for 1 images"):
        make_criterion()(outputs, TARGETS)
    bad = [{"boxes": torch.zeros(2, 3), "labels": torch.zeros(2, dtype=torch.int64), "image_id": 7}]
    with pytest.raises(ValueError, match=r"AnchorLabeler: image 7: boxes must be \(M, 4\)"):
        make_criterion()(outputs, bad)
    with pytest.raises(ValueError, match="normalizer_momentum"):
        make_criterion(normalizer_momentum=1.0)
