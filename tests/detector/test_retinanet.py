import copy

import pytest
import torch

from detector import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AnchorGenerator,
    BoxCoder,
    DenseOutputs,
    RetinaNet,
    postprocess,
)


def test_preprocess_normalises_pads_and_zeroes_padding(small_model):
    big, small = torch.rand(3, 130, 200), torch.rand(3, 100, 60)
    batch, sizes = small_model.preprocess([big, small])
    assert batch.shape == (2, 3, 256, 256)
    assert sizes.tolist() == [[130, 200], [100, 60]]
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(batch[1, :, :100, :60], (small - mean) / std)
    assert batch[1, :, 100:].abs().sum() == 0 and batch[1, :, :, 60:].abs().sum() == 0
    # A padded uint8 batch with garbage in the padding gives the same normalised tensor.
    padded = torch.randint(0, 256, (2, 3, 130, 200), dtype=torch.uint8)
    padded[0] = (big * 255).round().to(torch.uint8)
    padded[1, :, :100, :60] = (small * 255).round().to(torch.uint8)
    from_uint8, sizes8 = small_model.preprocess(padded, torch.tensor([[130, 200], [100, 60]]))
    assert sizes8.tolist() == sizes.tolist()
    from_float, _ = small_model.preprocess([padded[0] / 255.0, padded[1, :, :100, :60] / 255.0])
    torch.testing.assert_close(from_uint8, from_float, rtol=0, atol=1e-5)


def test_dense_outputs(small_model):
    with torch.no_grad():
        out = small_model(torch.rand(2, 3, 128, 256))
    assert isinstance(out, DenseOutputs)
    counts = [16 * 32 * 9, 8 * 16 * 9, 4 * 8 * 9, 2 * 4 * 9, 1 * 2 * 9]
    assert out.num_anchors_per_level == counts
    assert out.cls_logits.shape == (2, sum(counts), 3) and out.box_deltas.shape == (
        2,
        sum(counts),
        4,
    )
    torch.testing.assert_close(
        out.anchors, AnchorGenerator()([(16, 32), (8, 16), (4, 8), (2, 4), (1, 2)], "cpu")
    )
    assert out.image_sizes.tolist() == [[128, 256], [128, 256]]
    small_model.train()
    try:
        train_out = small_model(torch.rand(1, 3, 128, 192))
    finally:
        small_model.eval()
    assert type(train_out) is DenseOutputs


def test_lone_image_equals_image_in_padded_batch(small_model):
    g = torch.Generator().manual_seed(0)
    big, small = torch.rand(3, 150, 220, generator=g), torch.rand(3, 90, 120, generator=g)
    with torch.no_grad():
        alone = small_model([big])
        batch = small_model([big, small])
        alone_small = small_model([small])
    torch.testing.assert_close(batch.cls_logits[0], alone.cls_logits[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(batch.box_deltas[0], alone.box_deltas[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(batch.anchors, alone.anchors)
    # The small image alone is padded less (128 x 128), so only its anchor count differs.
    assert alone_small.cls_logits.shape[1] < batch.cls_logits.shape[1]


def test_channels_last_by_default_and_the_same_outputs(small_model):
    assert small_model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert small_model.head.cls_score.weight.is_contiguous(memory_format=torch.channels_last)
    nchw = copy.deepcopy(small_model).to(memory_format=torch.contiguous_format)
    assert not nchw.backbone.layer2[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        ref = nchw(x)
        out = small_model(x)
    torch.testing.assert_close(out.cls_logits, ref.cls_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.box_deltas, ref.box_deltas, rtol=1e-4, atol=1e-4)
    plain = RetinaNet(nchw.backbone, nchw.fpn, nchw.head, AnchorGenerator(), channels_last=False)
    assert plain.backbone.conv1.weight.is_contiguous()


def test_bad_inputs(small_model):
    with pytest.raises(ValueError, match=r"image 1 must be \(3, H, W\)"):
        small_model([torch.rand(3, 64, 64), torch.rand(1, 64, 64)])
    with pytest.raises(ValueError, match=r"image_sizes must be \(2, 2\)"):
        small_model(torch.rand(2, 3, 64, 64), torch.tensor([64, 64]))
    with pytest.raises(ValueError, match="float in"):
        small_model(torch.ones(1, 3, 64, 64, dtype=torch.int32))
    with pytest.raises(ValueError, match="empty list"):
        small_model([])


@pytest.mark.parametrize(
    ("rows", "length", "k", "piece", "pieces"),
    [
        (2, 4096, 50, 1024, 4),  # split in four pieces of 1024
        (3, 4096, 50, 300, 16),  # the most pieces, 256 each
        (2, 4096, 300, 300, 1),  # pieces of 256 < k: one topk over the row
        (2, 1001, 10, 300, 1),  # 1001 = 7·11·13 splits in no power of two: one topk
        (1, 40, 50, 8, 1),  # fewer logits than k: all of them
    ],
)
def test_level_topk_split_equals_topk(monkeypatch, rows, length, k, piece, pieces):
    monkeypatch.setattr(postprocess, "TOPK_PIECE", piece)
    g = torch.Generator().manual_seed(0)
    # Distinct values, so that the order (ties aside, unspecified) is fixed.
    level = torch.stack([torch.randperm(length, generator=g) for _ in range(rows)]).float()
    split_calls = []
    real_topk = torch.Tensor.topk
    monkeypatch.setattr(
        torch.Tensor,
        "topk",
        lambda t, *a, **kw: split_calls.append(t.shape) or real_topk(t, *a, **kw),
    )
    values, idx = postprocess._level_topk(level / 7.0, k)
    expected_values, expected_idx = real_topk(level / 7.0, min(k, length), dim=1)
    assert torch.equal(values, expected_values) and torch.equal(idx, expected_idx)
    if pieces > 1:
        assert split_calls[0] == (rows * pieces, length // pieces)
    else:
        assert split_calls == [(rows, length)]


def test_postprocessor_same_detections_with_split_topk(monkeypatch):
    g = torch.Generator().manual_seed(1)
    anchors_per_level = [600, 150, 40]
    r, num_classes = sum(anchors_per_level), 5
    xy = torch.rand(r, 2, generator=g) * 200
    outputs = DenseOutputs(
        torch.randn(2, r, num_classes, generator=g),
        torch.randn(2, r, 4, generator=g) * 0.1,
        torch.cat([xy, xy + 8 + torch.rand(r, 2, generator=g) * 40], 1),
        anchors_per_level,
        torch.tensor([[256, 256], [200, 240]]),
    )
    post = postprocess.RetinaNetPostProcessor(BoxCoder(), topk_candidates=100)
    whole = post(outputs)
    monkeypatch.setattr(postprocess, "TOPK_PIECE", 1000)  # P3's 3000 logits in 4 pieces
    split = post(outputs)
    for a, b in zip(split, whole, strict=True):
        assert len(a["scores"]) > 50
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(a[key], b[key])
