"""Export a checkpoint to ONNX or TorchScript: one graph from pixels to detections.

The exported model takes

- ``images`` (N, 3, H, W) uint8, or float32 in [0, 1] where the checkpoint's resize gives float
  (``TorchvisionResize``; the graph is typed by it and the sidecar names it): the resized
  images, zero-padded to a common H × W (any H, W; N ≥ 1, all dynamic),
- ``image_sizes`` (N, 2) int64: each image's valid ``(h, w)`` inside the padded batch,
- ``orig_sizes`` (N, 2) int64: each image's ``(h, w)`` before the resize (boxes come back in
  those pixels; pass ``image_sizes`` again to keep the resized pixels),

and returns four tensors over the M detections of the whole batch, image by image and best first
within an image: ``boxes`` (M, 4) float32 xyxy, ``scores`` (M,), ``labels`` (M,) int64 and
``batch_index`` (M,) int64 (the image of each detection: ONNX's own NonMaxSuppression reports
its results the same way, and a flat list needs no padding to a fixed count). Normalisation,
padding to the model's size divisibility, anchors, decoding and class-aware NMS are in the
graph; resizing is not (a JSON sidecar names the checkpoint's resize, the classes and the
inputs). ``onnx``/``onnxscript`` are needed only to export to ONNX (``pip install -e .[export]``)
and ``onnxruntime`` only to run an ONNX file (:class:`OnnxPredictor`).

TorchScript (``format="torchscript"``) is ``torch.jit.trace`` of the same module, with no extra
package; a TorchScript file runs on the CPU with PyTorch and torchvision (its NMS) alone
(:class:`TorchScriptPredictor`). A trace records the operations of one example, but the sizes it
reads from tensors (``x.shape``) stay traced values, so every size the graph computes with
(padding, anchors per level, top-k counts, detections) follows the input; the helpers below keep
it so where a Python ``int`` or ``min`` would freeze the example's value.
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.ops import nms

from detector.checkpoint import CheckpointError
from detector.postprocess import RetinaNetPostProcessor
from detector.predictor import Detections, Predictor
from detector.retinanet import DenseOutputs, RetinaNet

logger = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript"}
"""Default file suffix of each format (not ``.pt``: that is the checkpoint's)."""
INPUT_NAMES = ("images", "image_sizes", "orig_sizes")
OUTPUT_NAMES = ("boxes", "scores", "labels", "batch_index")
DEFAULT_OPSET = 18
JIT_DEPRECATED = r"`torch\.jit\.\w+` is deprecated"
"""PyTorch's FutureWarning on every ``torch.jit`` trace, save and load: the format stays for
runtimes that read TorchScript (libtorch), and the warning would only repeat itself."""
MAX_SIDE = 4096
"""Largest H and W the ONNX graph is exported for (torch.export needs a bound)."""


def level_topk(
    cls_logits: Tensor, num_anchors_per_level: list[int], k: int
) -> tuple[Tensor, Tensor]:
    """:func:`detector.postprocess.topk_per_level` without its shape-dependent splitting: one
    ``topk`` of ``min(k, R_l K)`` per level (the same set, the sizes symbolic under export)."""
    num_images, _, num_classes = cls_logits.shape
    values, indices = [], []
    start = 0
    for count in num_anchors_per_level:
        level = cls_logits[:, start : start + count].reshape(num_images, -1)
        top, idx = level.topk(size_min(k, level.shape[1]), dim=1)
        values.append(top)
        indices.append(idx + start * num_classes)
        start = start + count
    return torch.cat(values, dim=1), torch.cat(indices, dim=1)


def size_min(k: int, size: int | Tensor) -> int | Tensor:
    """``min(k, size)`` of a tensor's ``size`` that stays symbolic: under ``torch.jit.trace``
    the size is a 0-dim tensor (Python's ``min`` would freeze the comparison), under
    torch.export a SymInt."""
    if torch.jit.is_tracing():
        return torch.clamp(size, max=k)
    return torch.sym_min(k, size)


def module_path_features(backbone: nn.Module, x: Tensor) -> list[Tensor]:
    """``[C3, C4, C5]`` of a ResNetBackbone through its modules, each conv then its norm.

    ``ResNetBackbone.forward`` with frozen norms picks, per convolution, whether to fold the norm
    into the weight or the output by comparing their sizes: torch.export would turn that
    comparison into a bound on the image size. This path computes the same function without it.
    """
    x = backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(x))))
    c3 = backbone.layer2(backbone.layer1(x))
    c4 = backbone.layer3(c3)
    return [c3, c4, backbone.layer4(c4)]


