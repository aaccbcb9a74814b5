"""Classification and box subnets shared across pyramid levels (Lin et al., 2017, §4
"Classification Subnet", "Box Regression Subnet", §4.1 "Initialization")."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

HEAD_NORMS = (None, "gn")
GN_GROUPS = 32


def _subnet(channels: int, num_convs: int, norm: str | None) -> nn.Sequential:
    blocks = []
    for _ in range(num_convs):
        layers: list[nn.Module] = [nn.Conv2d(channels, channels, 3, padding=1, bias=norm is None)]
        if norm == "gn":
            layers.append(nn.GroupNorm(GN_GROUPS, channels))
        layers.append(nn.ReLU(inplace=True))
        blocks.append(nn.Sequential(*layers))
    return nn.Sequential(*blocks)


def flatten_level(x: Tensor, last: int) -> Tensor:
    """(N, A * last, H, W) → (N, H * W * A, last), anchors ordered (y, x, a)."""
    n, _, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(n, h * w * (x.shape[1] // last), last)


class RetinaNetHead(nn.Module):
    """Two subnets of ``num_convs`` 3×3 convs + ReLU, run with shared weights on every level.

    Args:
        in_channels: channels of the pyramid levels (256).
        num_anchors: A, anchors per location (9).
        num_classes: K, foreground classes.
        num_convs: conv + ReLU layers in each subnet (4 in the paper).
        norm: ``None`` (the paper) or ``"gn"`` (GroupNorm after every subnet conv, not shared
            across levels' statistics but across their weights).
        prior_prob: π of §4.1: the classification bias is ``-log((1 - π) / π)`` so that every
            anchor starts with foreground confidence π and the background does not swamp the loss.

    Conv weights start from N(0, 0.01) and biases from 0 (§4.1). The box subnet is class-agnostic.
    Parameter names follow torchvision's block structure (``cls_subnet.i.0`` is a conv).
    """

    def __init__(
        self,
        in_channels: int = 256,
        num_anchors: int = 9,
        num_classes: int = 80,
        num_convs: int = 4,
        norm: str | None = None,
        prior_prob: float = 0.01,
    ) -> None:
        super().__init__()
        if norm not in HEAD_NORMS:
            raise ValueError(f"RetinaNetHead: norm must be one of {HEAD_NORMS}, got {norm!r}")
        for name, value in (
            ("in_channels", in_channels),
            ("num_anchors", num_anchors),
            ("num_classes", num_classes),
        ):
            if value < 1:
                raise ValueError(f"RetinaNetHead: {name} must be >= 1, got {value}")
        if num_convs < 0:
            raise ValueError(f"RetinaNetHead: num_convs must be >= 0, got {num_convs}")
        if not 0.0 < prior_prob < 1.0:
            raise ValueError(f"RetinaNetHead: prior_prob must be in (0, 1), got {prior_prob}")
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.cls_subnet = _subnet(in_channels, num_convs, norm)
        self.bbox_subnet = _subnet(in_channels, num_convs, norm)
        self.cls_score = nn.Conv2d(in_channels, num_anchors * num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, 3, padding=1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        # Prior π = 0.01 for foreground at initialisation (§4.1 "Initialization").
        nn.init.constant_(self.cls_score.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Logits (N, R, K) and box deltas (N, R, 4) for levels ``[(N, C, H_l, W_l)]``.

        R = Σ_l H_l W_l A, levels concatenated in order, anchors (y, x, a) within a level.
        """
        logits, deltas = [], []
        for x in features:
            logits.append(flatten_level(self.cls_score(self.cls_subnet(x)), self.num_classes))
            deltas.append(flatten_level(self.bbox_pred(self.bbox_subnet(x)), 4))
        return torch.cat(logits, dim=1), torch.cat(deltas, dim=1)
