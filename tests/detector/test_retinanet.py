import copy

import pytest
import torch

from detector import IMAGENET_MEAN, IMAGENET_STD, AnchorGenerator, DenseOutputs, RetinaNet

STRIDES = (8, 16, 32, 64, 128)  # P3-P7
A = 9


def padded_shapes(height: int, width: int) -> list[tuple[int, int]]:
    """Feature map (H_l, W_l) of each level for an input padded up to multiples of 128."""
    height, width = -(-height // 128) * 128, -(-width // 128) * 128
    return [(height // s, width // s) for s in STRIDES]


def anchors_per_level(height: int, width: int) -> list[int]:
    """R_l = H_l W_l A of each level for an input of ``height`` x ``width``."""
    return [h * w * A for h, w in padded_shapes(height, width)]


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
    assert out.num_anchors_per_level == counts == anchors_per_level(128, 256)
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
    # Both batches pad to 256 x 256; the small image alone pads to 128 x 128 only.
    assert alone.num_anchors_per_level == batch.num_anchors_per_level == anchors_per_level(256, 256)
    assert alone_small.num_anchors_per_level == anchors_per_level(128, 128)
    assert alone_small.cls_logits.shape == (1, sum(anchors_per_level(128, 128)), 3)
    assert batch.image_sizes.tolist() == [[150, 220], [90, 120]]
    assert alone_small.image_sizes.tolist() == [[90, 120]]


@pytest.mark.parametrize(
    ("images", "image_sizes", "valid"),
    [
        ([(129, 65)], None, [[129, 65]]),  # portrait, odd: pads to 256 x 128
        ([(3, 130), (100, 7)], None, [[3, 130], [100, 7]]),  # pads to 128 x 256
        ((2, 131, 97), [[131, 97], [67, 45]], [[131, 97], [67, 45]]),  # batch tensor: 256 x 128
    ],
)
def test_odd_sizes_pad_to_128_with_exact_anchor_counts(small_model, images, image_sizes, valid):
    g = torch.Generator().manual_seed(0)
    if isinstance(images, tuple):
        inputs = torch.rand(images[0], 3, *images[1:], generator=g)
        height, width = images[1:]
        image_sizes = torch.tensor(image_sizes)
    else:
        inputs = [torch.rand(3, h, w, generator=g) for h, w in images]
        height, width = max(h for h, _ in images), max(w for _, w in images)
    batch, _ = small_model.preprocess(inputs, image_sizes)
    shapes = padded_shapes(height, width)
    assert batch.shape[2:] == (shapes[0][0] * 8, shapes[0][1] * 8)
    with torch.no_grad():
        out = small_model(inputs, image_sizes)
    assert out.num_anchors_per_level == anchors_per_level(height, width)
    assert out.cls_logits.shape == (len(valid), sum(anchors_per_level(height, width)), 3)
    assert out.box_deltas.shape == (len(valid), sum(anchors_per_level(height, width)), 4)
    torch.testing.assert_close(out.anchors, AnchorGenerator()(shapes, "cpu"), rtol=0, atol=0)
    assert out.image_sizes.tolist() == valid and out.image_sizes.dtype == torch.int64


def test_normalisation_with_imagenet_rgb_statistics(small_model):
    # Channel values 0, 0.5 and 1 against mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)
    # in R, G, B order, written out rather than read back from the module's constants.
    image = torch.tensor([0.0, 0.5, 1.0]).view(3, 1, 1).expand(3, 4, 5)
    batch, _ = small_model.preprocess([image])
    expected = [(0.0 - 0.485) / 0.229, (0.5 - 0.456) / 0.224, (1.0 - 0.406) / 0.225]
    torch.testing.assert_close(batch[0, :, 3, 4], torch.tensor(expected))
    assert batch[0, :, 4:].abs().sum() == 0 and batch[0, :, :, 5:].abs().sum() == 0
    as_uint8 = torch.tensor([0, 128, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 4, 5)
    batch8, _ = small_model.preprocess(as_uint8)
    expected8 = [(0.0 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (1.0 - 0.406) / 0.225]
    torch.testing.assert_close(batch8[0, :, 0, 0], torch.tensor(expected8))


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
