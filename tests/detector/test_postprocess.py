import pytest
import torch
from torchvision.ops import batched_nms

from detector import BoxCoder, DenseOutputs, RetinaNetPostProcessor, postprocess
from detector.postprocess import topk_per_level


def make_outputs(n=2, r=(40, 12), k=4, seed=0, sizes=((64, 96), (50, 96))) -> DenseOutputs:
    g = torch.Generator().manual_seed(seed)
    total = sum(r)
    xy = torch.rand(total, 2, generator=g) * 60
    anchors = torch.cat([xy, xy + 8 + torch.rand(total, 2, generator=g) * 24], 1)
    return DenseOutputs(
        torch.randn(n, total, k, generator=g) * 2,
        torch.randn(n, total, 4, generator=g) * 0.2,
        anchors,
        list(r),
        torch.tensor(sizes[:n]),
    )


def reference(outputs: DenseOutputs, score_thresh, topk, nms_thresh, per_img):
    """torchvision's postprocess_detections, written per image and per level."""
    coder, dets = BoxCoder(), []
    for i in range(outputs.cls_logits.shape[0]):
        h, w = outputs.image_sizes[i].tolist()
        boxes_all, scores_all, labels_all, start = [], [], [], 0
        for count in outputs.num_anchors_per_level:
            logits = outputs.cls_logits[i, start : start + count]
            scores = torch.sigmoid(logits).flatten()
            idx = torch.where(scores > score_thresh)[0]
            scores, order = scores[idx].topk(min(topk, len(idx)))
            idx = idx[order]
            anchor = idx // logits.shape[1] + start
            boxes = coder.decode(outputs.anchors[anchor], outputs.box_deltas[i, anchor])
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
            boxes_all.append(boxes)
            scores_all.append(scores)
            labels_all.append(idx % logits.shape[1])
            start += count
        b, s, lab = torch.cat(boxes_all), torch.cat(scores_all), torch.cat(labels_all)
        keep = batched_nms(b, s, lab, nms_thresh)[:per_img]
        dets.append({"boxes": b[keep], "scores": s[keep], "labels": lab[keep]})
    return dets


@pytest.mark.parametrize("topk", [5, 1000])
def test_matches_per_image_reference(topk):
    outputs = make_outputs()
    post = RetinaNetPostProcessor(
        BoxCoder(), score_thresh=0.3, topk_candidates=topk, nms_thresh=0.5, detections_per_img=20
    )
    ours = post(outputs)
    ref = reference(outputs, 0.3, topk, 0.5, 20)
    for a, b in zip(ours, ref, strict=True):
        assert len(a["boxes"]) == len(b["boxes"]) > 0
        torch.testing.assert_close(a["boxes"], b["boxes"])
        torch.testing.assert_close(a["scores"], b["scores"])
        assert a["labels"].tolist() == b["labels"].tolist()
        assert a["labels"].dtype == torch.int64 and a["boxes"].dtype == torch.float32
    assert len(ours[0]["boxes"]) <= 20


def test_boxes_scaled_to_original_size_and_clipped():
    outputs = make_outputs()
    post = RetinaNetPostProcessor(BoxCoder(), score_thresh=0.2)
    plain = post(outputs)
    orig = torch.tensor([[128, 48], [25, 192]])
    scaled = post(outputs, orig)
    for i, (a, b) in enumerate(zip(plain, scaled, strict=True)):
        h, w = outputs.image_sizes[i].tolist()
        ratio = torch.tensor([orig[i, 1] / w, orig[i, 0] / h] * 2)
        torch.testing.assert_close(b["boxes"], a["boxes"] * ratio)
        assert (b["boxes"] >= 0).all()
        assert (b["boxes"][:, 0::2] <= orig[i, 1]).all() and (
            b["boxes"][:, 1::2] <= orig[i, 0]
        ).all()


def test_threshold_cap_and_low_precision_logits():
    outputs = make_outputs()
    quiet = outputs._replace(cls_logits=outputs.cls_logits - 20)  # every score < 1e-4
    assert all(len(d["boxes"]) == 0 for d in RetinaNetPostProcessor(BoxCoder())(quiet))
    half = outputs._replace(
        cls_logits=outputs.cls_logits.bfloat16(), box_deltas=outputs.box_deltas.bfloat16()
    )
    dets = RetinaNetPostProcessor(BoxCoder(), score_thresh=0.05, detections_per_img=3)(half)
    assert all(len(d["scores"]) == 3 and d["scores"].dtype == torch.float32 for d in dets)
    assert all(d["boxes"].dtype == torch.float32 for d in dets)


def test_topk_per_level_indices():
    logits = torch.arange(2 * 5 * 2, dtype=torch.float32).view(2, 5, 2)
    values, flat = topk_per_level(logits, [3, 2], k=2)
    # Level 0 covers flat indices 0..5 of each image, level 1 covers 6..9.
    assert flat.tolist() == [[5, 4, 9, 8], [5, 4, 9, 8]]
    torch.testing.assert_close(values[1], torch.tensor([15.0, 14.0, 19.0, 18.0]))


def test_bad_arguments():
    with pytest.raises(ValueError, match="topk_candidates"):
        RetinaNetPostProcessor(BoxCoder(), topk_candidates=0)
    with pytest.raises(ValueError, match=r"orig_sizes must be \(2, 2\)"):
        RetinaNetPostProcessor(BoxCoder())(make_outputs(), torch.tensor([[1, 2]]))


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
    post = RetinaNetPostProcessor(BoxCoder(), topk_candidates=100)
    whole = post(outputs)
    monkeypatch.setattr(postprocess, "TOPK_PIECE", 1000)  # P3's 3000 logits in 4 pieces
    split = post(outputs)
    for a, b in zip(split, whole, strict=True):
        assert len(a["scores"]) > 50
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(a[key], b[key])


