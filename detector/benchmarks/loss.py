"""Focal-loss benchmark (``what=loss``): forward+backward time and peak memory of the focal loss
on dense-detector logits, ``(240000, 80)`` and ``(2, 240000, 80)`` float32, for
``torchvision.ops.sigmoid_focal_loss`` with one-hot targets, ``losses.sigmoid_focal_loss`` with
the same targets, and ``losses.sigmoid_focal_loss_labels`` with integer labels. Implementations
alternate within each repeat after a warm-up; the median is reported.

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
    check_device,
    cuda_peak_bytes,
    in_fresh_process,
    machine,
    markdown_table,
    resident_set_kib,
    time_steps,
)
from losses import BACKGROUND, IGNORE, sigmoid_focal_loss, sigmoid_focal_loss_labels

LOSS_SHAPES = ((240000, 80), (2, 240000, 80))
"""A (1333×800 image, A = 9) anchor set with the 80 COCO classes, alone and in a batch of 2."""
POSITIVES_PER_IMAGE = 200
IGNORED_FRACTION = 0.05
PRIOR_LOGIT = -4.595
"""log(π / (1 - π)) for the prior π = 0.01 of §4.1 Initialization: logits as at the start."""

LOSS_IMPLS = ("torchvision_onehot", "focaldet_onehot", "focaldet_labels")


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
    loss_step(impl, make_loss_inputs((64, shape[-1]), torch.device("cpu")))()
    base, peak = resident_set_kib(loss_step(impl, inputs))
    queue.put((peak - base) * 1024)


def peak_memory(impl: str, shape: tuple[int, ...], device: torch.device, threads: int) -> int:
    """Peak memory growth in bytes of one forward+backward of ``impl`` over its inputs."""
    if device.type == "cuda":
        base, peak = cuda_peak_bytes(loss_step(impl, make_loss_inputs(shape, device)), device)
        return peak - base
    return in_fresh_process(_cpu_peak_worker, impl, shape, threads)


def run(device: str = "cpu", threads: int = 0, repeats: int = 7, warmup: int = 2) -> dict[str, Any]:
    """Median time and peak memory per implementation and shape; ``threads=0``: all cores.

    Returns ``{"meta", "config", "records"}``; a record holds ``shape``, ``impl``,
    ``median_ms``, ``times_ms`` and ``peak_mib``.
    """
    if min(threads, repeats, warmup) < 0 or repeats < 1:
        raise ValueError(
            f"threads and warmup must be >= 0 and repeats >= 1, got {threads}, {warmup}, {repeats}"
        )
    dev = check_device(device)
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    records = []
    for shape in LOSS_SHAPES:
        inputs = make_loss_inputs(shape, dev)
        steps = {impl: loss_step(impl, inputs) for impl in LOSS_IMPLS}
        times = time_steps(steps, dev, repeats, warmup)
        del inputs, steps
        for impl in LOSS_IMPLS:
            wall = times[impl]["wall"]
            records.append(
                {
                    "what": "loss",
                    "shape": list(shape),
                    "impl": impl,
                    "median_ms": 1000 * statistics.median(wall),
                    "times_ms": [1000 * t for t in wall],
                    "peak_mib": peak_memory(impl, shape, dev, threads) / MIB,
                }
            )
    config = {"device": device, "threads": threads, "repeats": repeats, "warmup": warmup}
    return {"meta": machine(dev), "config": config, "records": records}


def format_table(result: dict[str, Any]) -> str:
    """One row per record, with time and memory relative to torchvision's on the same shape."""
    records = result["records"]
    reference = {tuple(r["shape"]): r for r in records if r["impl"] == "torchvision_onehot"}
    rows = []
    for r in records:
        ref = reference[tuple(r["shape"])]
        rows.append(
            [
                str(tuple(r["shape"])),
                r["impl"],
                f"{r['median_ms']:.1f}",
                f"{r['peak_mib']:.1f}",
                f"{r['median_ms'] / ref['median_ms']:.2f}",
                f"{r['peak_mib'] / ref['peak_mib']:.2f}",
            ]
        )
    header = ["shape", "implementation", "median ms", "peak MiB", "time ×tv", "mem ×tv"]
    return markdown_table(header, rows)
