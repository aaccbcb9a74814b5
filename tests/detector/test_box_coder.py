import math

import torch
from torchvision.models.detection._utils import BoxCoder as TVBoxCoder

from detector import BBOX_XFORM_CLAMP, BoxCoder


def _boxes(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 200
    wh = torch.rand(n, 2, generator=g) * 100 + 4
    return torch.cat([xy, xy + wh], dim=1)


def test_encode_decode_round_trip():
    anchors, boxes = _boxes(50, 0), _boxes(50, 1)
    for weights in [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]:
        coder = BoxCoder(weights)
        deltas = coder.encode(anchors, boxes)
        torch.testing.assert_close(coder.decode(anchors, deltas), boxes, rtol=0, atol=1e-4)


def test_hand_computed_deltas():
    anchor = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    box = torch.tensor([[5.0, 0.0, 25.0, 40.0]])  # centre (15, 20), size 20 x 40
    deltas = BoxCoder().encode(anchor, box)
    expected = torch.tensor([[10 / 10, 10 / 20, math.log(2.0), math.log(2.0)]])
    torch.testing.assert_close(deltas, expected)


def test_matches_torchvision_box_coder():
    anchors, boxes = _boxes(40, 2), _boxes(40, 3)
    tv = TVBoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
    ours = BoxCoder()
    torch.testing.assert_close(ours.encode(anchors, boxes), tv.encode_single(boxes, anchors))
    deltas = torch.randn(40, 4, generator=torch.Generator().manual_seed(4))
    deltas[0, 2:] = 20.0  # beyond the clamp
    torch.testing.assert_close(
        ours.decode(anchors, deltas), tv.decode_single(deltas, anchors), rtol=0, atol=0
    )


def test_decode_clamps_and_runs_in_float32():
    anchor = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    deltas = torch.tensor([[0.0, 0.0, 50.0, 50.0]], dtype=torch.bfloat16)
    boxes = BoxCoder().decode(anchor, deltas)
    assert boxes.dtype == torch.float32
    assert math.log(1000.0 / 16) == BBOX_XFORM_CLAMP
    torch.testing.assert_close(boxes, torch.tensor([[-492.0, -492.0, 508.0, 508.0]]))


def test_broadcasts_over_images():
    anchors, deltas = _boxes(7, 5), torch.randn(3, 7, 4)
    batched = BoxCoder().decode(anchors, deltas)
    assert batched.shape == (3, 7, 4)
    torch.testing.assert_close(batched[1], BoxCoder().decode(anchors, deltas[1]))


def test_hand_computed_deltas_with_weights():
    # Anchor centre (5, 10), size 10 x 20; box centre (15, 40), size 20 x 80: unweighted deltas
    # (1, 1.5, log 2, log 4). Each weight multiplies its own delta on encode, divides on decode.
    anchor = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    box = torch.tensor([[5.0, 0.0, 25.0, 80.0]])
    coder = BoxCoder((2.0, 3.0, 4.0, 5.0))
    deltas = coder.encode(anchor, box)
    expected = torch.tensor([[2 * 1.0, 3 * 1.5, 4 * math.log(2.0), 5 * math.log(4.0)]])
    torch.testing.assert_close(deltas, expected)
    torch.testing.assert_close(coder.decode(anchor, expected), box)


def test_matches_torchvision_box_coder_with_weights():
    anchors, boxes = _boxes(40, 6), _boxes(40, 7)
    weights = (10.0, 10.0, 5.0, 5.0)  # Faster R-CNN's, unlike RetinaNet's ones
    tv, ours = TVBoxCoder(weights=weights), BoxCoder(weights)
    torch.testing.assert_close(ours.encode(anchors, boxes), tv.encode_single(boxes, anchors))
    deltas = torch.randn(40, 4, generator=torch.Generator().manual_seed(8)) * 5
    torch.testing.assert_close(
        ours.decode(anchors, deltas), tv.decode_single(deltas, anchors), rtol=0, atol=0
    )
