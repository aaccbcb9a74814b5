"""ResNet feature extractor returning C3, C4, C5 (Lin et al., 2017, §4 "Feature Pyramid Network
Backbone"), built on torchvision's ResNet."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops.misc import FrozenBatchNorm2d

NORMS = ("frozen_bn", "bn", "gn")
GN_GROUPS = 32
"""GroupNorm groups (Wu & He, 2018), as detectron2's "GN" ResNets."""

_DEPTHS = {
    18: (torchvision.models.resnet18, "ResNet18_Weights"),
    34: (torchvision.models.resnet34, "ResNet34_Weights"),
    50: (torchvision.models.resnet50, "ResNet50_Weights"),
    101: (torchvision.models.resnet101, "ResNet101_Weights"),
}
_STAGES = ("layer1", "layer2", "layer3", "layer4")

RESNET_OUT_CHANNELS: dict[int, list[int]] = {
    18: [128, 256, 512],
    34: [128, 256, 512],
    50: [512, 1024, 2048],
    101: [512, 1024, 2048],
}
"""Channels of C3, C4, C5 per ResNet depth: basic blocks below 50, bottlenecks (expansion 4)
from 50 on. The one table: the config resolver ``${fd.resnet_channels:DEPTH}`` and the
torchvision converter read it too."""


def _norm_layer(norm: str, eps: float) -> Callable[[int], nn.Module]:
    if norm == "frozen_bn":
        return lambda c: FrozenBatchNorm2d(c, eps=eps)
    if norm == "bn":
        return lambda c: nn.BatchNorm2d(c, eps=eps)
    return lambda c: nn.GroupNorm(GN_GROUPS, c, eps=eps)


def conv_output_numel(x: Tensor, conv: nn.Conv2d) -> int:
    """Elements of ``conv(x)`` for ``x`` (N, C_in, H, W): N × C_out × H' × W'."""
    size = x.shape[0] * conv.out_channels
    for i, length in enumerate(x.shape[2:]):
        span = conv.dilation[i] * (conv.kernel_size[i] - 1) + 1
        size *= (length + 2 * conv.padding[i] - span) // conv.stride[i] + 1
    return size


def conv_frozen_bn(x: Tensor, conv: nn.Conv2d, bn: FrozenBatchNorm2d) -> Tensor:
    """``bn(conv(x))`` with the frozen affine applied in one pass, on whichever is smaller: the
    weight or the output.

    FrozenBatchNorm is ``y s + b'`` with ``s = γ / sqrt(σ² + ε)`` and ``b' = β - μ s`` per output
    channel, so ``bn(conv(x, W, c)) = conv(x, W s, c s + b')``. Where the weight
    (C_out × C_in × k × k) is smaller than the output (N × C_out × H' × W') — the early, large
    feature maps — ``s`` is folded into the weight; elsewhere (res5's 3×3 convs hold more weights
    than activations) the output is scaled and shifted by one ``addcmul`` instead of
    torchvision's two passes. Both give the gradient of ``bn(conv(x))`` w.r.t. ``W`` and ``x``.
    ``x`` (N, C_in, H, W) → (N, C_out, H', W').
    """
    scale = bn.weight * (bn.running_var + bn.eps).rsqrt()
    bias = bn.bias - bn.running_mean * scale
    if conv.weight.numel() > conv_output_numel(x, conv):
        return torch.addcmul(bias.view(-1, 1, 1), conv(x), scale.view(-1, 1, 1))
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def frozen_bn_block(block: BasicBlock | Bottleneck, x: Tensor) -> Tensor:
    """``block(x)`` for a torchvision ResNet block whose norms are FrozenBatchNorm2d, each
    conv + norm pair run as one ``conv_frozen_bn``."""
    convs = [(block.conv1, block.bn1), (block.conv2, block.bn2)]
    if isinstance(block, Bottleneck):
        convs.append((block.conv3, block.bn3))
    out = x
    for conv, bn in convs[:-1]:
        out = F.relu(conv_frozen_bn(out, conv, bn), inplace=True)
    out = conv_frozen_bn(out, *convs[-1])
    identity = x if block.downsample is None else conv_frozen_bn(x, *block.downsample)
    return F.relu(out.add_(identity), inplace=True)


