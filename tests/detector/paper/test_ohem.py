"""OHEM anchor selection (detector/paper/ohem.py), Table 1d."""

import pytest
import torch
from torchvision.ops import box_iou

from detector.labeling import BACKGROUND, IGNORE
from detector.paper.ohem import ohem_select

NEG = BACKGROUND  # short name for a negative anchor in the hand-built label rows


def row_boxes(num: int) -> torch.Tensor:
    """``num`` disjoint 10 x 10 boxes, 100 px apart along x."""
    x = torch.arange(num, dtype=torch.float32) * 100
    return torch.stack([x, torch.zeros(num), x + 10, torch.full((num,), 10.0)], 1)


def reference_select(loss, boxes, labels, batch_size, fg_fraction, thresh) -> torch.Tensor:
    """Textbook OHEM on one image: full greedy NMS over every non-ignored anchor, then pick."""
    order = [int(i) for i in torch.argsort(-loss, stable=True) if labels[i] != IGNORE]
    iou = box_iou(boxes, boxes)
    survivors: list[int] = []
    for i in order:
        if all(iou[i, j] <= thresh for j in survivors):
            survivors.append(i)
    if fg_fraction is None:
        chosen = survivors[:batch_size]
    else:
        fg = [i for i in survivors if labels[i] >= 0]
        bg = [i for i in survivors if labels[i] < 0]
        num_fg = min(len(fg), int(batch_size * fg_fraction))
        chosen = fg[:num_fg] + bg[: batch_size - num_fg]
    keep = torch.zeros(loss.shape[0], dtype=torch.bool)
    keep[chosen] = True
    return keep


def test_keeps_top_b_after_nms() -> None:
    boxes = row_boxes(6)
    # Anchor 1 is anchor 0 moved by 1 px (IoU 9/11 = 0.82): suppressed by the higher-loss 0.
    boxes[1] = boxes[0] + torch.tensor([1.0, 0.0, 1.0, 0.0])
    loss = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.5]])
    labels = torch.full((1, 6), BACKGROUND)
    keep = ohem_select(loss, boxes, labels, batch_size_per_image=3, nms_thresh=0.7)
    assert keep.tolist() == [[True, False, True, True, False, False]]
    # Without the overlap (threshold above the IoU) the top three by loss are kept.
    keep = ohem_select(loss, boxes, labels, batch_size_per_image=3, nms_thresh=0.85)
    assert keep.tolist() == [[True, True, True, False, False, False]]


def test_ratio_one_to_three_keeps_exactly_b() -> None:
    boxes = row_boxes(12)
    # Positives carry the highest losses; anchor 2 (positive) duplicates anchor 1.
    boxes[2] = boxes[1] + torch.tensor([0.5, 0.0, 0.5, 0.0])
    labels = torch.tensor([[0, 1, 1, 0, NEG, NEG, NEG, NEG, NEG, NEG, NEG, NEG]])
    loss = torch.tensor([[9.0, 8.0, 7.0, 6.0, 5.0, 4.5, 4.0, 3.5, 3.0, 2.5, 2.0, 1.5]])
    keep = ohem_select(loss, boxes, labels, 8, fg_fraction=0.25, nms_thresh=0.5)
    assert int(keep.sum()) == 8
    assert int((keep & (labels >= 0)).sum()) == 2  # 1:3 of B = 8
    assert keep[0].nonzero().squeeze(1).tolist() == [0, 1, 4, 5, 6, 7, 8, 9]
    # No ratio: the four positives' survivors (anchor 2 suppressed) come first by loss.
    keep = ohem_select(loss, boxes, labels, 8, fg_fraction=None, nms_thresh=0.5)
    assert keep[0].nonzero().squeeze(1).tolist() == [0, 1, 3, 4, 5, 6, 7, 8]


def test_few_positives_are_all_kept_and_negatives_fill_b() -> None:
    labels = torch.tensor([[0, NEG, NEG, NEG, NEG, NEG, NEG, NEG]])
    loss = torch.tensor([[0.1, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0]])
    keep = ohem_select(loss, row_boxes(8), labels, 4, fg_fraction=0.5, nms_thresh=0.7)
    assert keep[0].nonzero().squeeze(1).tolist() == [0, 1, 2, 3]


