import pytest
import torch
from torchvision.models.detection._utils import Matcher as TVMatcher
from torchvision.ops import box_iou

from detector import Matcher
from detector.labeling import BACKGROUND, IGNORE

# 3 boxes x 7 anchors.
IOU = torch.tensor(
    [
        [0.70, 0.45, 0.10, 0.00, 0.20, 0.30, 0.00],
        [0.55, 0.00, 0.39, 0.00, 0.35, 0.10, 0.00],
        [0.00, 0.00, 0.00, 0.00, 0.10, 0.38, 0.00],
    ]
)


def test_fixed_iou_matrix_without_low_quality_matches():
    matched = Matcher(0.5, 0.4, allow_low_quality_matches=False)(IOU)
    expected = [0, IGNORE, BACKGROUND, BACKGROUND, BACKGROUND, BACKGROUND, BACKGROUND]
    assert matched.tolist() == expected


def test_fixed_iou_matrix_with_low_quality_matches():
    matched = Matcher(0.5, 0.4, allow_low_quality_matches=True)(IOU)
    # Box 0's best anchor is 0 (already fg). Box 1's best is anchor 0 too (0.55): anchor 0 keeps
    # its argmax, box 0. Box 2's best is anchor 5 (0.38), whose argmax is box 2.
    expected = [0, IGNORE, BACKGROUND, BACKGROUND, BACKGROUND, 2, BACKGROUND]
    assert matched.tolist() == expected


def test_low_quality_ties_and_agreement_with_torchvision():
    iou = torch.tensor([[0.3, 0.3, 0.1, 0.2], [0.0, 0.2, 0.6, 0.0]])
    matched = Matcher()(iou)
    assert matched.tolist() == [0, 0, 1, BACKGROUND]  # both tied anchors join box 0
    tv = TVMatcher(0.5, 0.4, allow_low_quality_matches=True)(iou.clone())
    # torchvision encodes below-low as -1 and between as -2.
    tv_mapped = [{-1: BACKGROUND, -2: IGNORE}.get(v, v) for v in tv.tolist()]
    assert matched.tolist() == tv_mapped


def test_box_without_overlap_claims_nothing():
    iou = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.7, 0.0]])
    assert Matcher()(iou).tolist() == [BACKGROUND, 1, BACKGROUND]


def test_no_boxes_is_all_background():
    matched = Matcher()(torch.zeros(0, 5))
    assert matched.tolist() == [BACKGROUND] * 5 and matched.dtype == torch.int64


def test_bad_thresholds():
    with pytest.raises(ValueError, match="bg_iou_thresh <= fg_iou_thresh"):
        Matcher(fg_iou_thresh=0.3, bg_iou_thresh=0.4)
    with pytest.raises(ValueError, match=r"\(M, R\)"):
        Matcher()(torch.zeros(3))


def test_thresholds_are_inclusive_at_fg_and_exclusive_at_bg():
    # §4: IoU >= 0.5 is foreground, IoU < 0.4 background. 0.5, 0.375 and 0.4375 are exact in
    # binary; float32(0.4) is the value the threshold 0.4 becomes against a float32 IoU; the
    # neighbours one ulp below each threshold land on the other side.
    below = torch.nextafter(torch.tensor([0.5, 0.4]), torch.tensor(0.0))
    iou = torch.tensor([[0.9, 0.5, below[0], 0.4, below[1], 0.4375, 0.375]])
    expected = [0, 0, IGNORE, IGNORE, BACKGROUND, IGNORE, BACKGROUND]
    for low_quality in (False, True):  # anchor 0 is the box's best: no low-quality change
        assert Matcher(0.5, 0.4, low_quality)(iou).tolist() == expected
    tv = TVMatcher(0.5, 0.4, allow_low_quality_matches=False)(iou.clone())
    assert [{-1: BACKGROUND, -2: IGNORE}.get(v, v) for v in tv.tolist()] == expected


def test_boundary_ious_computed_from_boxes():
    # A 10 x 10 box against anchors of its width: heights 5 and 4 give IoU 50/100 and 40/100
    # exactly as box_iou computes them, i.e. on the thresholds themselves.
    box = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    anchors = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],
            [0.0, 0.0, 10.0, 5.0],
            [0.0, 0.0, 10.0, 4.0],
            [0.0, 0.0, 10.0, 3.0],
        ]
    )
    iou = box_iou(box, anchors)
    assert iou[0, 1] == 0.5 and iou[0, 2] == torch.tensor(0.4)
    assert Matcher()(iou).tolist() == [0, 0, IGNORE, BACKGROUND]
