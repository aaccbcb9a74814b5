import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from detector import ResNetBackbone


def test_resnet18_shapes_and_default_freezing():
    backbone = ResNetBackbone(depth=18)
    assert backbone.out_channels == [128, 256, 512]
    c3, c4, c5 = backbone(torch.rand(1, 3, 128, 192))
    assert c3.shape == (1, 128, 16, 24) and c4.shape == (1, 256, 8, 12)
    assert c5.shape == (1, 512, 4, 6)
    # frozen_bn: every norm layer is a FrozenBatchNorm2d (buffers only, nothing to train).
    norms = [m for m in backbone.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))]
    assert norms and all(isinstance(m, FrozenBatchNorm2d) for m in norms)
    # frozen_stages=1: stem and res2 have no gradient, res3–res5 do.
    for name, p in backbone.named_parameters():
        frozen = name.startswith(("conv1.", "layer1."))
        assert p.requires_grad is not frozen, name


@pytest.mark.parametrize("frozen_stages", [0, 3])
def test_frozen_stages_and_bn_in_eval(frozen_stages):
    backbone = ResNetBackbone(depth=18, frozen_stages=frozen_stages, norm="bn").train()
    stages = ("layer1.", "layer2.", "layer3.")[:frozen_stages]
    frozen = ("conv1.", "bn1.", *stages) if frozen_stages else ()
    for name, p in backbone.named_parameters():
        assert p.requires_grad is not name.startswith(frozen), name
    assert backbone.layer4[0].bn1.training
    if frozen_stages:
        assert not backbone.bn1.training and not backbone.layer3[0].bn1.training


def test_group_norm_and_resnet50_channels():
    gn = ResNetBackbone(depth=18, norm="gn", frozen_stages=0)
    assert isinstance(gn.layer2[0].bn1, nn.GroupNorm) and gn.layer2[0].bn1.num_groups == 32
    assert ResNetBackbone(depth=50).out_channels == [512, 1024, 2048]


def test_local_weights_file(tmp_path):
    resnet = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(resnet.state_dict(), path)  # includes fc.*, dropped on load
    backbone = ResNetBackbone(depth=18, weights=path)
    torch.testing.assert_close(backbone.layer3[1].conv2.weight, resnet.layer3[1].conv2.weight)
    torch.testing.assert_close(backbone.bn1.running_var, resnet.bn1.running_var)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="depth must be one of"):
        ResNetBackbone(depth=42)
    with pytest.raises(ValueError, match="norm must be one of"):
        ResNetBackbone(depth=18, norm="sync")
    with pytest.raises(ValueError, match="frozen_stages must be in 0..4"):
        ResNetBackbone(depth=18, frozen_stages=5)
    with pytest.raises(FileNotFoundError, match="missing.pth does not exist"):
        ResNetBackbone(depth=18, weights=tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="not 'gn'"):
        ResNetBackbone(depth=18, norm="gn", weights=tmp_path / "missing.pth")
    wrong = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), wrong)
    with pytest.raises(ValueError, match="is not a ResNet-18 state dict"):
        ResNetBackbone(depth=18, weights=wrong)


@pytest.mark.parametrize("norm", ["frozen_bn", "bn", "gn"])
def test_norm_eps_reaches_every_norm_layer(norm):
    backbone = ResNetBackbone(depth=18, norm=norm, norm_eps=1e-3, frozen_stages=0)
    kinds = (FrozenBatchNorm2d, nn.BatchNorm2d, nn.GroupNorm)
    norms = [m for m in backbone.modules() if isinstance(m, kinds)]
    assert len(norms) == 20  # stem + 8 blocks x 2 + 3 downsamples
    assert all(m.eps == 1e-3 for m in norms)
