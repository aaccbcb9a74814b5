"""Feature pyramid P3–P7 on top of C3–C5 (Lin et al., 2017, §4 "Feature Pyramid Network
Backbone"; Lin et al., FPN, 2017), reusing torchvision's ``FeaturePyramidNetwork``."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelP6P7

P6_SOURCES = ("c5", "p5")


class FPN(FeaturePyramidNetwork):
    """P3–P5 from C3–C5 (1×1 lateral + top-down nearest upsampling + 3×3 output conv), P6 by a
    3×3 stride-2 conv and P7 by a 3×3 stride-2 conv on ReLU(P6).

    Args:
        in_channels: channels of C3, C4, C5 (the backbone's ``out_channels``).
        out_channels: channels of every P level (256 in the paper).
        p6_from: ``"c5"`` as the paper (§4) or ``"p5"`` as torchvision's
            ``retinanet_resnet50_fpn``.

    The parameter names are torchvision's (``inner_blocks``, ``layer_blocks``,
    ``extra_blocks.p6``/``p7``), so torchvision FPN weights load as they are.
    """

    def __init__(
        self, in_channels: Sequence[int], out_channels: int = 256, p6_from: str = "c5"
    ) -> None:
        if p6_from not in P6_SOURCES:
            raise ValueError(f"FPN: p6_from must be one of {P6_SOURCES}, got {p6_from!r}")
        in_channels = [int(c) for c in in_channels]
        if len(in_channels) != 3:
            raise ValueError(f"FPN: expected the channels of C3, C4, C5, got {in_channels}")
        p6_in = out_channels if p6_from == "p5" else in_channels[-1]
        extra = LastLevelP6P7(p6_in, out_channels)
        # torchvision infers the source from the channel counts; state it explicitly instead.
        extra.use_P5 = p6_from == "p5"
        super().__init__(in_channels, out_channels, extra_blocks=extra)
        self.out_channels = out_channels
        self.p6_from = p6_from

    def forward(self, features: list[Tensor]) -> list[Tensor]:  # type: ignore[override]
        """``[P3, P4, P5, P6, P7]`` (N, out_channels, H_l, W_l) from ``[C3, C4, C5]``."""
        named = OrderedDict((f"c{i + 3}", f) for i, f in enumerate(features))
        return list(super().forward(named).values())
