"""Prediction benchmark (``what=predict``): time per image of a RetinaNet R50-FPN on photos, on
the CPU, batch 1: torchvision's eager model, focaldet's :class:`detector.Predictor`, the same
model exported to ONNX under ONNX Runtime, and its int8 ONNX file (``onnx_int8``,
detector/quantize.py, calibrated on :data:`CALIBRATION_IMAGES` other photos of the folder); and,
when asked, exported to TorchScript, or the Predictor with its network compiled as
``compile=true`` compiles it (``predictor_compiled``).

One model for all: torchvision's ``retinanet_resnet50_fpn(weights=None, weights_backbone=None)``
(randomly initialised, no download; BatchNorm statistics at their defaults, eps 1e-5), its
classification weights redrawn with :data:`detector.benchmarks.model.CLS_WEIGHT_STD` so that, as
with a trained detector, many scores pass the 0.05 threshold and every post-processor does real
top-k and NMS work. It is converted into a focaldet checkpoint with
:func:`detector.torchvision_convert.convert_torchvision_state_dict` (the converter of
tools/convert_torchvision.py), which carries torchvision's resize (``min_size``/``max_size``,
800/1333), its padding to 32 and its post-processing (score 0.05, 1000 candidates per level,
NMS 0.5, 100 detections; torchvision is told ``detections_per_img=100``, its default is 300).
The ONNX and TorchScript files are written from that checkpoint by detector/export.py.

Each backend starts from the same decoded photos (the first ``n`` of ``images``, sorted by name;
decoding is not timed) and does all the rest for one image per call: resize, normalise, pad, the
network, decoding and NMS, boxes in the photo's pixels. torchvision's model resizes inside
(``GeneralizedRCNNTransform``); it gets the photo as a float tensor in [0, 1], converted before
timing. The others get the uint8 array and resize it with the checkpoint's ``TorchvisionResize``.
Every backend runs on ``threads`` threads (PyTorch's ``set_num_threads``, ONNX Runtime's
``intra_op_num_threads``). The detection counts of each backend on every photo are recorded as a
check that all do the same post-processing work.

One warm-up pass over the photos per backend, then ``repeats`` timed passes, the backends
alternating pass by pass (the order reversed every other pass) so that a slow spell of a shared
machine hits all alike; the median pass divided by ``n`` is the time per image, and the ratio is
that time over torchvision's. The ONNX backends are left out, with a note, when onnx, onnxscript
or onnxruntime is not installed.

What the times could be: torchvision's warm-up pass runs under ``FlopCounterMode``, which counts
the floating-point operations of its convolutions (2 per multiply-add; everything else is a
rounding error beside them), the same arithmetic every backend does on the same padded photos.
Each backend's rate is that count over its time. The machine's own ceiling is the rate of a
large float32 matrix product (:func:`detector.benchmarks.common.matmul_gflops`, same threads);
``floor_ratio`` is the ratio to torchvision's time that a backend would reach if its every
convolution ran at that rate: a target below it needs less arithmetic (lower precision, fewer
or smaller images), not a faster runtime. ``onnx_int8`` does the same multiply-adds in 8 bits,
so its rate may pass the float32 ceiling: that is the point of it.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable, Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.detection import retinanet_resnet50_fpn

from data.decode import image_files, read_image
from data.shared import RACCOON
from detector.benchmarks.common import machine, markdown_table, matmul_gflops, time_steps
from detector.benchmarks.model import CLS_WEIGHT_STD, DETECTIONS_PER_IMG, SEED
from detector.checkpoint import save_checkpoint
from detector.engine.compile import compile_network
from detector.predictor import Predictor
from detector.torchvision_convert import (
    TORCHVISION_MAX_SIZE,
    TORCHVISION_MIN_SIZE,
    convert_torchvision_state_dict,
    torchvision_val_transforms,
)

BACKENDS = ("torchvision", "predictor", "onnx", "onnx_int8", "torchscript", "predictor_compiled")
CALIBRATION_IMAGES = 8
"""Photos ``onnx_int8`` is calibrated on: those after the ``n`` timed ones where the folder has
them (the raccoon folder has 200), else the first ones."""
REFERENCE = "torchvision"
SCORE_THRESH = 0.05
"""torchvision's default, and the converted checkpoint's."""
BN_EPS = 1e-5
"""nn.BatchNorm2d's: a model built with ``weights_backbone=None`` has BatchNorm2d, not frozen."""
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
RACCOON_IMAGES = RACCOON / "images"
"""The shared raccoon photos (data/shared.py: $FOCALDET_SHARED, default ``../shared``)."""

Detect = Callable[[int], int]
"""Run a backend on photo ``i``; its number of detections."""


