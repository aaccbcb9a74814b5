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
    head = RetinaNetHead(in_channels=8, num_anchors=2, num_classes=3, num_convs=1)
    x = torch.rand(1, 8, 2, 3)
    logits, deltas = head([x])
    raw = head.cls_score(head.cls_subnet(x))  # (1, A*K, H, W), channel a*K + k
    y, xx, a, k = 1, 2, 1, 2
    torch.testing.assert_close(logits[0, (y * 3 + xx) * 2 + a, k], raw[0, a * 3 + k, y, xx])
    raw_box = head.bbox_pred(head.bbox_subnet(x))
    torch.testing.assert_close(deltas[0, (y * 3 + xx) * 2 + a, 3], raw_box[0, a * 4 + 3, y, xx])


def test_group_norm_and_bad_arguments():
    head = RetinaNetHead(in_channels=64, num_classes=2, num_convs=2, norm="gn")
    assert isinstance(head.cls_subnet[0][1], torch.nn.GroupNorm)
    assert head.cls_subnet[0][0].bias is None
    with pytest.raises(ValueError, match="norm must be one of"):
        RetinaNetHead(norm="bn")
    with pytest.raises(ValueError, match="prior_prob"):
        RetinaNetHead(prior_prob=1.0)
