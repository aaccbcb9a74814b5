"""tools/infer.py on images of any mode and size: drawn copies and predictions.json."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image


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