def test_ignored_anchors_are_never_kept_and_suppress_nothing() -> None:
    boxes = row_boxes(4)
    boxes[1] = boxes[0]  # identical to the ignored anchor 0
    labels = torch.tensor([[IGNORE, NEG, NEG, NEG]])
    loss = torch.tensor([[10.0, 1.0, 2.0, 3.0]])
    keep = ohem_select(loss, boxes, labels, 3, nms_thresh=0.5)
    assert keep.tolist() == [[False, True, True, True]]


def test_fewer_survivors_than_b_keeps_all_survivors() -> None:
    labels = torch.tensor([[NEG, IGNORE, 0]])
    keep = ohem_select(torch.ones(1, 3), row_boxes(3), labels, 128, fg_fraction=0.25)
    assert keep.tolist() == [[True, False, True]]


def test_ties_go_to_the_lower_index() -> None:
    keep = ohem_select(torch.ones(1, 5), row_boxes(5), torch.full((1, 5), NEG), 2)
    assert keep.tolist() == [[True, True, False, False, False]]


@pytest.mark.parametrize(
    ("batch_size", "fg_fraction", "thresh"),
    [(8, None, 0.5), (8, 0.25, 0.5), (32, 0.25, 0.7), (64, None, 0.7), (5, 0.5, 0.3)],
)
def test_matches_full_greedy_nms(batch_size, fg_fraction, thresh) -> None:
    """Prefix NMS (detector/paper/ohem.py) equals NMS over every anchor, on clustered boxes."""
    g = torch.Generator().manual_seed(batch_size)
    n, r = 3, 300
    centres = torch.rand(n, r, 2, generator=g) * 120
    sizes = 10 + torch.rand(n, r, 2, generator=g) * 30
    boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], -1)
    loss = torch.rand(n, r, generator=g)
    labels = torch.randint(-2, 3, (n, r), generator=g)
    labels[0, :] = torch.where(labels[0] >= 0, labels[0], BACKGROUND)  # no IGNORE in image 0
    labels[1, torch.argsort(loss[1])[:40]] = 1  # image 1: the easiest anchors are positives
    keep = ohem_select(loss, boxes, labels, batch_size, fg_fraction, thresh)
    for i in range(n):
        expected = reference_select(loss[i], boxes[i], labels[i], batch_size, fg_fraction, thresh)
        assert torch.equal(keep[i], expected), f"image {i}"


def test_shared_boxes_equal_per_image_boxes() -> None:
    g = torch.Generator().manual_seed(1)
    boxes = torch.rand(50, 2, generator=g).mul(50).repeat(1, 2) + torch.tensor([0, 0, 12, 12])
    loss = torch.rand(2, 50, generator=g)
    labels = torch.randint(-2, 2, (2, 50), generator=g)
    shared = ohem_select(loss, boxes, labels, 10, 0.25, 0.5)
    per_image = ohem_select(loss, boxes.expand(2, 50, 4), labels, 10, 0.25, 0.5)
    assert torch.equal(shared, per_image)
    assert shared.sum(1).tolist() == [10, 10]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"batch_size_per_image": 0}, ValueError, "batch_size_per_image must be >= 1"),
        ({"batch_size_per_image": 1.5}, TypeError, "batch_size_per_image must be an int"),
        ({"fg_fraction": 0.0}, ValueError, "fg_fraction must be in"),
        ({"nms_thresh": 1.5}, ValueError, "nms_thresh must be in"),
        ({"boxes": torch.zeros(3, 4)}, ValueError, "boxes must be (R, 4) or (N, R, 4)"),
        ({"labels": torch.zeros(1, 4)}, ValueError, "labels must be integers"),
        ({"loss": torch.zeros(4)}, ValueError, "loss must be a floating (N, R)"),
    ],
)
def test_bad_inputs(kwargs, error, message) -> None:
    args = {
        "loss": torch.zeros(1, 4),
        "boxes": row_boxes(4),
        "labels": torch.zeros(1, 4, dtype=torch.int64),
        "batch_size_per_image": 2,
        **kwargs,
    }
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        ohem_select(**args)
