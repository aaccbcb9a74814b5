import math

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList

from detector import AnchorGenerator
from detector.anchors import torchvision_anchor_sizes


def test_hand_computed_small_case():
    # One level, stride 16, sizes 32 and 64, ratios 0.5 and 1, on a 2 x 3 feature map.
    gen = AnchorGenerator(sizes=[[32, 64]], strides=[16], ratios=[0.5, 1.0])
    assert gen.num_anchors_per_location == 4
    # ratio 0.5: w = s / sqrt(0.5), h = s * sqrt(0.5): 45.25 x 22.63 and 90.51 x 45.25,
    # halves 22.63/11.31 and 45.25/22.63, rounded to 23/11 and 45/23.
    base = torch.tensor(
        [
            [-23.0, -11.0, 23.0, 11.0],
            [-45.0, -23.0, 45.0, 23.0],
            [-16.0, -16.0, 16.0, 16.0],
            [-32.0, -32.0, 32.0, 32.0],
        ]
    )
    anchors = gen([(2, 3)], "cpu")
    assert anchors.shape == (2 * 3 * 4, 4) and anchors.dtype == torch.float32
    expected = []
    for y in range(2):
        for x in range(3):
            shift = torch.tensor([x * 16.0, y * 16.0, x * 16.0, y * 16.0])
            expected.append(base + shift)
    torch.testing.assert_close(anchors, torch.cat(expected), rtol=0, atol=0)


def test_default_scales_are_octave_thirds():
    gen = AnchorGenerator()
    assert gen.num_anchors_per_location == 9 and gen.num_levels == 5
    assert gen.level_sizes[0] == pytest.approx([32, 32 * 2 ** (1 / 3), 32 * 2 ** (2 / 3)])
    # P3's largest square anchor: 32 * 2^(2/3) = 50.8, half 25.4 -> 25.
    assert gen.cell_anchors[0][5].tolist() == [-25.0, -25.0, 25.0, 25.0]


def test_equals_torchvision_anchor_generator():
    shapes = [(32, 48), (16, 24), (8, 12), (4, 6), (2, 3)]
    sizes = torchvision_anchor_sizes()
    assert sizes[0] == [32, 40, 50] and sizes[4] == [512, 645, 812]
    ours = AnchorGenerator(sizes=sizes)(shapes, "cpu")
    tv = TVAnchorGenerator(tuple(tuple(s) for s in sizes), ((0.5, 1.0, 2.0),) * 5)
    images = ImageList(torch.zeros(1, 3, 256, 384), [(256, 384)])
    features = [torch.zeros(1, 1, h, w) for h, w in shapes]
    torch.testing.assert_close(ours, tv(images, features)[0], rtol=0, atol=0)


def test_cached_per_shapes_and_device():
    gen = AnchorGenerator()
    shapes = [(4, 4), (2, 2), (1, 1), (1, 1), (1, 1)]
    first, counts = gen.anchors_and_counts(shapes, "cpu")
    assert gen(shapes, "cpu") is first
    assert counts == [16 * 9, 4 * 9, 9, 9, 9]
    other = gen([(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)], "cpu")
    assert other is not first and other.shape[0] == (64 + 16 + 4 + 1 + 1) * 9


def test_bad_arguments():
    with pytest.raises(ValueError, match="3 sizes for 2 strides"):
        AnchorGenerator(sizes=(32, 64, 128), strides=(8, 16))
    with pytest.raises(ValueError, match="positive"):
        AnchorGenerator(sizes=(32,), strides=(8,), ratios=(0.0,))
    with pytest.raises(ValueError, match="2 feature maps for 5 levels"):
        AnchorGenerator()([(2, 2), (1, 1)], "cpu")
    assert math.isfinite(AnchorGenerator().level_sizes[4][2])
