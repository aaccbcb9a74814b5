"""Export a checkpoint to ONNX or TorchScript: one graph from resized pixels to detections.

    python tools/export.py checkpoint=CKPT [format=onnx|torchscript] [out=MODEL.onnx] [opset=18]
        [score_thresh=null] [int8=true calibration=DIR [calibration_images=64]
        [calibration_method=minmax|percentile|entropy] [reduce_range=true|false]]

Writes ``out`` (default: the checkpoint's path with ``.onnx``, or ``.torchscript``) and
``out.json``, the sidecar with the format, the class list, the resize to apply before the model
and the inputs and outputs (see detector/export.py). ONNX needs the ``export`` extra
(``pip install -e .[export]``: onnx, onnxscript, onnxruntime); TorchScript needs nothing more.
``int8=true`` (ONNX only) writes an int8 file instead (default ``.int8.onnx``): the convolutions'
weights and inputs in 8 bits, calibrated on the first ``calibration_images`` images of the folder
``calibration`` (detector/quantize.py), its weights within ±64, which x86 CPUs without VNNI
need (their int8 products saturate otherwise); ``reduce_range=false`` keeps the full int8 range
for CPUs with VNNI or Arm only (loading such a file elsewhere warns). Run a
file with ``python tools/infer.py backend=onnx|torchscript checkpoint=MODEL input=...
output=...``, score it with ``python tools/evaluate.py checkpoint=MODEL [data overrides]``.
"""

import sys
from dataclasses import dataclass
from pathlib import Path

from omegaconf import MISSING, DictConfig

from detector.checkpoint import CheckpointError
from detector.engine.cli import run_tool, typed_config
from detector.engine.config import ConfigError
from detector.predictor import Predictor


@dataclass
class Args:
    """The types of configs/export.yaml (its values are the defaults)."""

    checkpoint: str = MISSING
    format: str = "onnx"
    out: str | None = None
    opset: int = 18
    score_thresh: float | None = None
    int8: bool = False
    calibration: str | None = None
    calibration_images: int = 64
    calibration_method: str = "minmax"
    reduce_range: bool = True


def run(cfg: DictConfig) -> int:
    args = typed_config(Args, cfg, "export")
    from detector.export import FORMATS, SUFFIXES, export

    if args.format not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {args.format!r}")
    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        raise ConfigError(f"checkpoint: {checkpoint}: no such file")
    calibration = check_int8(args)
    suffix = ".int8.onnx" if args.int8 else SUFFIXES[args.format]
    out = Path(args.out) if args.out else checkpoint.with_suffix(suffix)
    try:
        predictor = Predictor.from_checkpoint(checkpoint, "cpu", args.score_thresh)
    except CheckpointError as e:
        raise SystemExit(f"focaldet: {e}") from e
    if args.int8:
        from detector.quantize import quantize

        try:
            quantize(predictor, out, calibration, args.calibration_method, args.opset,
                     args.reduce_range)  # fmt: skip
        except ValueError as e:  # an unreadable calibration image
            raise SystemExit(f"focaldet: {e}") from e
        weights = "weights within ±64" if args.reduce_range else "full-range weights"
        what = f"int8, {weights}, calibrated on {len(calibration)} images of {args.calibration}"
    else:
        export(predictor, out, args.format, args.opset)
        what = args.format
    print(f"wrote {out} and {out}.json ({what}; {len(predictor.classes)} classes)")
    return 0


def check_int8(args: Args) -> list[Path]:
    """The calibration images of ``int8=true`` (none without it); a ConfigError for settings
    that cannot make an int8 file."""
    if not args.int8:
        return []
    from detector.quantize import CALIBRATION_METHODS, calibration_images

    if args.format != "onnx":
        raise ConfigError(f"int8=true needs format=onnx, got format={args.format}")
    if args.calibration is None:
        raise ConfigError(
            "int8=true needs calibration=DIR: a folder of images like those the model will "
            "see (its validation images, say)"
        )
    if args.calibration_images < 1:
        raise ConfigError(f"calibration_images must be >= 1, got {args.calibration_images}")
    if args.calibration_method not in CALIBRATION_METHODS:
        raise ConfigError(
            f"calibration_method must be one of {', '.join(CALIBRATION_METHODS)}, "
            f"got {args.calibration_method!r}"
        )
    try:
        return calibration_images(args.calibration, args.calibration_images)
    except ValueError as e:
        raise ConfigError(str(e)) from e


def main(argv: list[str]) -> int:
    """Exit status of the tool for the command-line arguments ``argv`` (2: a config error)."""
    return run_tool("export", run, argv, __doc__, ("checkpoint", "out", "calibration"))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
