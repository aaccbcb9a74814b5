"""Int8 post-training quantisation of an exported ONNX detector (``tools/export.py int8=true``).

ONNX Runtime's static quantisation in QDQ form: every convolution's weights become int8, one
scale per output channel, and its input activations uint8 with one scale and zero point per
tensor, measured by running the float32 graph on calibration images (``calibration_method``:
the range seen, ``minmax``; a histogram's 99.999th percentile, ``percentile``; or the range
that loses the least information, ``entropy``). Everything after the network (anchors, decoding,
NMS) stays float32, so the inputs, outputs and sidecar are those of the float32 file; the
sidecar gains a ``quantization`` entry that says how the file was made.

A convolution is some 95 % of a RetinaNet's arithmetic, and CPUs with 8-bit dot products
(AVX-512 VNNI, AVX-VNNI, Arm's dot-product instructions) run it several times faster than
float32; the price is a small change in every score and box, measured in docs/benchmarks.md.
Calibrate on images like those the model will see (its validation images are a good choice).

Where the file will run matters. x86 CPUs without VNNI (AMD before Zen 4, Intel before Cascade
Lake and Ice Lake) multiply uint8 inputs by int8 weights with ``VPMADDUBSW``, which adds each
pair of products in 16 bits and saturates: two products of 255 × 127 overflow the int16 range,
and the convolution's sum is silently wrong. ``reduce_range`` keeps the weights within ±64,
where a pair (at most 2 × 255 × 64 = 32,640) always fits; it costs one bit of weight precision,
which on three trained models moved AP by 0.3 or less (docs/benchmarks.md). It is the default,
so that a file exported on one CPU runs right on any other; VNNI (AVX-512 VNNI, AVX-VNNI) and
Arm's dot products add in 32 bits, where ``reduce_range=False`` keeps the full range. A
full-range file warns when it is loaded on a CPU where it can saturate (:func:`int8_saturates`,
:class:`detector.export.OnnxPredictor`).
"""

from __future__ import annotations

import json
import platform
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from data.decode import IMAGE_SUFFIXES, ImageDecodeError, image_files, read_image
from detector.export import export, pad_batch
from detector.predictor import Predictor

CALIBRATION_METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}
"""Our name → ONNX Runtime's ``CalibrationMethod``."""


VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni"})
"""The /proc/cpuinfo flags of x86's 8-bit dot products that add in 32 bits."""


def cpu_flags() -> frozenset[str] | None:
    """The flags of the first CPU in /proc/cpuinfo, or None where there is none (not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return None


def int8_saturates(flags: frozenset[str] | None = None, machine: str | None = None) -> bool:
    """Whether ONNX Runtime's int8 convolutions can saturate with full-range int8 weights on the
    CPU of ``flags`` (/proc/cpuinfo's) and ``machine`` (``platform.machine()``), by default this
    one: x86 without VNNI. An x86 CPU whose flags cannot be read counts as one that saturates."""
    machine = (machine if machine is not None else platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return False  # Arm's dot products (and anything else) add in 32 bits
    flags = cpu_flags() if flags is None else flags
    return flags is None or not flags & VNNI_FLAGS


def calibration_images(folder: str | Path, limit: int) -> list[Path]:
    """The first ``limit`` images of ``folder`` by name (ValueError naming the folder when it
    is not one or holds no image)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"calibration: {folder} is not a folder of images")
    paths = image_files(folder)
    if not paths:
        raise ValueError(
            f"calibration: {folder} holds no image ({', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    return paths[:limit]


def calibration_feeds(predictor: Predictor, paths: Sequence[Path]) -> Iterator[dict[str, Any]]:
    """The exported graph's inputs for each image of ``paths``, one image per batch, resized as
    ``predictor`` resizes."""
    for path in paths:
        image = read_image(path)
        batch, sizes = pad_batch([predictor.resize(image)])
        orig = torch.tensor([image.shape[:2]], dtype=torch.int64)
        yield {"images": batch.numpy(), "image_sizes": sizes.numpy(), "orig_sizes": orig.numpy()}


def check_readable(paths: Sequence[Path]) -> None:
    """A ValueError naming the first image of ``paths`` that does not decode (before a minute
    of export is spent)."""
    for path in paths:
        try:
            read_image(path)
        except ImageDecodeError as e:
            raise ValueError(f"calibration image {path}: {e}") from e


def quantize(
    predictor: Predictor,
    out: str | Path,
    calibration: Sequence[Path],
    method: str = "minmax",
    opset: int = 18,
    reduce_range: bool = True,
) -> Path:
    """Write ``out``, the int8 ONNX file of ``predictor``'s model calibrated on the images
    ``calibration``, and its sidecar ``out`` + ``.json``. ``reduce_range``: weights within ±64
    (module docstring); False: the full int8 range, for CPUs with VNNI or Arm only."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIBRATION_METHODS:
        raise ValueError(
            f"calibration_method must be one of {', '.join(CALIBRATION_METHODS)}, got {method!r}"
        )
    if not calibration:
        raise ValueError("calibration: no image to calibrate on")
    check_readable(calibration)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = calibration_feeds(predictor, calibration)

        def get_next(self) -> dict[str, Any] | None:
            return next(self.feeds, None)

    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        float_model = export(predictor, Path(tmp) / "float32.onnx", "onnx", opset)
        prepared = Path(tmp) / "prepared.onnx"
        # Constant folding and shape inference first, as ONNX Runtime advises; the symbolic
        # shapes (N, H, W) are left to the runtime.
        quant_pre_process(str(float_model), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv"], per_channel=True, weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8, reduce_range=reduce_range,
            calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[method]),
        )  # fmt: skip
        meta = json.loads(Path(f"{float_model}.json").read_text())
    weights = "int8 within ±64 (7 bits)" if reduce_range else "int8"
    meta["quantization"] = {
        "weights": f"{weights}, one scale per output channel (convolutions)",
        "reduce_range": reduce_range,
        "activations": "uint8, one scale and zero point per tensor (convolution inputs)",
        "calibration_method": method,
        "calibration_images": [str(p) for p in calibration],
    }
    Path(f"{out}.json").write_text(json.dumps(meta, indent=1))
    return out


def quantized_fraction(path: str | Path) -> tuple[int, int]:
    """(convolutions whose weights are int8, all convolutions) of the ONNX file ``path``."""
    import onnx

    graph = onnx.load(str(path)).graph
    int8 = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.INT8}
    producers = {out: node for node in graph.node for out in node.output}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    quantized = 0
    for conv in convs:
        weight = producers.get(conv.input[1])
        if weight is not None and weight.op_type == "DequantizeLinear" and weight.input[0] in int8:
            quantized += 1
    return quantized, len(convs)
