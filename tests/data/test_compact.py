"""The compact arrays: one JSON parse, the cache (key, lock, atomic write), cheap pickling."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import pickle
import threading
import time

import numpy as np
import pytest

import data.compact
from data.coco import CocoDetection
from data.compact import CompactAnnotations, load_compact
from data.validate import DatasetError


def _caches(ann_file):
    return sorted((ann_file.parent / ".focaldet_cache").glob("*.npz"))


def _forbid_parsing(monkeypatch):
    def parse(*args, **kwargs):
        raise AssertionError("the JSON was parsed")

    monkeypatch.setattr(data.compact, "load_coco_json", parse)


def test_layout_of_the_arrays(tiny_coco):
    ann_file, img_dir, _ = tiny_coco
    compact = load_compact(ann_file, img_dir, cache=False)
    assert compact.image_ids.tolist() == [10, 20, 30]
    assert compact.sizes.tolist() == [[40, 60], [50, 30], [40, 60]]
    assert compact.names.tobytes() == b"a.pngbb.pngccc.png"
    assert compact.name_offsets.tolist() == [0, 5, 11, 18]
    assert compact.box_offsets.tolist() == [0, 3, 4, 4]
    assert compact.labels.tolist() == [1, 0, 0, 0] and compact.labels.dtype == np.int32
    assert compact.iscrowd.tolist() == [False, False, True, False]
    assert compact.cat_ids.tolist() == [3, 9]
    assert compact.classes() == [{"id": 3, "name": "three"}, {"id": 9, "name": "nine"}]
    assert compact.box_report().splitlines() == [
        "  - annotation 2 of image 10 (a.png): bbox [50, 30, 20, 20] exceeds the 60x40 image",
        "  - annotation 4 of image 20 (bb.png): bbox [29.5, 10, 5, 5] is degenerate after"
        " clipping (outside the image); dropped",
    ]
    for field in data.compact.fields(CompactAnnotations):  # no object arrays anywhere
        assert getattr(compact, field.name).dtype != object


def test_second_start_reads_the_cache_not_the_json(tiny_coco, monkeypatch):
    ann_file, img_dir, _ = tiny_coco
    first = CocoDetection(ann_file, img_dir)
    assert len(_caches(ann_file)) == 1
    _forbid_parsing(monkeypatch)
    second = CocoDetection(ann_file, img_dir)
    assert second.stats == first.stats and second.classes == first.classes
    for index in range(len(first)):
        for key, value in first.annotations(index).items():
            assert np.array_equal(second.annotations(index)[key], value)


def test_policy_applies_to_a_cached_start(tiny_coco, monkeypatch, caplog):
    ann_file, img_dir, _ = tiny_coco
    CocoDetection(ann_file, img_dir, bad_box_policy="skip")
    _forbid_parsing(monkeypatch)
    with pytest.raises(DatasetError, match="annotation 4 of image 20"):
        CocoDetection(ann_file, img_dir, bad_box_policy="error")
    with caplog.at_level(logging.WARNING, logger="data.coco"):
        CocoDetection(ann_file, img_dir, bad_box_policy="warn")
    assert "bbox [50, 30, 20, 20] exceeds the 60x40" in caplog.text


def test_changed_file_is_rebuilt_and_the_old_cache_removed(tiny_coco):
    ann_file, img_dir, dataset = tiny_coco
    CocoDetection(ann_file, img_dir)
    (old_cache,) = _caches(ann_file)
    dataset["annotations"] = dataset["annotations"][:1]
    ann_file.write_text(json.dumps(dataset))
    changed = CocoDetection(ann_file, img_dir)
    assert changed.stats["boxes"] == 1
    (new_cache,) = _caches(ann_file)
    assert new_cache != old_cache


def test_same_size_rewrite_is_seen_through_mtime(tiny_coco):
    ann_file, img_dir, dataset = tiny_coco
    CocoDetection(ann_file, img_dir)
    dataset["annotations"][0]["category_id"] = 3  # "9" -> "3": same number of bytes
    size = ann_file.stat().st_size
    ann_file.write_text(json.dumps(dataset))
    stat = ann_file.stat()
    os.utime(ann_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert ann_file.stat().st_size == size
    assert CocoDetection(ann_file, img_dir).annotations(0)["labels"].tolist() == [0, 0, 0]


def test_unreadable_cache_is_rebuilt(tiny_coco, caplog):
    ann_file, img_dir, _ = tiny_coco
    CocoDetection(ann_file, img_dir)
    (cache,) = _caches(ann_file)
    cache.write_bytes(b"not a zip")
    with caplog.at_level(logging.WARNING, logger="data.compact"):
        dataset = CocoDetection(ann_file, img_dir)
    assert "ignoring the unreadable dataset cache" in caplog.text
    assert dataset.stats["boxes"] == 4
    assert CompactAnnotations.load(cache).stats.tolist() == list(dataset.stats.values())


def test_unusable_cache_dir_builds_without_it(tiny_coco, caplog):
    ann_file, img_dir, _ = tiny_coco
    blocker = ann_file.parent / "a_file"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING, logger="data.compact"):
        dataset = CocoDetection(ann_file, img_dir, cache_dir=blocker / "cache")
    assert "not usable" in caplog.text and dataset.stats["boxes"] == 4


def test_cache_off_writes_nothing(tiny_coco):
    ann_file, img_dir, _ = tiny_coco
    CocoDetection(ann_file, img_dir, cache=False)
    assert not (ann_file.parent / ".focaldet_cache").exists()


def test_ranks_wait_for_the_first_builder(tiny_coco, tmp_path, monkeypatch):
    """Four ranks start at once: one builds (while holding the lock), the others load."""
    ann_file, img_dir, _ = tiny_coco
    builds = []
    build = data.compact.build_from_file

    def slow_build(*args):
        builds.append(threading.get_ident())
        time.sleep(0.3)  # long enough for the other threads to reach the lock
        return build(*args)

    monkeypatch.setattr(data.compact, "build_from_file", slow_build)
    results = [None] * 4

    def rank(i):
        results[i] = load_compact(ann_file, img_dir, cache_dir=tmp_path / "cache")

    threads = [threading.Thread(target=rank, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(builds) == 1
    assert all(result.boxes.tobytes() == results[0].boxes.tobytes() for result in results)


def test_lock_held_elsewhere_blocks_the_build(tiny_coco, tmp_path):
    ann_file, img_dir, _ = tiny_coco
    cache_dir = tmp_path / "cache"
    load_compact(ann_file, img_dir, cache_dir=cache_dir)
    (lock_file,) = cache_dir.glob("*.lock")
    for cache in cache_dir.glob("*.npz"):
        cache.unlink()
    done = threading.Event()
    with lock_file.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        thread = threading.Thread(
            target=lambda: (load_compact(ann_file, img_dir, cache_dir=cache_dir), done.set())
        )
        thread.start()
        assert not done.wait(0.5)
        fcntl.flock(handle, fcntl.LOCK_UN)
    thread.join()
    assert done.is_set() and len(list(cache_dir.glob("*.npz"))) == 1


def test_pickle_carries_arrays_not_the_ground_truth(tiny_coco):
    ann_file, img_dir, _ = tiny_coco
    dataset = CocoDetection(ann_file, img_dir)
    assert dataset.coco_gt.getAnnIds(imgIds=[10]) == [1, 2, 3]
    assert "segmentation" not in dataset.coco_gt.anns[1]
    blob = pickle.dumps(dataset)
    assert b"pycocotools" not in blob
    clone = pickle.loads(blob)
    assert clone._coco_gt is None and dataset._coco_gt is not None
    assert clone.stats == dataset.stats and clone.file_name(1) == "bb.png"
    assert clone[0][1]["boxes"].tolist() == dataset[0][1]["boxes"].tolist()


def test_ground_truth_of_a_changed_file_is_refused(tiny_coco):
    ann_file, img_dir, dataset = tiny_coco
    coco = CocoDetection(ann_file, img_dir)
    dataset["annotations"] = []
    ann_file.write_text(json.dumps(dataset))
    with pytest.raises(DatasetError, match="changed since the dataset was built"):
        _ = coco.coco_gt


def test_missing_annotation_file(tmp_path):
    with pytest.raises(DatasetError, match="annotation file not found: .*nope.json"):
        CocoDetection(tmp_path / "nope.json", tmp_path)
