"""detector/benchmarks/dataset.py: the generated file has train2017's shape; a measurement runs."""

from __future__ import annotations

import json

from data.validate import check_structure
from detector.benchmarks.dataset import TRAIN2017_BOXES, TRAIN2017_IMAGES, generate, measure


def test_generated_file_has_the_scaled_counts(tmp_path):
    ann_file = generate(tmp_path / "ann.json", 0.001, chunk=300)
    dataset = json.loads(ann_file.read_text())
    assert len(dataset["images"]) == round(TRAIN2017_IMAGES * 0.001) == 118
    assert len(dataset["annotations"]) == round(TRAIN2017_BOXES * 0.001) == 860
    assert [ann["id"] for ann in dataset["annotations"]] == list(range(1, 861))
    assert len(dataset["categories"]) == 80
    assert check_structure(dataset, tmp_path) == []
    crowds = [ann for ann in dataset["annotations"] if ann["iscrowd"]]
    assert len(crowds) == 9 and all("counts" in ann["segmentation"] for ann in crowds)
    assert len(dataset["annotations"][1]["segmentation"][0]) == 48


def test_measure_without_workers(tmp_path):
    ann_file = generate(tmp_path / "ann.json", 0.001)
    row = measure("compact", str(ann_file), 0, str(tmp_path / "cache"))
    assert row["pickle_mb"] > 0 and row["build_s"] > 0 and row["worker_rss_mb"] == 0
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
