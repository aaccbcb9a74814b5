import pytest
import torch
from torchvision.ops import batched_nms

from detector import BoxCoder, DenseOutputs, RetinaNetPostProcessor
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
