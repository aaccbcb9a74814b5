import pytest
import torch

from detector import FPN


@pytest.mark.parametrize("p6_from", ["c5", "p5"])
def test_fpn_levels(p6_from):
    torch.manual_seed(0)
    fpn = FPN([128, 256, 512], out_channels=32, p6_from=p6_from)
    feats = [torch.rand(2, 128, 16, 16), torch.rand(2, 256, 8, 8), torch.rand(2, 512, 4, 4)]
    levels = fpn(feats)
    assert [tuple(p.shape) for p in levels] == [(2, 32, s, s) for s in (16, 8, 4, 2, 1)]
    assert fpn.extra_blocks.p6.in_channels == (32 if p6_from == "p5" else 512)
    source = levels[2] if p6_from == "p5" else feats[2]
    torch.testing.assert_close(levels[3], fpn.extra_blocks.p6(source))
    torch.testing.assert_close(levels[4], fpn.extra_blocks.p7(torch.relu(levels[3])))
    with pytest.raises(ValueError, match="p6_from"):
        FPN([128, 256, 512], p6_from="c4")