class ExportableDetector(nn.Module):
    """A RetinaNet and its post-processor as one module of tensors in, tensors out (see the
    module docstring for the inputs and outputs)."""

    def __init__(self, model: RetinaNet, postprocessor: RetinaNetPostProcessor) -> None:
        super().__init__()
        self.model = model.eval()
        self.postprocessor = postprocessor

    def forward(
        self, images: Tensor, image_sizes: Tensor, orig_sizes: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        model, post = self.model, self.postprocessor
        batch, sizes = model.preprocess(images, image_sizes)
        features = model.fpn(module_path_features(model.backbone, batch))
        cls_logits, box_deltas = model.head(features)
        shapes = [f.shape[-2:] for f in features]
        # The generator's cache keys on ints; here the sizes are symbolic, so build directly.
        generator = model.anchor_generator
        strides = generator.level_strides(shapes, batch.shape[-2:])
        levels = generator.grid_anchors(shapes, batch.device, strides)
        # shape[0], not len(): a trace records the one and freezes the other.
        outputs = DenseOutputs(
            cls_logits, box_deltas, torch.cat(levels), [a.shape[0] for a in levels], sizes
        )
        boxes, scores, labels = post.candidates(outputs, level_topk)
        num_images, num_candidates = scores.shape
        image_index = torch.arange(num_images, device=scores.device)[:, None].expand(
            -1, num_candidates
        )
        keep = scores > post.score_thresh
        b, s, lab, img = boxes[keep], scores[keep], labels[keep], image_index[keep]
        # Class- and image-aware NMS in one call: shift each (image, class) group of boxes to
        # its own region (torchvision's batched_nms trick, without its empty-input branch).
        group = img * cls_logits.shape[-1] + lab
        offsets = (group.to(b) * (boxes.max() + 1))[:, None]
        kept = nms(b + offsets, s, post.nms_thresh)
        b, s, lab, img = b[kept], s[kept], lab[kept], img[kept]
        # Rank of each detection within its image (kept is sorted by score): keep the best D.
        same = img[:, None] == torch.arange(num_images, device=img.device)[None, :]
        rank = (same.cumsum(0) * same).sum(1) - 1
        top = rank < post.detections_per_img
        b, s, lab, img = b[top], s[top], lab[top], img[top]
        # Image by image, keeping NMS's best-first order within an image (unique keys: the
        # position breaks ties, and ONNX has no stable sort).
        position = torch.arange(img.shape[0], device=img.device)
        order = torch.argsort(img * (img.shape[0] + 1) + position)
        b, s, lab, img = b[order], s[order], lab[order], img[order]
        ratio = (orig_sizes.to(s) / sizes.to(s)).flip(1).repeat(1, 2)
        limit = orig_sizes.to(s).flip(1).repeat(1, 2)
        return torch.minimum(b * ratio[img], limit[img]), s, lab, img


def example_inputs(
    num_images: int = 2, height: int = 300, width: int = 420, dtype: torch.dtype = torch.uint8
) -> tuple[Tensor, ...]:
    """Inputs of the exported signature: random ``dtype`` images (uint8, or float in [0, 1])
    and their sizes. Every pyramid level of the example must be larger than 1 × 1 (or
    torch.export fixes the size)."""
    shape = (num_images, 3, height, width)
    if dtype == torch.uint8:
        images = torch.randint(0, 256, shape, dtype=dtype)
    else:
        images = torch.rand(shape, dtype=dtype)
    sizes = torch.tensor([[height, width]] * num_images, dtype=torch.int64)
    return images, sizes, sizes.clone()


def input_dtype(predictor: Predictor) -> torch.dtype:
    """What ``predictor``'s resize hands the model: uint8, or float32 (``TorchvisionResize``).
    An exported graph takes that dtype only (ONNX types its inputs; a trace keeps the branch
    of ``RetinaNet._normalise`` its example took)."""
    return predictor.resize(np.zeros((64, 64, 3), np.uint8)).dtype


def sidecar(predictor: Predictor, export_format: str, dtype: torch.dtype) -> dict[str, Any]:
    """What a deployment needs beside the graph: classes, the resize, inputs (``dtype``: the
    images', :func:`input_dtype`) and outputs."""
    pixels = "uint8 RGB" if dtype == torch.uint8 else "float32 RGB in [0, 1]"
    return {
        "format": export_format,
        "classes": predictor.classes,
        "transforms": predictor.transform_nodes,
        "inputs": {
            "images": f"(N, 3, H, W) {pixels}, the resized images zero-padded to a common H x W",
            "image_sizes": "(N, 2) int64 valid (h, w) of each image in the batch",
            "orig_sizes": "(N, 2) int64 (h, w) of each image before the resize",
        },
        "outputs": {
            "boxes": "(M, 4) float32 xyxy in original pixels",
            "scores": "(M,) float32",
            "labels": "(M,) int64 index into classes",
            "batch_index": "(M,) int64 image of each detection; image by image, best first",
        },
    }


def export(predictor: Predictor, out: str | Path, export_format: str = "onnx",
           opset: int = DEFAULT_OPSET) -> Path:  # fmt: skip
    """Write ``out`` (the graph, on CPU, float32) and ``out`` + ``.json`` (the sidecar);
    ``opset`` is ONNX's."""
    if export_format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {export_format!r}")
    # A copy: the caller's predictor keeps its device, dtype and memory format.
    model = copy.deepcopy(predictor.model).cpu().float()
    module = ExportableDetector(model, predictor.postprocessor).eval()
    module.model.to(memory_format=torch.contiguous_format)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    dtype = input_dtype(predictor)
    inputs = example_inputs(dtype=dtype)
    if export_format == "onnx":
        _export_onnx(module, inputs, out, opset)
    else:
        _export_torchscript(module, inputs, out)
    Path(f"{out}.json").write_text(json.dumps(sidecar(predictor, export_format, dtype), indent=1))
    return out


def _export_onnx(module: nn.Module, inputs: tuple[Tensor, ...], out: Path, opset: int) -> None:
    n = torch.export.Dim("N", min=1, max=1024)
    h = torch.export.Dim("H", min=32, max=MAX_SIDE)
    w = torch.export.Dim("W", min=32, max=MAX_SIDE)
    shapes = {"images": {0: n, 2: h, 3: w}, "image_sizes": {0: n}, "orig_sizes": {0: n}}
    with torch.no_grad():
        program = torch.onnx.export(
            module, inputs, dynamo=True, dynamic_shapes=shapes, opset_version=opset,
            input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES), verbose=False,
        )  # fmt: skip
    program.save(str(out))


