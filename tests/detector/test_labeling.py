"""AnchorLabeler (detector/labeling.py): hand-computed labels on a tiny set of anchors."""

import subprocess
import sys

import pytest
import torch

from detector import AnchorLabeler, Matcher
from detector.labeling import BACKGROUND, IGNORE

BOX = [0.0, 0.0, 10.0, 10.0]  # class 2, area 100
CROWD = [20.0, 0.0, 30.0, 10.0]  # class 1, iscrowd
ANCHORS = torch.tensor(
    [
        [0.0, 0.0, 10.0, 10.0],  # IoU 1 with BOX -> 2
        [0.0, 0.0, 10.0, 5.0],  # IoU exactly 0.5 = fg threshold -> foreground, 2
        [0.0, 0.0, 10.0, 4.0],  # IoU exactly 0.4 = bg threshold -> IGNORE (not background)
        [0.0, 0.0, 10.0, 3.0],  # IoU 0.3 -> BACKGROUND
        [20.0, 0.0, 30.0, 4.0],  # IoU exactly 0.4 with the crowd box -> IGNORE
        [20.0, 0.0, 30.0, 3.0],  # IoU 0.3 with the crowd box -> BACKGROUND
        [20.0, 0.0, 30.0, 10.0],  # IoU 1 with the crowd box: a crowd never matches -> IGNORE
        [50.0, 50.0, 60.0, 60.0],  # nothing -> BACKGROUND
    ]
)
EXPECTED = [2, 2, IGNORE, BACKGROUND, IGNORE, BACKGROUND, IGNORE, BACKGROUND]
TARGET = {
    "boxes": torch.tensor([BOX, CROWD]),
    "labels": torch.tensor([2, 1]),
    "iscrowd": torch.tensor([False, True]),
}
EMPTY = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}


def test_labels_and_matched_boxes_by_hand() -> None:
    labels, matched = AnchorLabeler(Matcher())(ANCHORS, TARGET)
    assert labels.dtype == torch.int64
    assert labels.tolist() == EXPECTED
    assert matched.shape == (8, 4) and matched.dtype == torch.float32
    assert matched[:2].tolist() == [BOX, BOX]


def test_without_iscrowd_every_box_matches() -> None:
    target = {"boxes": TARGET["boxes"], "labels": TARGET["labels"]}
    labels, matched = AnchorLabeler(Matcher())(ANCHORS, target)
    assert labels.tolist() == [2, 2, IGNORE, BACKGROUND, IGNORE, BACKGROUND, 1, BACKGROUND]
    assert matched[6].tolist() == CROWD


def test_crowd_region_follows_the_matchers_background_threshold() -> None:
    labels, _ = AnchorLabeler(Matcher(0.5, 0.3))(ANCHORS, TARGET)
    # IoU 0.3 is no longer background, with the box or the crowd region.
    assert labels.tolist() == [2, 2, IGNORE, IGNORE, IGNORE, IGNORE, IGNORE, BACKGROUND]


def test_image_without_boxes_is_all_background() -> None:
    labels, matched = AnchorLabeler(Matcher())(ANCHORS, EMPTY)
    assert labels.tolist() == [BACKGROUND] * 8
    assert torch.equal(matched, torch.zeros(8, 4))


def test_label_batch_stacks_the_images() -> None:
    labeler = AnchorLabeler(Matcher())
    labels, matched = labeler.label_batch(ANCHORS, [TARGET, EMPTY, TARGET])
    assert labels.shape == (3, 8) and matched.shape == (3, 8, 4)
    assert labels.tolist() == [EXPECTED, [BACKGROUND] * 8, EXPECTED]
    assert torch.equal(matched[0], labeler(ANCHORS, TARGET)[1])
    labels, matched = labeler.label_batch(ANCHORS, [])
    assert labels.shape == (0, 8) and labels.dtype == torch.int64 and matched.shape == (0, 8, 4)


def test_bad_target_is_named() -> None:
    bad = {"boxes": torch.zeros(2, 3), "labels": torch.zeros(2, dtype=torch.int64), "image_id": 7}
    with pytest.raises(ValueError, match=r"AnchorLabeler: image 7: boxes must be \(M, 4\)"):
        AnchorLabeler(Matcher())(ANCHORS, bad)
    bad = {"boxes": torch.zeros(2, 4), "labels": torch.zeros(3, dtype=torch.int64)}
    with pytest.raises(ValueError, match=r"image \?: .* got \(2, 4\) and \(3,\)"):
        AnchorLabeler(Matcher())(ANCHORS, bad)


def test_sentinels_have_one_home_and_no_import_cycle() -> None:
    """losses imports the sentinels from detector.labeling; the model core never imports losses."""
    code = (
        "import losses, sys; import detector.labeling as lab; "
        "assert (losses.IGNORE, losses.BACKGROUND) == (lab.IGNORE, lab.BACKGROUND) == (-1, -2); "
        "import detector; print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    code = "import sys, detector; print(sorted(m for m in sys.modules if m.startswith('losses')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr
