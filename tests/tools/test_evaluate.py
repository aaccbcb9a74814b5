"""tools/evaluate.py: the same AP as pycocotools on independently computed predictions."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from data.coco import CocoDetection
from data.transforms import build_transforms
from detector import build_from_checkpoint
from detector.checkpoint import load_checkpoint, save_checkpoint
from detector.engine.evaluator import NO_GROUND_TRUTH

STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _data_args(root: Path) -> list[str]:
    return [
        f"data.root={root}",
        "data.generate.num_train=2",
        "data.generate.num_val=4",
        "data.val.transforms.0.short_sizes=[64]",
        "data.val.transforms.0.max_size=96",
        "workers=0",
        "device=cpu",
    ]


def _reference(checkpoint: Path, root: Path) -> tuple[list[dict], COCOeval]:
    """Predictions image by image (no engine code) and pycocotools' evaluation of them."""
    model, post, classes = build_from_checkpoint(load_checkpoint(checkpoint))
    resize = [
        {"_target_": "data.transforms.ResizeShortestEdge", "short_sizes": [64], "max_size": 96}
    ]
    ann = root / "annotations" / "instances_val.json"
    dataset = CocoDetection(ann, root / "val", transforms=build_transforms(resize, train=False))
    results = []
    with torch.no_grad():
        for image, target in dataset:
            det = post(model([image]), torch.tensor([target["orig_size"]]))[0]
            for box, score, label in zip(det["boxes"], det["scores"], det["labels"], strict=True):
                x0, y0, x1, y1 = box.tolist()
                results.append(
                    {"image_id": target["image_id"], "category_id": classes[int(label)]["id"],
                     "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(score)}
                )  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann))
        evaluator = COCOeval(gt, gt.loadRes(results), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return results, evaluator


def assert_same_results(
    predictions: list[dict], results: list[dict], box_tol: float, score_tol: float
) -> None:
    """The same COCO results one by one: image, class, box within ``box_tol`` px, score within
    ``score_tol``."""
    key = lambda r: (r["image_id"], r["category_id"], -r["score"])  # noqa: E731
    for ours, ref in zip(sorted(predictions, key=key), sorted(results, key=key), strict=True):
        assert (ours["image_id"], ours["category_id"]) == (ref["image_id"], ref["category_id"])
        assert ours["bbox"] == pytest.approx(ref["bbox"], abs=box_tol)
        assert ours["score"] == pytest.approx(ref["score"], abs=score_tol)


def test_evaluate_matches_pycocotools(
    run_tool: Callable, make_checkpoint: Callable, tiny_data: Path, tmp_path: Path
) -> None:
    checkpoint = make_checkpoint(0.005)
    proc = run_tool(
        "evaluate.py",
        f"checkpoint={checkpoint}",
        *_data_args(tiny_data),
        f"hydra.run.dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    predictions = json.loads((tmp_path / "predictions.json").read_text())
    results, reference = _reference(checkpoint, tiny_data)

    assert len(predictions) == len(results) == metrics["num_detections"] > 0
    expected = [v * 100 if v >= 0 else -1 for v in reference.stats]
    assert [metrics[k] for k in STATS] == pytest.approx(expected, abs=1e-6)
    # A random-weight model scores ~0 here; the predictions themselves must agree one by one
    # (tests/engine/test_evaluator.py checks non-zero APs against pycocotools).
    assert_same_results(predictions, results, box_tol=1e-3, score_tol=1e-6)
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in proc.stdout
    assert "per-class AP:" in proc.stdout and "  cross" in proc.stdout
    # The report: plots, tables, the F1-maximising threshold (printed and saved), PR curves.
    for name in ("pr_curve.png", "confusion_matrix.png", "f1_curve.png", "per_class.csv"):
        assert (tmp_path / name).stat().st_size > 0, name
    thresh = json.loads((tmp_path / "report.json").read_text())["f1_best_score_thresh"]
    best = "F1: no score threshold" if thresh is None else f"postprocess.score_thresh={thresh:.4f}"
    assert best in proc.stdout


def test_evaluate_with_no_detections_scores_zero(
    run_tool: Callable, make_checkpoint: Callable, tiny_data: Path, tmp_path: Path
) -> None:
    # A multirun sweep's folder name holds Hydra's grammar (= { } ,): the tool quotes the path.
    sweep_dir = tmp_path / "5_loss={gamma:2.0,alpha:0.25},train.seed=0" / "checkpoints"
    sweep_dir.mkdir(parents=True)
    checkpoint = sweep_dir / "last.pt"
    checkpoint.write_bytes(make_checkpoint(0.5).read_bytes())
    proc = run_tool(
        "evaluate.py", f"checkpoint={checkpoint}", *_data_args(tiny_data),
        f"hydra.run.dir={tmp_path}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["num_detections"] == 0
    assert metrics["AP"] == metrics["AP50"] == metrics["AR100"] == 0.0
    assert set(metrics["per_class_AP"].values()) <= {0.0, None}  # None: no ground truth
    assert 0.0 in metrics["per_class_AP"].values()
    assert json.loads((tmp_path / "predictions.json").read_text()) == []
    assert json.loads((tmp_path / "report.json").read_text())["f1_best_score_thresh"] is None
    assert "F1: no score threshold gives a true positive" in proc.stdout

    # The checkpoint's threshold (0.5) replaced on the command line: the scores (~0.01) pass.
    proc = run_tool(
        "evaluate.py", f"checkpoint={checkpoint}", *_data_args(tiny_data),
        f"hydra.run.dir={tmp_path}", "postprocess.score_thresh=0.005",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "metrics.json").read_text())["num_detections"] > 0


def test_evaluate_rejects_an_unknown_backend(
    run_tool: Callable, make_checkpoint: Callable, tiny_data: Path, tmp_path: Path
) -> None:
    proc = run_tool(
        "evaluate.py", f"checkpoint={make_checkpoint(0.5)}", *_data_args(tiny_data),
        f"hydra.run.dir={tmp_path}", "evaluation.backend=fastest",
    )  # fmt: skip
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("focaldet: config error: evaluation.backend: eval backend must be one")


def test_evaluate_refuses_a_checkpoint_of_other_classes(
    run_tool: Callable, make_checkpoint: Callable, tiny_data: Path, tmp_path: Path
) -> None:
    checkpoint = load_checkpoint(make_checkpoint(0.5))
    first, second = checkpoint["classes"][:2]
    first["name"] = "person"  # another class under the same id (COCO's id 1 is "person")
    second["id"] = 90  # the same class under another id
    path = tmp_path / "other.pt"
    save_checkpoint(path, checkpoint)
    proc = run_tool(
        "evaluate.py", f"checkpoint={path}", *_data_args(tiny_data), f"hydra.run.dir={tmp_path}"
    )
    assert proc.returncode == 1
    ann_file = tiny_data / "annotations" / "instances_val.json"
    assert (first["id"], second["id"]) == (1, 90)  # synthetic ids 1..5: circle, square, ...
    assert proc.stderr == (
        f"focaldet: the classes of {path} and {ann_file} differ (id 1: 'person' in the "
        "checkpoint, 'circle' in the data; id 2: 'none' in the checkpoint, 'square' in the data; "
        "id 90: 'square' in the checkpoint, 'none' in the data): its detections would be scored "
        "as other classes\n"
    )
    assert proc.stderr.count("\n") == 1
    assert not (tmp_path / "metrics.json").exists()


def test_validation_set_without_boxes_warns_and_says_why(
    run_tool: Callable, make_checkpoint: Callable, tiny_data: Path, tmp_path: Path
) -> None:
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    ann_file = root / "annotations" / "instances_val.json"
    ann_file.write_text(json.dumps({**json.loads(ann_file.read_text()), "annotations": []}))
    data = [  # a plain COCO-format dataset: the synthetic one would be generated again
        "data=coco_format",
        f"data.val.ann_file={ann_file}",
        f"data.val.img_dir={root}/val",
        *[a for a in _data_args(root) if not a.startswith(("data.root", "data.generate"))],
    ]
    proc = run_tool(
        "evaluate.py", f"checkpoint={make_checkpoint(0.005)}", *data,
        f"hydra.run.dir={tmp_path / 'out'}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["AP"] == -1.0 and metrics["warning"] == NO_GROUND_TRUTH
    assert f"warning: {NO_GROUND_TRUTH}" in proc.stdout


@pytest.mark.parametrize(
    "export_format", ["torchscript", pytest.param("onnx", marks=pytest.mark.slow)]
)
def test_evaluate_scores_an_exported_file_as_its_checkpoint(
    export_format: str, make_checkpoint: Callable, tiny_data: Path, tmp_path: Path, load_tool
) -> None:
    """``checkpoint=MODEL.onnx|.torchscript``: the file's detections and AP are the checkpoint's
    (pycocotools on predictions made image by image, :func:`_reference`), and settings the
    graph has fixed are refused."""
    from detector.engine.cli import compose_tool
    from detector.engine.config import ConfigError

    if export_format == "onnx":
        for module in ("onnx", "onnxscript", "onnxruntime"):
            pytest.importorskip(module)
    checkpoint = make_checkpoint(0.005)
    model = tmp_path / f"model.{export_format}"
    export = [f"checkpoint={checkpoint}", f"format={export_format}", f"out={model}"]
    assert load_tool("export").main(export) == 0
    evaluate = load_tool("evaluate")
    cfg = compose_tool("evaluate", [f"checkpoint={model}", *_data_args(tiny_data)])
    metrics = evaluate.run(cfg, tmp_path)
    predictions = json.loads((tmp_path / "predictions.json").read_text())
    results, reference = _reference(checkpoint, tiny_data)

    assert metrics["checkpoint"] == str(model)
    assert len(predictions) == len(results) == metrics["num_detections"] > 0
    expected = [v * 100 if v >= 0 else -1 for v in reference.stats]
    assert [metrics[k] for k in STATS] == pytest.approx(expected, abs=1e-6)
    assert_same_results(predictions, results, box_tol=0.01, score_tol=1e-4)
    assert (tmp_path / "pr_curve.png").stat().st_size > 0

    for override in ("postprocess.score_thresh=0.3", "compile=true"):
        cfg = compose_tool("evaluate", [f"checkpoint={model}", *_data_args(tiny_data), override])
        with pytest.raises(ConfigError, match=f"^{override.split('=')[0]}: not applicable to"):
            evaluate.run(cfg, tmp_path)
