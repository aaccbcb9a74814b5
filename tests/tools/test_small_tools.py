"""The tools without a run directory read configs/<tool>.yaml the same way: make_synthetic,
validate_dataset, convert_dataset and report (convert_torchvision: tests/detector)."""

from __future__ import annotations

import json


def test_make_synthetic_then_validate(run_tool, tmp_path) -> None:
    root = tmp_path / "syn thetic"  # a space: the path is quoted for Hydra's grammar
    done = run_tool("make_synthetic.py", f"out={root}", "num_train=2", "num_val=1", "seed=3")
    assert done.returncode == 0, done.stderr
    assert f"  val_ann: {root / 'annotations' / 'instances_val.json'}" in done.stdout
    val = json.loads((root / "annotations" / "instances_val.json").read_text())
    assert len(val["images"]) == 1
    done = run_tool(
        "validate_dataset.py",
        f"ann_file={root / 'annotations' / 'instances_train.json'}",
        f"img_dir={root / 'train'}",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.endswith("OK\n")


def test_config_errors(run_in_process, run_tool, tmp_path) -> None:
    for tool, args, message in (
        ("make_synthetic.py", [], "out is not set: pass out=VALUE"),
        ("make_synthetic.py", [f"out={tmp_path}", "num_train=many"],
         "make_synthetic.num_train: Value 'many' of type 'str' could not be converted to Integer"),
        ("validate_dataset.py", ["ann_file=a.json", "imgdir=x"],
         "unknown key 'imgdir' (choose from ann_file, img_dir, check_images, strict_boxes)"),
        ("convert_dataset.py", ["format=coco", "img_dir=i", f"out={tmp_path / 'o.json'}"],
         "format must be voc or yolo, not 'coco'"),
        ("convert_dataset.py", ["format=yolo", "img_dir=i", f"out={tmp_path / 'o.json'}"],
         "format=yolo needs labels_dir=DIR and classes=NAMES_FILE"),
        ("report.py", [], "give either runs=DIR (training runs) or curve_csv=[FILE,...] (runs "
         "tables of the imbalance curve)"),
    ):  # fmt: skip
        done = run_in_process(tool, *args)
        assert done.returncode == 2, (tool, done.stderr)
        assert done.stderr == f"focaldet: config error: {message}\n"
    done = run_tool("report.py", "--help")
    assert done.returncode == 0 and "runs=RUNS_DIR [out=DIR]" in done.stdout


def test_validator_fails_a_dataset_without_images(run_tool, tmp_path) -> None:
    ann_file = tmp_path / "empty.json"
    categories = [{"id": 1, "name": "a"}]
    ann_file.write_text(json.dumps({"images": [], "annotations": [], "categories": categories}))
    done = run_tool("validate_dataset.py", f"ann_file={ann_file}", f"img_dir={tmp_path}")
    assert done.returncode == 1, done.stdout + done.stderr
    assert '  - file: "images" is empty (the dataset has no images)\n' in done.stdout
    assert done.stdout.endswith("FAILED\n")
