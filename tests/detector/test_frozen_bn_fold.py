"""``conv_frozen_bn`` and the folded ResNet forward against torchvision's conv → FrozenBatchNorm2d
modules, in value and in gradient."""

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from detector import ResNetBackbone
from detector.backbone import conv_frozen_bn, conv_output_numel


def _frozen_bn(channels: int, eps: float, g: torch.Generator) -> FrozenBatchNorm2d:
    bn = FrozenBatchNorm2d(channels, eps=eps)
    bn.weight.copy_(torch.rand(channels, generator=g) + 0.5)
    bn.bias.copy_(torch.randn(channels, generator=g))
    bn.running_mean.copy_(torch.randn(channels, generator=g))
    bn.running_var.copy_(torch.rand(channels, generator=g) + 0.1)
    return bn


@pytest.mark.parametrize(
    ("in_ch", "out_ch", "kernel", "stride", "padding", "dilation", "bias", "size", "folded"),
    [
        (4, 6, 1, 1, 0, 1, False, 9, True),  # weight 24 < output 2·6·9·9: folded
        (5, 7, 3, 2, 1, 1, True, 11, True),  # weight 315 < output 2·7·6·6 = 504
        (8, 16, 3, 1, 2, 2, False, 3, False),  # weight 1152 > output 2·16·3·3 = 288: addcmul
        (8, 16, 3, 2, 1, 1, True, 4, False),  # weight 1152 > output 2·16·2·2 = 128
    ],
)
def test_conv_frozen_bn_equals_conv_then_frozen_bn(
    in_ch, out_ch, kernel, stride, padding, dilation, bias, size, folded
):
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding, dilation, bias=bias)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
        if bias:
            conv.bias.copy_(torch.randn(out_ch, generator=g))
    bn = _frozen_bn(out_ch, 1e-5, g)
    x = torch.randn(2, in_ch, size, size, generator=g, dtype=torch.float64)
    conv, bn = conv.double(), bn.double()
    expected_numel = bn(conv(x)).numel()
    assert conv_output_numel(x, conv) == expected_numel
    assert (conv.weight.numel() <= expected_numel) is folded
    x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref, ours = bn(conv(x_ref)), conv_frozen_bn(x_ours, conv, bn)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    grad_out = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    params = [conv.weight, *([conv.bias] if bias else [])]
    ref_grads = torch.autograd.grad(ref, [x_ref, *params], grad_out)
    our_grads = torch.autograd.grad(ours, [x_ours, *params], grad_out)
    for a, b in zip(our_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def _module_forward(backbone: ResNetBackbone, x: torch.Tensor) -> list[torch.Tensor]:
    """torchvision's own module-by-module forward (conv, then FrozenBatchNorm2d)."""
    x = backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(x))))
    c2 = backbone.layer1(x)
    c3 = backbone.layer2(c2)
    c4 = backbone.layer3(c3)
    return [c3, c4, backbone.layer4(c4)]


@pytest.mark.parametrize("depth", [18, 50])
def test_folded_backbone_equals_module_forward_and_gradients(depth):
    torch.manual_seed(0)
    backbone = ResNetBackbone(depth=depth, frozen_stages=1, norm_eps=1e-5)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in backbone.modules():
            if isinstance(m, FrozenBatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 0.5 + 0.5)
    backbone = backbone.double().train()
    x = torch.rand(1, 3, 32, 32, generator=g, dtype=torch.float64)
    ours, ref = backbone(x), _module_forward(backbone, x)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    params = [p for p in backbone.parameters() if p.requires_grad]
    weights = [torch.randn(f.shape, generator=g, dtype=torch.float64) for f in ref]
    our_grads = torch.autograd.grad(
        sum((f * w).sum() for f, w in zip(ours, weights, strict=True)), params
    )
    ref_grads = torch.autograd.grad(
        sum((f * w).sum() for f, w in zip(ref, weights, strict=True)), params
    )
    for a, b in zip(our_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    # The frozen stem and res2 get no gradient, the folded path included.
    assert (
        not backbone.conv1.weight.requires_grad
        and not backbone.layer1[0].conv1.weight.requires_grad
    )


def test_state_dict_keys_are_torchvision_resnet_keys():
    backbone = ResNetBackbone(depth=18)
    resnet = torchvision.models.resnet18(norm_layer=FrozenBatchNorm2d)
    expected = {k for k in resnet.state_dict() if not k.startswith("fc.")}
    assert set(backbone.state_dict()) == expected
