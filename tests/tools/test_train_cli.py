"""tools/train.py from the command line: Hydra overrides, multirun, and one-line config errors."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
LOSSES = sorted(p.stem for p in (CONFIG_DIR / "loss").glob("*.yaml"))

TINY = [
    "data.generate.num_train=2",
    "data.generate.num_val=2",
    "data.train.transforms.0.short_sizes=[64]",
    "data.train.transforms.0.max_size=96",
    "data.val.transforms.0.short_sizes=[64]",
    "data.val.transforms.0.max_size=96",
    "model.fpn.out_channels=32",
    "model.head.num_convs=1",
    "train.max_iter=2",
    "train.batch_size=2",
    "train.workers=0",
    "train.vis_images=1",
]


def test_multirun_sweeps_gamma(run_tool: Callable, tiny_data: Path, tmp_path: Path) -> None:
    proc = run_tool(
        "train.py", "-m", "loss.gamma=0,2", f"data.root={tiny_data}", *TINY,
        f"hydra.sweep.dir={tmp_path}", "hydra.sweep.subdir=gamma${loss.gamma}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for gamma in (0, 2):
        run = tmp_path / f"gamma{gamma}"
        assert OmegaConf.load(run / "config.yaml").loss.gamma == gamma
        assert (run / "checkpoints" / "last.pt").is_file()
        assert {"AP", "AP50", "per_class_AP"} <= set(json.loads((run / "metrics.json").read_text()))


CLI_ERRORS = [
    (["-m", "loss.gamma=0,1,-1"], "loss.gamma must be >= 0, got -1"),
    (["loss=hinge"], f"unknown loss 'hinge' (choose from {', '.join(LOSSES)})"),
    (["data.val.batch_size=0"], "data.val.batch_size must be an integer >= 1, got 0"),
    (
        ["data.bad_box_policy=foo"],
        "data.bad_box_policy must be one of skip, warn, error, got 'foo'",
    ),
    (
        ["data.bad_image_policy=warn"],
        "data.bad_image_policy must be one of error, skip, got 'warn'",
    ),
    (["model.head.prior_prob=1.5"], "model.head.prior_prob must be in (0, 1), got 1.5"),
    (["train.lr=-1"], "train.lr: no such key in the config; did you mean optim.lr?"),
    (["optim.lr=-1"], "optim.lr must be > 0, got -1.0"),
    (["postprocess.nms_thresh=2"], "postprocess.nms_thresh must be in [0, 1], got 2"),
    (["model.head.num_convs=-1"], "model.head.num_convs must be >= 0, got -1"),
]
if not torch.cuda.is_available():
    CLI_ERRORS.append(
        (
            ["train.device=cuda"],
            "train.device=cuda but CUDA is not available here (use train.device=auto or cpu)",
        )
    )


@pytest.mark.parametrize(("args", "message"), CLI_ERRORS, ids=[" ".join(a) for a, _ in CLI_ERRORS])
def test_bad_config_exits_2_with_one_line(
    run_in_process: Callable, tmp_path: Path, args: list[str], message: str
) -> None:
    proc = run_in_process("train.py", *args, f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2
    assert proc.stderr == f"focaldet: config error: {message}\n"
    assert not (tmp_path / "run").exists()


def test_bad_config_from_the_command_line(run_tool: Callable, tmp_path: Path) -> None:
    """The same check when Python runs the script: ``python tools/train.py loss=hinge``."""
    proc = run_tool("train.py", "loss=hinge", f"hydra.run.dir={tmp_path / 'run'}")
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == f"focaldet: config error: {CLI_ERRORS[1][1]}\n"
    assert not (tmp_path / "run").exists()


def test_diverged_run_is_recorded_and_the_sweep_goes_on(
    run_tool: Callable, tiny_data: Path, tmp_path: Path
) -> None:
    proc = run_tool(
        "train.py", "-m", "optim.lr=1e30,0.01", f"data.root={tiny_data}", *TINY,
        "train.max_iter=3", "train.clip_grad_norm=null",
        f"hydra.sweep.dir={tmp_path}", "hydra.sweep.subdir=lr${optim.lr}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    diverged = json.loads((tmp_path / "lr1e+30" / "metrics.json").read_text())
    assert diverged["diverged"] is True
    assert diverged["error"].startswith("non-finite loss at iteration ")
    finished = json.loads((tmp_path / "lr0.01" / "metrics.json").read_text())
    assert "AP" in finished and "diverged" not in finished


def _own_copy(tiny_data: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    """A copy of the tiny dataset to break, and the arguments that train on it (coco_format)."""
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    args = [
        "data=coco_format",
        f"data.train.ann_file={root}/annotations/instances_train.json",
        f"data.train.img_dir={root}/train",
        f"data.val.ann_file={root}/annotations/instances_val.json",
        f"data.val.img_dir={root}/val",
        *[a for a in TINY if not a.startswith("data.generate")],
    ]
    return root, args


def _one_line_error(proc) -> str:
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("focaldet: "), proc.stderr
    return proc.stderr


def test_bad_validation_image_stops_the_run_at_start(
    run_tool: Callable, tiny_data: Path, tmp_path: Path
) -> None:
    root, args = _own_copy(tiny_data, tmp_path)
    val = json.loads((root / "annotations" / "instances_val.json").read_text())
    photo = root / "val" / val["images"][1]["file_name"]
    photo.write_bytes(photo.read_bytes()[: photo.stat().st_size // 2])  # a JPEG cut in half
    proc = run_tool("train.py", *args, f"hydra.run.dir={tmp_path / 'run'}")
    line = _one_line_error(proc)
    count = len(val["images"])  # the session's tiny set: 4 images, or 2 once TINY regenerated it
    assert f"1 of the {count} images of {root}/annotations/instances_val.json fail" in line
    assert f"file {photo}: truncated JPEG (no end-of-image marker FFD9 at its end)" in line
    assert not (tmp_path / "run" / "checkpoints").exists()  # stopped before training


def test_image_failing_to_decode_in_a_worker_is_named(
    run_tool: Callable, tiny_data: Path, tmp_path: Path
) -> None:
    root, args = _own_copy(tiny_data, tmp_path)
    train = json.loads((root / "annotations" / "instances_train.json").read_text())
    photo = root / "train" / train["images"][0]["file_name"]
    data = bytearray(photo.read_bytes())
    start = data.index(b"\xff\xda")  # start of scan: the header before it stays intact
    data[start + 2 : -2] = b"\x00" * (len(data) - start - 4)  # no valid scan; FFD9 kept
    photo.write_bytes(bytes(data))
    proc = run_tool(
        "train.py", *args, "train.workers=1", "train.progress=false",
        f"hydra.run.dir={tmp_path / 'run'}",
    )  # fmt: skip
    line = _one_line_error(proc)
    assert line.startswith(f"focaldet: cannot decode image {photo}: "), line


@pytest.mark.parametrize("key", ["images", "categories"])
def test_empty_dataset_is_one_line(
    run_tool: Callable, tiny_data: Path, tmp_path: Path, key: str
) -> None:
    root, args = _own_copy(tiny_data, tmp_path)
    ann_file = root / "annotations" / "instances_train.json"
    dataset = json.loads(ann_file.read_text())
    ann_file.write_text(json.dumps({**dataset, key: [], "annotations": []}))
    proc = run_tool("train.py", *args, f"hydra.run.dir={tmp_path / 'run'}")
    assert _one_line_error(proc) == (
        f"focaldet: dataset {ann_file} with images in {root}/train is not usable: "
        f'file: "{key}" is empty (the dataset has no {key})\n'
    )


def test_corrupt_last_checkpoint_on_resume_is_one_line(
    run_tool: Callable, tiny_data: Path, tmp_path: Path
) -> None:
    _, args = _own_copy(tiny_data, tmp_path)
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"PK\x03\x04 not really a zip")
    proc = run_tool("train.py", *args, "train.resume=true", f"hydra.run.dir={tmp_path / 'run'}")
    assert _one_line_error(proc).startswith(f"focaldet: checkpoint {last} could not be read: ")
