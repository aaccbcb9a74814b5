"""Focal-loss benchmark (``what=loss``): forward+backward time and peak memory of the focal loss
on dense-detector logits, ``(240000, 80)`` and ``(2, 240000, 80)`` float32, for
``torchvision.ops.sigmoid_focal_loss`` with one-hot targets, ``losses.sigmoid_focal_loss`` with
the same targets, and ``losses.sigmoid_focal_loss_labels`` with integer labels, with its compiled
passes (``focaldet_labels``, where a compiler is present) and eagerly (``focaldet_labels_eager``,
the fallback). Implementations alternate within each repeat after a warm-up; the median is
reported.

``load=N`` times everything twice in the same run: on the machine as it is, then while N
competing processes of the benchmark's own each spin a plain Python busy loop
(:func:`detector.benchmarks.common.busy_processes`), as DataLoader workers or another job compete
for the cores during a real training step. The ratios to torchvision are taken at equal load.

Peak memory is the growth over the resident inputs (logits and targets or labels) while forward
and backward run. On CUDA it is ``torch.cuda.max_memory_allocated`` after a reset. On CPU each
measurement runs in a fresh process (:func:`detector.benchmarks.common.in_fresh_process`): the
inputs are built, the code path is warmed up on a tiny input, the kernel's resident-set
high-water mark is reset, and the peak is ``VmHWM - VmRSS`` afterwards (the growth of
``getrusage().ru_maxrss`` where the reset is not permitted).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import torch
import torchvision

from detector.benchmarks.common import (
    MIB,
    busy_processes,
    check_device,
    cuda_peak_bytes,
    in_fresh_process,
    machine,
    markdown_table,
    resident_set_kib,
    time_steps,
)
from losses import BACKGROUND, IGNORE, sigmoid_focal_loss, sigmoid_focal_loss_labels
from losses._kernels import FUSED_MIN_NUMEL, fused_kernels

LOSS_SHAPES = ((240000, 80), (2, 240000, 80))
"""A (1333×800 image, A = 9) anchor set with the 80 COCO classes, alone and in a batch of 2."""
POSITIVES_PER_IMAGE = 200
IGNORED_FRACTION = 0.05
PRIOR_LOGIT = -4.595
"""log(π / (1 - π)) for the prior π = 0.01 of §4.1 Initialization: logits as at the start."""

LOSS_IMPLS = ("torchvision_onehot", "focaldet_onehot", "focaldet_labels", "focaldet_labels_eager")


def make_loss_inputs(
    shape: tuple[int, ...], device: torch.device, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Logits of ``shape`` (…, K), labels (one per row) and the equivalent one-hot targets.

    Labels: ``POSITIVES_PER_IMAGE`` random foreground anchors per image, ``IGNORED_FRACTION`` of
    the anchors IGNORE, the rest BACKGROUND. IGNORE rows have all-zero one-hot targets (the
    float-target losses have no notion of ignoring; the timing is what matters here).
    """
    gen = torch.Generator().manual_seed(seed)
    num_classes = shape[-1]
    rows = int(torch.tensor(shape[:-1]).prod())
    images = rows // shape[-2]
    logits = torch.randn(shape, generator=gen).add_(PRIOR_LOGIT)
    labels = torch.full((rows,), BACKGROUND, dtype=torch.int64)
    ignored = torch.randperm(rows, generator=gen)[: int(rows * IGNORED_FRACTION)]
    labels[ignored] = IGNORE
    positives = torch.randperm(rows, generator=gen)[: POSITIVES_PER_IMAGE * images]
    labels[positives] = torch.randint(num_classes, (positives.numel(),), generator=gen)
    onehot = torch.zeros(rows, num_classes)
    fg = (labels >= 0).nonzero().squeeze(1)
    onehot[fg, labels[fg]] = 1.0
    return {
        "logits": logits.to(device),
        "labels": labels.to(device),
        "onehot": onehot.view(shape).to(device),
    }


def loss_step(impl: str, inputs: dict[str, torch.Tensor]) -> Callable[[], None]:
    """A closure running forward+backward of ``impl`` on ``inputs`` (sum reduction)."""
    logits, labels, onehot = inputs["logits"], inputs["labels"], inputs["onehot"]

    def step() -> None:
        x = logits.detach().requires_grad_()
        # Only the label form has compiled passes; the other two are the same either way.
        with fused_kernels(enabled=impl != "focaldet_labels_eager"):
            if impl == "torchvision_onehot":
                loss = torchvision.ops.sigmoid_focal_loss(x, onehot, reduction="sum")
            elif impl == "focaldet_onehot":
                loss = sigmoid_focal_loss(x, onehot, reduction="sum")
            else:
                loss = sigmoid_focal_loss_labels(x.view(-1, x.shape[-1]), labels, reduction="sum")
            loss.backward()

    return step


