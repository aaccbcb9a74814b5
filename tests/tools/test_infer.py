"""tools/infer.py: drawn copies and predictions.json for images of any mode and size, unreadable
images skipped, the input photos never overwritten, and a checkpoint that cannot run code."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from data.decode import ImageDecodeError
from detector.checkpoint import load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def test_infer_grayscale_and_rgba(
    run_tool: Callable, make_checkpoint: Callable, tmp_path: Path
) -> None:
    images = tmp_path / "in"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (70, 90), dtype=np.uint8), mode="L").save(
        images / "gray.png"
    )
    Image.fromarray(rng.integers(0, 255, (120, 50, 4), dtype=np.uint8), mode="RGBA").save(
        images / "rgba.png"
    )
    (images / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    proc = run_tool(
        "infer.py", f"checkpoint={make_checkpoint(0.005)}", f"input={images}", f"output={out}",
        "score_thresh=0.0", "device=cpu",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for name, size in (("gray.png", (90, 70)), ("rgba.png", (50, 120))):
        drawn = Image.open(out / name)
        assert drawn.mode == "RGB" and drawn.size == size
    predictions = json.loads((out / "predictions.json").read_text())
    assert {p["file_name"] for p in predictions} == {"gray.png", "rgba.png"}
    assert not (out / "notes.txt").exists()
    for p in predictions:
        assert set(p) == {"file_name", "category_id", "bbox", "score"}
        assert p["category_id"] in {1, 2, 3, 4, 5} and p["score"] >= 0.0
        width, height = Image.open(images / p["file_name"]).size
        x, y, w, h = p["bbox"]
        assert 0 <= x <= x + w <= width + 1e-3 and 0 <= y <= y + h <= height + 1e-3
    # At most detections_per_img (100) per image, and at least one box at threshold 0.
    counts = [sum(p["file_name"] == n for p in predictions) for n in ("gray.png", "rgba.png")]
    assert all(1 <= c <= 100 for c in counts)


def _photos(folder: Path, *names: str) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(folder / name)
    return folder


@pytest.fixture
def infer(load_tool: Callable[[str], ModuleType]) -> ModuleType:
    """tools/infer.py as a module, to run its ``run(cfg)`` in this process."""
    return load_tool("infer")


def _run_in_process(
    infer: ModuleType, checkpoint: Path, images: Path, out: Path, score_thresh: float
) -> list:
    cfg = OmegaConf.create(
        {"checkpoint": str(checkpoint), "input": str(images), "output": str(out),
         "score_thresh": score_thresh, "device": "cpu", "transforms": None}
    )  # fmt: skip
    return infer.run(cfg)


def test_score_thresh_below_the_checkpoints_takes_effect(
    make_checkpoint: Callable, tmp_path: Path, infer: ModuleType
) -> None:
    """The checkpoint keeps scores > 0.05; the random model scores about 0.01 (prior π)."""
    images = _photos(tmp_path / "in", "a.png")
    checkpoint = make_checkpoint(0.05)
    assert _run_in_process(infer, checkpoint, images, tmp_path / "out05", 0.05) == []
    predictions = _run_in_process(infer, checkpoint, images, tmp_path / "out", 0.005)
    scores = [p["score"] for p in predictions]
    assert len(scores) == 100  # detections_per_img: far more than 100 anchors score > 0.005
    assert min(scores) > 0.005 and max(scores) < 0.05


def test_an_unreadable_image_is_skipped_and_counted(
    make_checkpoint: Callable, tmp_path: Path, capsys: pytest.CaptureFixture, infer: ModuleType
) -> None:
    images = _photos(tmp_path / "in", "a.png", "c.png")
    (images / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    out = tmp_path / "out"
    predictions = _run_in_process(infer, make_checkpoint(0.005), images, out, 0.005)
    captured = capsys.readouterr()
    assert f"skipped {images / 'b.jpg'}" in captured.err
    assert "on 2 images" in captured.out and "skipped 1 unreadable image(s)" in captured.out
    assert {p["file_name"] for p in predictions} == {"a.png", "c.png"}
    assert json.loads((out / "predictions.json").read_text()) == predictions
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "c.png", "predictions.json"]


def test_no_readable_image_is_an_error(
    make_checkpoint: Callable, tmp_path: Path, infer: ModuleType
) -> None:
    images = tmp_path / "in"
    images.mkdir()
    (images / "b.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(ImageDecodeError, match="none of the 1 images"):
        _run_in_process(infer, make_checkpoint(0.005), images, tmp_path / "out", 0.005)
    assert not (tmp_path / "out" / "predictions.json").exists()


@pytest.mark.parametrize("target", ["folder", "folder of the file"])
def test_output_over_the_input_photos_is_refused(
    run_tool: Callable, make_checkpoint: Callable, tmp_path: Path, target: str
) -> None:
    images = _photos(tmp_path / "in", "a.png")
    before = (images / "a.png").read_bytes()
    source = images if target == "folder" else images / "a.png"
    proc = run_tool(
        "infer.py", f"checkpoint={make_checkpoint(0.05)}", f"input={source}",
        f"output={tmp_path / 'x' / '..' / 'in'}", "device=cpu",
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    assert "output:" in proc.stderr and "would overwrite" in proc.stderr
    assert (images / "a.png").read_bytes() == before
    # Hydra has opened its log (infer.log) in the run directory, ${output}; nothing else is there.
    assert sorted(p.name for p in images.iterdir()) == ["a.png", "infer.log"]


def test_a_checkpoint_transform_that_runs_code_is_refused(
    run_tool: Callable, make_checkpoint: Callable, tmp_path: Path
) -> None:
    """tools/infer.py rebuilds the checkpoint's evaluation transforms: they cannot open a file."""
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    ckpt = load_checkpoint(make_checkpoint(0.05))
    opener = {"_target_": "builtins.open", "file": str(victim), "mode": "w"}
    ckpt["config"]["data"]["val"]["transforms"].append(opener)
    save_checkpoint(tmp_path / "evil.pt", ckpt)
    images = _photos(tmp_path / "in", "a.png")
    proc = run_tool(
        "infer.py", f"checkpoint={tmp_path / 'evil.pt'}", f"input={images}",
        f"output={tmp_path / 'out'}", "device=cpu",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip() == (
        "focaldet: checkpoint config.data.val.transforms[1]._target_: 'builtins.open' is not an "
        "allowed target (only data.transforms classes and albumentations transforms are built "
        "from a file)"
    )
    assert victim.read_text() == "keep me"


def test_output_over_a_linked_photo_is_refused(tmp_path: Path, infer: ModuleType) -> None:
    """A link in the input folder points at a photo elsewhere: that folder is refused too."""
    photos = _photos(tmp_path / "photos", "a.png")
    links = tmp_path / "links"
    links.mkdir()
    (links / "a.png").symlink_to(photos / "a.png")
    for output in (links, photos, tmp_path / "photos" / "." / ""):
        with pytest.raises(infer.ConfigError, match="would overwrite"):
            infer.check_output([links / "a.png"], output)
    infer.check_output([links / "a.png"], tmp_path / "out")
    with pytest.raises(infer.ConfigError, match=r"is a file, not a folder"):
        infer.check_output([links / "a.png"], photos / "a.png")


def _write_video(path: Path, frames: int, size: tuple[int, int], fps: float) -> list[np.ndarray]:
    """A short MJPG video of moving rectangles and circles; returns its RGB frames as written."""
    import cv2

    width, height = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    written = []
    for i in range(frames):
        frame = np.full((height, width, 3), 40, np.uint8)
        cv2.rectangle(frame, (5 + 4 * i, 10), (40 + 4 * i, 50), (0, 200, 255), -1)
        cv2.circle(frame, (70, 30 + 2 * i), 12, (255, 80, 0), -1)
        writer.write(frame)
        written.append(frame[..., ::-1])
    writer.release()
    return written


def test_video_writes_annotated_frames_and_json_lines(
    make_checkpoint: Callable, tmp_path: Path, infer: ModuleType
) -> None:
    import cv2

    video = tmp_path / "clip.avi"
    _write_video(video, frames=5, size=(96, 64), fps=12.0)
    out = tmp_path / "out"
    cfg = OmegaConf.create(
        {"checkpoint": str(make_checkpoint(0.005)), "input": str(video), "output": str(out),
         "score_thresh": 0.005, "device": "cpu", "transforms": None, "batch_size": 2}
    )  # fmt: skip
    frames = infer.run(cfg)
    lines = [json.loads(line) for line in (out / "clip.jsonl").read_text().splitlines()]
    assert lines == frames and [f["frame"] for f in lines] == [0, 1, 2, 3, 4]
    assert all(1 <= len(f["detections"]) <= 100 for f in lines)
    written = cv2.VideoCapture(str(out / "clip.avi"))
    assert written.get(cv2.CAP_PROP_FPS) == pytest.approx(12.0)
    assert (written.get(cv2.CAP_PROP_FRAME_WIDTH), written.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (
        96, 64,
    )  # fmt: skip
    assert int(written.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    # Each frame's detections are the predictor's on the decoded frame (batches of 2 = alone).
    from detector import Predictor

    predictor = Predictor.from_checkpoint(cfg.checkpoint, "cpu", 0.005)
    source = cv2.VideoCapture(str(video))
    for entry in lines:
        ok, frame = source.read()
        assert ok
        expected = predictor(np.ascontiguousarray(frame[..., ::-1])).to_coco()
        assert [d["category_id"] for d in entry["detections"]] == [
            d["category_id"] for d in expected
        ]
        for got, want in zip(entry["detections"], expected, strict=True):
            assert got["bbox"] == pytest.approx(want["bbox"], abs=1e-3)


def test_predictor_gives_the_detections_of_evaluate(
    run_tool: Callable, make_checkpoint: Callable, tiny_data: Path, tmp_path: Path
) -> None:
    """tools/evaluate.py's predictions.json equals the Predictor on the same validation images."""
    from detector import Predictor

    checkpoint = make_checkpoint(0.005)
    proc = run_tool(
        "evaluate.py", f"checkpoint={checkpoint}", f"data.root={tiny_data}",
        "data.generate.num_train=2", "data.generate.num_val=4", "workers=0", "device=cpu",
        "data.val.transforms.0.short_sizes=[64]", "data.val.transforms.0.max_size=96",
        f"hydra.run.dir={tmp_path}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    evaluated = json.loads((tmp_path / "predictions.json").read_text())
    coco = json.loads((tiny_data / "annotations" / "instances_val.json").read_text())
    predictor = Predictor.from_checkpoint(checkpoint, "cpu", batch_size=1)
    expected = []
    for image in coco["images"]:
        det = predictor(tiny_data / "val" / image["file_name"])
        expected += det.to_coco(image_id=image["id"])
    assert len(evaluated) == len(expected) > 0
    key = lambda r: (r["image_id"], -r["score"], r["category_id"], r["bbox"])  # noqa: E731
    for got, want in zip(sorted(evaluated, key=key), sorted(expected, key=key), strict=True):
        assert got["image_id"] == want["image_id"] and got["category_id"] == want["category_id"]
        assert got["score"] == pytest.approx(want["score"], abs=1e-6)
        assert got["bbox"] == pytest.approx(want["bbox"], abs=1e-4)