class ResNetBackbone(nn.Module):
    """torchvision ResNet-18/34/50/101 without its classifier; returns ``[C3, C4, C5]``.

    Args:
        depth: 18, 34, 50 or 101.
        frozen_stages: how many stages are frozen (no gradient, norm layers in eval mode):
            0 none, 1 the stem and res2 (the paper's and detectron2's default), 2–4 also res3–res5.
        norm: ``"frozen_bn"`` (fixed ImageNet statistics, for fine-tuning from ImageNet),
            ``"bn"`` (trainable BatchNorm, for training from scratch) or ``"gn"`` (GroupNorm).
        weights: ``None`` (random init), ``"imagenet"`` (torchvision's ``IMAGENET1K_V1`` enum,
            downloaded on first use) or the path of a local torchvision ResNet state dict.
        norm_eps: epsilon of the norm layers. torchvision's published COCO RetinaNet was trained
            with FrozenBatchNorm ``eps=0``, the converter sets it accordingly.

    With ``norm="frozen_bn"`` every conv + FrozenBatchNorm pair runs through ``conv_frozen_bn``
    (the norm folded into the convolution, or applied in one pass): the same function, with
    less memory traffic.
    The modules and state-dict keys stay torchvision's.

    Input ``(N, 3, H, W)`` normalised images; output strides 8, 16, 32 with ``out_channels``
    channels (``RESNET_OUT_CHANNELS[depth]``).
    """

    def __init__(
        self,
        depth: int = 50,
        frozen_stages: int = 1,
        norm: str = "frozen_bn",
        weights: str | os.PathLike | None = None,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if depth not in _DEPTHS:
            raise ValueError(f"ResNetBackbone: depth must be one of {sorted(_DEPTHS)}, got {depth}")
        if norm not in NORMS:
            raise ValueError(f"ResNetBackbone: norm must be one of {NORMS}, got {norm!r}")
        if not 0 <= frozen_stages <= len(_STAGES):
            raise ValueError(f"ResNetBackbone: frozen_stages must be in 0..4, got {frozen_stages}")
        builder, _ = _DEPTHS[depth]
        resnet = builder(weights=None, norm_layer=_norm_layer(norm, norm_eps))
        self.depth = depth
        self.norm = norm
        self.frozen_stages = frozen_stages
        self.conv1, self.bn1, self.relu, self.maxpool = (
            resnet.conv1,
            resnet.bn1,
            resnet.relu,
            resnet.maxpool,
        )
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            resnet.layer1,
            resnet.layer2,
            resnet.layer3,
            resnet.layer4,
        )
        self.out_channels = list(RESNET_OUT_CHANNELS[depth])
        if weights is not None:
            self.load_pretrained(weights)
        for module in self._frozen_modules():
            for p in module.parameters():
                p.requires_grad_(False)

    def load_pretrained(self, weights: str | os.PathLike) -> None:
        """Load ImageNet weights: ``"imagenet"`` (torchvision enum) or a local state dict file."""
        if self.norm == "gn":
            raise ValueError(
                "ResNetBackbone: ImageNet weights are BatchNorm weights; use norm='frozen_bn' or "
                "'bn' with them, not 'gn'"
            )
        if str(weights) == "imagenet":
            _, enum_name = _DEPTHS[self.depth]
            enum = getattr(torchvision.models, enum_name).IMAGENET1K_V1
            state = enum.get_state_dict(progress=True, check_hash=True)
            source = f"torchvision {enum_name}.IMAGENET1K_V1"
        else:
            path = Path(weights)
            if not path.is_file():
                raise FileNotFoundError(f"ResNetBackbone: weights file {path} does not exist")
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict):
                raise ValueError(
                    f"ResNetBackbone: {path} holds a {type(state).__name__}, not a state dict"
                )
            source = str(path)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        result = self.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
        if missing or result.unexpected_keys:
            raise ValueError(
                f"ResNetBackbone: {source} is not a ResNet-{self.depth} state dict "
                f"(missing {missing[:5]}, unexpected {result.unexpected_keys[:5]})"
            )

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages == 0:
            return []
        stem = [self.conv1, self.bn1]
        return stem + [getattr(self, name) for name in _STAGES[: self.frozen_stages]]

    def train(self, mode: bool = True) -> ResNetBackbone:
        """Switch mode, keeping the norm layers of frozen stages in eval mode."""
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        """``[C3, C4, C5]``: C_i is (N, out_channels[i - 3], H / 2^i, W / 2^i) for (N, 3, H, W)."""
        if self.norm != "frozen_bn":
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            c2 = self.layer1(x)
            c3 = self.layer2(c2)
            c4 = self.layer3(c3)
            return [c3, c4, self.layer4(c4)]
        x = self.maxpool(F.relu(conv_frozen_bn(x, self.conv1, self.bn1), inplace=True))
        features = []
        for name in _STAGES:
            for block in getattr(self, name):
                x = frozen_bn_block(block, x)
            features.append(x)
        return features[1:]