def _cpu_peak_worker(impl: str, shape: tuple[int, ...], threads: int, queue) -> None:
    """Runs in a fresh process: peak resident-set growth (bytes) of one forward+backward."""
    torch.set_num_threads(threads)
    inputs = make_loss_inputs(shape, torch.device("cpu"))
    # Warm-up large enough for the compiled passes: compiling is not part of the peak.
    warmup_rows = max(64, -(-FUSED_MIN_NUMEL // shape[-1]))
    loss_step(impl, make_loss_inputs((warmup_rows, shape[-1]), torch.device("cpu")))()
    base, peak = resident_set_kib(loss_step(impl, inputs))
    queue.put((peak - base) * 1024)


def peak_memory(impl: str, shape: tuple[int, ...], device: torch.device, threads: int) -> int:
    """Peak memory growth in bytes of one forward+backward of ``impl`` over its inputs."""
    if device.type == "cuda":
        base, peak = cuda_peak_bytes(loss_step(impl, make_loss_inputs(shape, device)), device)
        return peak - base
    return in_fresh_process(_cpu_peak_worker, impl, shape, threads)


def _time_shape(
    shape: tuple[int, ...], dev: torch.device, repeats: int, warmup: int, load: int
) -> dict[str, list[float]]:
    """Wall seconds per repeat of every implementation on ``shape``, under ``load`` competing
    busy processes."""
    inputs = make_loss_inputs(shape, dev)
    steps = {impl: loss_step(impl, inputs) for impl in LOSS_IMPLS}
    with busy_processes(load):
        times = time_steps(steps, dev, repeats, warmup)
    return {impl: times[impl]["wall"] for impl in LOSS_IMPLS}


def run(
    device: str = "cpu", threads: int = 0, repeats: int = 7, warmup: int = 2, load: int = 0
) -> dict[str, Any]:
    """Median time and peak memory per implementation and shape; ``threads=0``: all cores;
    ``load=N``: the timing again under N competing busy processes (module docstring).

    Returns ``{"meta", "config", "records"}``; a record holds ``shape``, ``impl``, ``load``,
    ``median_ms``, ``times_ms`` and ``peak_mib`` (measured once, without load).
    """
    if min(threads, repeats, warmup, load) < 0 or repeats < 1:
        raise ValueError(
            "threads, warmup and load must be >= 0 and repeats >= 1, got "
            f"{threads}, {warmup}, {load}, {repeats}"
        )
    dev = check_device(device)
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    records = []
    for shape in LOSS_SHAPES:
        peaks = {impl: peak_memory(impl, shape, dev, threads) / MIB for impl in LOSS_IMPLS}
        for competing in sorted({0, load}):
            times = _time_shape(shape, dev, repeats, warmup, competing)
            records += [
                {
                    "what": "loss",
                    "shape": list(shape),
                    "impl": impl,
                    "load": competing,
                    "median_ms": 1000 * statistics.median(wall),
                    "times_ms": [1000 * t for t in wall],
                    "peak_mib": peaks[impl],
                }
                for impl, wall in times.items()
            ]
    config = {
        "device": device,
        "threads": threads,
        "repeats": repeats,
        "warmup": warmup,
        "load": load,
    }
    return {"meta": machine(dev), "config": config, "records": records}


def format_table(result: dict[str, Any]) -> str:
    """One row per record, with time and memory relative to torchvision's on the same shape under
    the same load."""
    records = result["records"]
    reference = {
        (tuple(r["shape"]), r["load"]): r for r in records if r["impl"] == "torchvision_onehot"
    }
    rows = []
    for r in records:
        ref = reference[tuple(r["shape"]), r["load"]]
        rows.append(
            [
                str(tuple(r["shape"])),
                str(r["load"]),
                r["impl"],
                f"{r['median_ms']:.1f}",
                f"{r['peak_mib']:.1f}",
                f"{r['median_ms'] / ref['median_ms']:.2f}",
                f"{r['peak_mib'] / ref['peak_mib']:.2f}",
            ]
        )
    header = ["shape", "load", "implementation", "median ms", "peak MiB", "time ×tv", "mem ×tv"]
    return markdown_table(header, rows)