# Six anchors in two levels (4 + 2) shared by a portrait image of 45 x 27 (h x w) and a
# landscape one of 29 x 53, both odd; zero deltas decode every anchor onto itself.
HAND_ANCHORS = torch.tensor(
    [
        [-4.0, -6.0, 10.0, 20.0],  # a0: sticks out top-left
        [20.0, 20.0, 40.0, 60.0],  # a1: past the bottom of both images, past 27 in x
        [5.0, 38.0, 15.0, 50.0],  # a2: past the portrait image's bottom (45)
        [2.0, 2.0, 4.0, 4.0],  # a3
        [-4.0, -6.0, 10.0, 20.0],  # a4 (level 1): a0 again
        [30.0, 10.0, 60.0, 25.0],  # a5 (level 1): past the landscape image's right (53)
    ]
)
HAND_SIZES = torch.tensor([[45, 27], [29, 53]])


def hand_outputs() -> DenseOutputs:
    """Logits -5 (score 0.0067) except the (image, anchor, class) entries set below."""
    logits = torch.full((2, 6, 2), -5.0)
    # Image 0: a4 class 0 (2.5) is a0's box in a0's class: NMS drops it; a4 class 1 (0.5) has
    # the same box in another class: class-aware NMS keeps it. a3 class 1 scores exactly 0.5.
    for anchor, cls, logit in [(0, 0, 3.0), (4, 0, 2.5), (1, 1, 2.0), (2, 0, 1.0), (4, 1, 0.5)]:
        logits[0, anchor, cls] = logit
    logits[0, 3, 1] = 0.0
    for anchor, cls, logit in [(1, 0, 2.0), (0, 0, 1.5), (5, 1, 1.0)]:
        logits[1, anchor, cls] = logit
    return DenseOutputs(logits, torch.zeros(2, 6, 4), HAND_ANCHORS, [4, 2], HAND_SIZES)


def test_hand_computed_detections_on_portrait_and_odd_images():
    post = RetinaNetPostProcessor(BoxCoder(), score_thresh=0.5, nms_thresh=0.5)
    dets = post(hand_outputs())
    # Image 0 (h 45, w 27): x clipped to [0, 27], y to [0, 45].
    assert dets[0]["labels"].tolist() == [0, 1, 0, 1]
    torch.testing.assert_close(dets[0]["scores"], torch.sigmoid(torch.tensor([3.0, 2, 1, 0.5])))
    expected0 = [[0, 0, 10, 20], [20, 20, 27, 45], [5, 38, 15, 45], [0, 0, 10, 20]]
    assert dets[0]["boxes"].tolist() == expected0
    # Image 1 (h 29, w 53): y clipped to 29 (not 53), x to 53.
    assert dets[1]["labels"].tolist() == [0, 0, 1]
    assert dets[1]["boxes"].tolist() == [[20, 20, 40, 29], [0, 0, 10, 20], [30, 10, 53, 25]]


def test_hand_computed_detections_scaled_to_original_size():
    post = RetinaNetPostProcessor(BoxCoder(), score_thresh=0.5, nms_thresh=0.5)
    # Image 0 came from 100 x 55 (ratios y 100/45, x 55/27), image 1 from 58 x 159 (y 2, x 3).
    dets = post(hand_outputs(), torch.tensor([[100, 55], [58, 159]]))
    fx, fy = 55 / 27, 100 / 45
    expected0 = torch.tensor(
        [
            [0, 0, 10 * fx, 20 * fy],
            [20 * fx, 20 * fy, 55, 100],
            [5 * fx, 38 * fy, 15 * fx, 100],
            [0, 0, 10 * fx, 20 * fy],
        ]
    )
    torch.testing.assert_close(dets[0]["boxes"], expected0)
    # 27 * float32(55 / 27) rounds above 55 (and 45 * float32(100 / 45) above 100): a box that
    # reaches the image's edge ends exactly on the original edge.
    assert dets[0]["boxes"][1, 2:].tolist() == [55.0, 100.0] and dets[0]["boxes"].max() == 100
    expected1 = [[60, 40, 120, 58], [0, 0, 30, 40], [90, 20, 159, 50]]
    assert dets[1]["boxes"].tolist() == expected1


def test_hand_computed_topk_per_level_and_cap():
    outputs = hand_outputs()
    # topk 1 per level: image 1 keeps the best of level 0 (a1) and the best of level 1 (a5).
    one = RetinaNetPostProcessor(BoxCoder(), score_thresh=0.5, topk_candidates=1)(outputs)
    assert one[1]["boxes"].tolist() == [[20, 20, 40, 29], [30, 10, 53, 25]]
    assert one[0]["boxes"].tolist() == [[0, 0, 10, 20]]  # a4's class 0 loses NMS to a0's
    # NMS drops a box whose IoU with a better one is above nms_thresh: IoU 1 is not above 1.
    loose = RetinaNetPostProcessor(BoxCoder(), score_thresh=0.5, nms_thresh=1.0)(outputs)
    assert (
        loose[0]["scores"].tolist() == torch.sigmoid(torch.tensor([3.0, 2.5, 2, 1, 0.5])).tolist()
    )
    capped = RetinaNetPostProcessor(BoxCoder(), score_thresh=0.5, detections_per_img=2)(outputs)
    assert [d["labels"].tolist() for d in capped] == [[0, 1], [0, 0]]
    # Scores above 0.5 only: logit 0 (score exactly 0.5) is not above the threshold.
    below = RetinaNetPostProcessor(BoxCoder(), score_thresh=float(torch.sigmoid(torch.tensor(0.5))))
    assert [len(d["scores"]) for d in below(outputs)] == [3, 3]