def build_models(min_size: int, max_size: int, folder: Path) -> tuple[torch.nn.Module, Path]:
    """torchvision's random R50-FPN RetinaNet (eval) and its conversion saved under ``folder``."""
    torch.manual_seed(SEED)
    tv = retinanet_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=min_size, max_size=max_size,
        score_thresh=SCORE_THRESH, detections_per_img=DETECTIONS_PER_IMG,
    )  # fmt: skip
    with torch.no_grad():
        tv.head.classification_head.cls_logits.weight.normal_(0.0, CLS_WEIGHT_STD)
    tv.eval()
    ckpt = convert_torchvision_state_dict(tv.state_dict(), bn_eps=BN_EPS)
    ckpt["config"]["data"]["val"]["transforms"] = torchvision_val_transforms(min_size, max_size)
    save_checkpoint(folder / "model.pt", ckpt)
    return tv, folder / "model.pt"


def photo_paths(images: str, n: int) -> list[Path]:
    """The photos of the folder ``images`` ("": the raccoon photos), sorted by name; at least
    ``n`` (else ValueError)."""
    folder = Path(images) if images else RACCOON_IMAGES
    if not folder.is_dir():
        raise ValueError(f"images: {folder} is not a folder (set FOCALDET_SHARED or pass images=)")
    paths = image_files(folder)
    if len(paths) < n:
        raise ValueError(f"images: {folder} holds {len(paths)} photos, fewer than n={n}")
    return paths


def load_photos(images: str, n: int) -> list[np.ndarray]:
    """The first ``n`` photos of the folder ``images`` (sorted by name) as RGB uint8 arrays."""
    return [read_image(path) for path in photo_paths(images, n)[:n]]


def calibration_paths(images: str, n: int) -> list[Path]:
    """The :data:`CALIBRATION_IMAGES` photos ``onnx_int8`` is calibrated on."""
    paths = photo_paths(images, n)
    after = paths[n : n + CALIBRATION_IMAGES]
    return after if len(after) == CALIBRATION_IMAGES else paths[:CALIBRATION_IMAGES]


def onnx_missing() -> str | None:
    """A note naming the export packages that are not installed, or None."""
    missing = [name for name in ONNX_PACKAGES if find_spec(name) is None]
    if not missing:
        return None
    return f"onnx left out: {', '.join(missing)} not installed (pip install -e .[export])"


def make_backends(
    names: Sequence[str], photos: list[np.ndarray], threads: int, folder: Path,
    min_size: int, max_size: int, calibration: Sequence[Path] = (),
) -> dict[str, Detect]:  # fmt: skip
    """One :data:`Detect` per backend of ``names``, all on the same model, files in ``folder``
    (``calibration``: the photos ``onnx_int8`` is calibrated on)."""
    from detector.export import OnnxPredictor, TorchScriptPredictor, export

    tv, checkpoint = build_models(min_size, max_size, folder)
    predictor = Predictor.from_checkpoint(checkpoint, "cpu", batch_size=1)
    tensors = [torch.from_numpy(p).permute(2, 0, 1).float() / 255.0 for p in photos]

    @torch.inference_mode()
    def torchvision_detect(i: int) -> int:
        return len(tv([tensors[i]])[0]["scores"])

    def per_photo(run: Predictor) -> Detect:
        return lambda i: len(run.predict_arrays([photos[i]])[0])

    def exported(export_format: str) -> Path:
        return export(predictor, folder / f"model.{export_format}", export_format)

    def quantized() -> Path:
        from detector.quantize import quantize

        return quantize(predictor, folder / "model.int8.onnx", calibration)

    def compiled() -> Predictor:
        """A second Predictor whose network is compiled in place (tools/infer.py compile=true);
        the warm-up pass compiles it, a new photo size once more, then sizes stay symbolic."""
        other = Predictor.from_checkpoint(checkpoint, "cpu", batch_size=1)
        compile_network(other.model)
        return other

    makers: dict[str, Callable[[], Detect]] = {
        "torchvision": lambda: torchvision_detect,
        "predictor": lambda: per_photo(predictor),
        "onnx": lambda: per_photo(OnnxPredictor(exported("onnx"), 1, threads)),
        "onnx_int8": lambda: per_photo(OnnxPredictor(quantized(), 1, threads)),
        "torchscript": lambda: per_photo(TorchScriptPredictor(exported("torchscript"), 1)),
        "predictor_compiled": lambda: per_photo(compiled()),
    }
    return {name: makers[name]() for name in names}


def _check_args(
    n: int, repeats: int, threads: int, matmul_size: int, backends: Sequence[str]
) -> None:
    if n < 1 or repeats < 1 or matmul_size < 1 or threads < 0:
        raise ValueError(
            "n, repeats and matmul_size must be >= 1 and threads >= 0, got "
            f"{n}, {repeats}, {matmul_size}, {threads}"
        )
    unknown = [name for name in backends if name not in BACKENDS]
    if unknown or REFERENCE not in backends:
        raise ValueError(
            f"backends must be among {', '.join(BACKENDS)} and include {REFERENCE}, "
            f"got {list(backends)}"
        )


