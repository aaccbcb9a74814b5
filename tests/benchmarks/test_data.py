"""detector/benchmarks/data.py on two raccoon photos: the pipelines it times agree, and its
result and table hold what was measured (the rates themselves are not tested)."""

from pathlib import Path

from detector.benchmarks import data as bench


def test_tiny_run(raccoon: Path) -> None:
    result = bench.run(
        ann_dir=str(raccoon / "annotations"),
        img_dir=str(raccoon / "images"),
        short_size=64,
        max_size=96,
        passes=2,
        limit=2,
        pil=False,
    )
    assert result["check"]["images"] == 2 and result["check"]["downscaled"] == 2
    assert result["check"]["max_mean_pixel_diff"] == 0.0  # no upscaled image to compare
    assert list(result["results"]) == [
        "focaldet (cv2 + albumentations)",
        "torchvision.io + transforms.v2",
    ]
    for record in result["results"].values():
        assert len(record["passes_img_s"]) == 2 and record["median_img_s"] > 0
    lines = bench.format_table(result).splitlines()
    assert lines[0].startswith("decode + transform, 1 thread, 2 images, shorter side 64, max 96,")
    assert lines[3] == "| pipeline | median img/s | passes img/s |"
    assert lines[5].startswith("| focaldet (cv2 + albumentations) | ")


def test_config_defaults_are_the_run_defaults() -> None:
    """configs/benchmark.yaml's data node: the run() defaults, its paths relative to the checkout
    (where the tool runs) instead of to the module."""
    import inspect

    from detector.engine.cli import compose_tool, typed_kwargs

    root = Path(__file__).resolve().parents[2]
    kwargs = typed_kwargs(bench.run, compose_tool("benchmark", ["what=data"]).data, "data")
    defaults = {k: p.default for k, p in inspect.signature(bench.run).parameters.items()}
    for key in ("ann_dir", "img_dir"):
        assert (root / kwargs.pop(key)).resolve() == Path(defaults.pop(key)).resolve()
    assert kwargs == defaults