def _export_torchscript(module: nn.Module, inputs: tuple[Tensor, ...], out: Path) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        # RetinaNet.preprocess checks the inputs' rank and channels with Python comparisons:
        # the trace keeps them as constants, which is what they are (N, H and W stay traced).
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=JIT_DEPRECATED)
        traced = torch.jit.trace(module, inputs, check_trace=False)
        traced.save(str(out))


def pad_batch(images: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """(3, h_i, w_i) images → zero-padded (N, 3, H, W) batch and their (N, 2) sizes."""
    sizes = torch.tensor([tuple(image.shape[-2:]) for image in images], dtype=torch.int64)
    height, width = sizes.max(dim=0).values.tolist()
    batch = images[0].new_zeros((len(images), 3, height, width))
    for out, image in zip(batch, images, strict=True):
        out[:, : image.shape[1], : image.shape[2]] = image
    return batch, sizes


def split_detections(outputs: Sequence[np.ndarray | Tensor], num_images: int,
                     classes: Sequence[dict[str, Any]]) -> list[Detections]:  # fmt: skip
    """The flat outputs of an exported model as one :class:`Detections` per image."""
    boxes, scores, labels, index = (torch.as_tensor(np.asarray(o)) for o in outputs)
    results = []
    for i in range(num_images):
        mine = index == i
        lab = labels[mine].to(torch.int64)
        results.append(
            Detections(boxes[mine].float(), scores[mine].float(), lab,
                       [classes[k]["id"] for k in lab.tolist()],
                       [classes[k]["name"] for k in lab.tolist()])
        )  # fmt: skip
    return results


class ExportedPredictor(Predictor):
    """A :class:`Predictor` of an exported file: its sidecar's classes and resize, on the CPU;
    subclasses run the file on a padded batch (:meth:`_run`)."""

    def __init__(self, path: str | Path, batch_size: int = 8) -> None:
        from data.transforms import build_transforms

        meta = json.loads(Path(f"{path}.json").read_text())
        self.device = torch.device("cpu")
        self.classes = list(meta["classes"])
        self.transform_nodes = list(meta["transforms"])
        self.transforms = build_transforms(self.transform_nodes, train=False)
        self.amp = None
        self.batch_size = int(batch_size)
        self.quantization = meta.get("quantization")
        """The sidecar's ``quantization`` entry of an int8 file (detector/quantize.py), or None."""

    def _run(self, images: Tensor, image_sizes: Tensor, orig_sizes: Tensor) -> Sequence[Any]:
        """The exported model's four outputs (module docstring) for one batch."""
        raise NotImplementedError

    def _detect(self, batch: Tensor, orig_sizes: Tensor) -> list[Detections]:
        sizes = torch.tensor([batch.shape[-2:]] * len(batch), dtype=torch.int64)
        outputs = self._run(batch, sizes, orig_sizes.to(torch.int64))
        return split_detections(outputs, len(batch), self.classes)


def is_exported(path: str | Path) -> bool:
    """Whether ``path`` names an exported file (by its suffix), not a checkpoint."""
    return Path(path).suffix in SUFFIXES.values()


def load_exported(path: str | Path, batch_size: int = 8) -> ExportedPredictor:
    """The predictor of the exported file ``path``: ONNX Runtime for ``.onnx``, PyTorch for
    ``.torchscript``; a :class:`CheckpointError` when its sidecar or ONNX Runtime is missing."""
    path = Path(path)
    if not Path(f"{path}.json").is_file():
        raise CheckpointError(
            f"{path}: its sidecar {path.name}.json is missing (tools/export.py writes it beside "
            "the model; it names the classes and the resize)"
        )
    if path.suffix == ".onnx":
        if find_spec("onnxruntime") is None:
            raise CheckpointError(
                f"{path}: running ONNX needs onnxruntime (pip install -e .[export])"
            )
        return OnnxPredictor(path, batch_size)
    return TorchScriptPredictor(path, batch_size)


class OnnxPredictor(ExportedPredictor):
    """A :class:`Predictor` that runs an exported ONNX file with ONNX Runtime (CPU)."""

    def __init__(self, path: str | Path, batch_size: int = 8, threads: int = 0) -> None:
        import onnxruntime

        super().__init__(path, batch_size)
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        if self.quantization and not self.quantization.get("reduce_range", False):
            from detector.quantize import int8_saturates

            if int8_saturates():
                logger.warning(
                    "%s: its int8 weights use the full 8-bit range, which this CPU (x86 without "
                    "VNNI) adds in 16 bits with saturation, so its scores and boxes can be wrong; "
                    "export it again with reduce_range=true", path,
                )  # fmt: skip

    def _run(self, images: Tensor, image_sizes: Tensor, orig_sizes: Tensor) -> Sequence[Any]:
        feeds = {"images": images.numpy(), "image_sizes": image_sizes.numpy(),
                 "orig_sizes": orig_sizes.numpy()}  # fmt: skip
        return self.session.run(None, feeds)


class TorchScriptPredictor(ExportedPredictor):
    """A :class:`Predictor` that runs an exported TorchScript file with PyTorch (CPU; the
    thread count is PyTorch's, ``torch.set_num_threads``)."""

    def __init__(self, path: str | Path, batch_size: int = 8) -> None:
        super().__init__(path, batch_size)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=JIT_DEPRECATED)
            self.module = torch.jit.load(str(path), map_location="cpu").eval()

    @torch.inference_mode()
    def _run(self, images: Tensor, image_sizes: Tensor, orig_sizes: Tensor) -> Sequence[Any]:
        return self.module(images, image_sizes, orig_sizes)