def run(
    images: str = "",
    n: int = 10,
    threads: int = 0,
    repeats: int = 5,
    backends: tuple[str, ...] = ("torchvision", "predictor", "onnx", "onnx_int8"),
    min_size: int = TORCHVISION_MIN_SIZE,
    max_size: int = TORCHVISION_MAX_SIZE,
    matmul_size: int = 2048,
) -> dict[str, Any]:
    """Time per image of each backend; a JSON-able
    ``{"meta", "config", "check", "arithmetic", "results", "notes"}``.

    ``images``: a folder of photos ("": the shared raccoon photos); ``threads`` 0: PyTorch's
    default count. ``results[backend]`` holds ``s_per_image`` (median pass / ``n``),
    ``passes_s`` (every timed pass), ``ratio`` (``s_per_image`` over torchvision's) and
    ``gflop_per_s``; ``arithmetic`` the GFLOP per image, the ``matmul_size``² product's rate and
    ``floor_ratio`` (module docstring); ``check["detections"][backend]`` the detections on each
    photo; ``notes`` what was left out.
    """
    config = dict(locals())
    config["backends"] = list(backends)
    _check_args(n, repeats, threads, matmul_size, backends)
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    config["threads"] = threads
    notes, names = [], list(backends)
    missing = onnx_missing() if {"onnx", "onnx_int8"} & set(names) else None
    if missing:
        notes.append(missing)
        names = [name for name in names if not name.startswith("onnx")]
    photos = load_photos(images, n)
    calibration = calibration_paths(images, n)
    config["calibration"] = [path.name for path in calibration]
    with tempfile.TemporaryDirectory() as tmp:
        detect = make_backends(names, photos, threads, Path(tmp), min_size, max_size, calibration)
        with FlopCounterMode(display=False) as flops:  # the warm-up pass, counted once
            counts = {REFERENCE: [detect[REFERENCE](i) for i in range(n)]}
        counts.update({name: [fn(i) for i in range(n)] for name, fn in detect.items()
                       if name != REFERENCE})  # fmt: skip
        passes = {name: _whole_pass(fn, n) for name, fn in detect.items()}
        times = time_steps(passes, torch.device("cpu"), repeats, 0, swap_order=True)
    gflop = flops.get_total_flops() / n / 1e9
    results = {}
    for name in names:
        walls = times[name]["wall"]
        results[name] = {"s_per_image": statistics.median(walls) / n, "passes_s": walls}
    reference = results[REFERENCE]["s_per_image"]
    for record in results.values():
        record["ratio"] = record["s_per_image"] / reference
        record["gflop_per_s"] = gflop / record["s_per_image"]
    matmul = matmul_gflops(matmul_size)
    arithmetic = {"gflop_per_image": gflop, "matmul_gflop_per_s": matmul,
                  "floor_ratio": gflop / matmul / reference}  # fmt: skip
    check = {"images": n, "photo_sizes": [list(p.shape[:2]) for p in photos],
             "detections": counts}  # fmt: skip
    meta = machine(torch.device("cpu"))
    return {"meta": meta, "config": config, "check": check, "arithmetic": arithmetic,
            "results": results, "notes": notes}  # fmt: skip


def _whole_pass(detect: Detect, n: int) -> Callable[[], None]:
    def run_pass() -> None:
        for i in range(n):
            detect(i)

    return run_pass


def format_table(result: dict[str, Any]) -> str:
    """What was timed, then a markdown table: one row per backend."""
    config, check, arithmetic = result["config"], result["check"], result["arithmetic"]
    load = result["meta"]["load_average"]
    matmul = arithmetic["matmul_gflop_per_s"]
    lines = [
        f"RetinaNet R50-FPN (random weights), CPU, batch 1, {check['images']} photos resized "
        f"to {config['min_size']}/{config['max_size']}, {config['threads']} threads, median of "
        f"{config['repeats']} alternating passes (load average {load[0]:.2f} {load[1]:.2f})",
        f"{arithmetic['gflop_per_image']:.1f} GFLOP per image; a {config['matmul_size']}² "
        f"float32 matmul runs at {matmul:.1f} GFLOP/s, at which rate an image would take "
        f"{arithmetic['floor_ratio']:.3f} × {REFERENCE}'s time",
        *result["notes"],
    ]
    rows = [
        [
            name,
            f"{r['s_per_image'] * 1000:.1f}",
            f"{r['ratio']:.3f}",
            f"{r['gflop_per_s']:.1f}",
            f"{100 * r['gflop_per_s'] / matmul:.0f} %",
            str(sum(check["detections"][name])),
        ]
        for name, r in result["results"].items()
    ]
    header = ["backend", "ms / image", f"× {REFERENCE}", "GFLOP/s", "× matmul", "detections"]
    return "\n".join(lines) + "\n\n" + markdown_table(header, rows)
