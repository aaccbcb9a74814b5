"""Export a checkpoint to ONNX or TorchScript: one graph from resized pixels to detections.

    python tools/export.py checkpoint=CKPT [format=onnx|torchscript] [out=MODEL.onnx] [opset=18]
        [score_thresh=null]

Writes ``out`` (default: the checkpoint's path with ``.onnx``, or ``.torchscript``) and
``out.json``, the sidecar with the format, the class list, the resize to apply before the model
and the inputs and outputs (see detector/export.py). ONNX needs the ``export`` extra
(``pip install -e .[export]``: onnx, onnxscript, onnxruntime); TorchScript needs nothing more.
Run the file with ``python tools/infer.py backend=onnx|torchscript checkpoint=MODEL input=...
output=...``.
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


def run(cfg: DictConfig) -> int:
    args = typed_config(Args, cfg, "export")
    from detector.export import FORMATS, SUFFIXES, export

    if args.format not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {args.format!r}")
    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        raise ConfigError(f"checkpoint: {checkpoint}: no such file")
    out = Path(args.out) if args.out else checkpoint.with_suffix(SUFFIXES[args.format])
    try:
        predictor = Predictor.from_checkpoint(checkpoint, "cpu", args.score_thresh)
    except CheckpointError as e:
        raise SystemExit(f"focaldet: {e}") from e
    export(predictor, out, args.format, args.opset)
    print(f"wrote {out} and {out}.json ({len(predictor.classes)} classes)")
    return 0


def main(argv: list[str]) -> int:
    """Exit status of the tool for the command-line arguments ``argv`` (2: a config error)."""
    return run_tool("export", run, argv, __doc__, ("checkpoint", "out"))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
