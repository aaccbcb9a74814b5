import math

import pytest
import torch

from detector import RetinaNetHead


def test_prior_init():
    torch.manual_seed(0)
    head = RetinaNetHead(in_channels=64, num_anchors=9, num_classes=5, num_convs=4)
    # §4.1: b = -log((1 - π) / π) with π = 0.01, i.e. -log(99).
    torch.testing.assert_close(head.cls_score.bias, torch.full((45,), -math.log(99.0)))
    assert head.bbox_pred.bias.abs().max() == 0
    assert abs(head.cls_subnet[0][0].weight.std().item() - 0.01) < 1e-3
    assert len(head.cls_subnet) == 4 and len(head.bbox_subnet) == 4
    levels = [torch.rand(2, 64, 8, 8), torch.rand(2, 64, 4, 4)]
    logits, deltas = head(levels)
    assert logits.shape == (2, (64 + 16) * 9, 5) and deltas.shape == (2, (64 + 16) * 9, 4)
    # The initial foreground probability is close to π everywhere.
    assert torch.sigmoid(logits).mean().item() == pytest.approx(0.01, rel=0.05)


def test_output_order_is_y_x_anchor_class():
    torch.manual_seed(0)
    num_anchors, num_classes = 2, 3
    head = RetinaNetHead(
        in_channels=8, num_anchors=num_anchors, num_classes=num_classes, num_convs=1
    )
    levels = [torch.rand(1, 8, 2, 3), torch.rand(1, 8, 1, 2)]
    with torch.no_grad():
        logits, deltas = head(levels)
        raws = [
            (head.cls_score(head.cls_subnet(x)), head.bbox_pred(head.bbox_subnet(x)))
            for x in levels
        ]
    # Every output row r = offset_l + (y W_l + x) A + a reads channel a K + k (a 4 + j for the
    # deltas) at (y, x) of its own level, through the one set of weights shared by all levels.
    offset = 0
    for (raw_cls, raw_box), x in zip(raws, levels, strict=True):
        _, _, height, width = x.shape
        for y in range(height):
            for xx in range(width):
                for a in range(num_anchors):
                    row = offset + (y * width + xx) * num_anchors + a
                    for k in range(num_classes):
                        assert logits[0, row, k] == raw_cls[0, a * num_classes + k, y, xx]
                    for j in range(4):
                        assert deltas[0, row, j] == raw_box[0, a * 4 + j, y, xx]
        offset += height * width * num_anchors
    assert logits.shape == (1, offset, num_classes) and deltas.shape == (1, offset, 4)


def test_group_norm_and_bad_arguments():
    head = RetinaNetHead(in_channels=64, num_classes=2, num_convs=2, norm="gn")
    assert isinstance(head.cls_subnet[0][1], torch.nn.GroupNorm)
    assert head.cls_subnet[0][0].bias is None
    with pytest.raises(ValueError, match="norm must be one of"):
        RetinaNetHead(norm="bn")
    with pytest.raises(ValueError, match="prior_prob"):
        RetinaNetHead(prior_prob=1.0)
