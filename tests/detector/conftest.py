"""Small ResNet-18 RetinaNets shared by the detector tests (fast on CPU)."""

import pytest
import torch

from detector import FPN, AnchorGenerator, ResNetBackbone, RetinaNet, RetinaNetHead

NUM_CLASSES = 3


def make_small_model(num_classes: int = NUM_CLASSES, seed: int = 0, **backbone_kw) -> RetinaNet:
    """ResNet-18 FPN RetinaNet with random weights and 64-channel pyramid."""
    torch.manual_seed(seed)
    backbone = ResNetBackbone(depth=18, **backbone_kw)
    fpn = FPN(backbone.out_channels, out_channels=64)
    head = RetinaNetHead(in_channels=64, num_anchors=9, num_classes=num_classes, num_convs=2)
    return RetinaNet(backbone, fpn, head, AnchorGenerator())


@pytest.fixture(scope="module")
def small_model() -> RetinaNet:
    return make_small_model().eval()
