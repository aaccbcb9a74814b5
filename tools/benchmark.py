"""Benchmarks that print figures (they are not tests).

Usage (Hydra-style ``key=value`` arguments)::

    python tools/benchmark.py what=loss device=cpu threads=2 repeats=7 json=bench.json

``what=model``: focaldet's RetinaNet against torchvision's, training step, inference and peak
memory (``tools/benchmark_model.py``, which takes the remaining arguments).
``what=data``: decode + transform throughput of one worker against torchvision.transforms.v2
(``tools/benchmark_data.py``, which takes the remaining arguments).

``what=loss``: forward+backward time and peak memory of the focal loss on dense-detector logits,
``(240000, 80)`` and ``(2, 240000, 80)`` float32, for ``torchvision.ops.sigmoid_focal_loss`` with
one-hot targets, ``losses.sigmoid_focal_loss`` with the same targets, and
``losses.sigmoid_focal_loss_labels`` with integer labels. Implementations alternate within each
repeat after a warm-up; the median is reported.

Peak memory is the growth over the resident inputs (logits and targets or labels) while forward
and backward run. On CUDA it is ``torch.cuda.max_memory_allocated`` after a reset. On CPU PyTorch
keeps no allocator statistics, so each measurement runs in a fresh process (no memory freed by an
earlier measurement can be reused unseen): the inputs are built, the code path is warmed up on a
tiny input, the kernel's resident-set high-water mark is reset (``/proc/self/clear_refs``), and
the peak is ``VmHWM - VmRSS`` read from ``/proc/self/status`` afterwards. Where the reset is not
permitted the growth of ``getrusage().ru_maxrss`` over the same baseline is used instead.
"""

import datetime
import importlib
import json
import multiprocessing
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision

from losses import BACKGROUND, IGNORE, sigmoid_focal_loss, sigmoid_focal_loss_labels

MIB = 1 << 20
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


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def resident_set_kib(run: Callable[[], object]) -> tuple[int, int]:
    """Calls ``run`` and returns this process's resident set (KiB) before it and at its peak.

    The kernel's high-water mark is reset first (``/proc/self/clear_refs``), so the peak is the
    one reached while ``run`` ran: (``VmRSS`` before, ``VmHWM`` after). Where the reset is not
    permitted, ``getrusage().ru_maxrss`` before and after (the process's all-time peak).
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current VmRSS
        base = _proc_status_kib("VmRSS")
        run()
        peak = _proc_status_kib("VmHWM")
    except OSError:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        run()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return base, peak


def in_fresh_process(worker: Callable[..., None], *args: object) -> object:
    """The value ``worker(*args, queue)`` puts on ``queue``, run in a freshly spawned process."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=worker, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


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
        inputs = make_loss_inputs(shape, device)
        step = loss_step(impl, inputs)
        step()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    return in_fresh_process(_cpu_peak_worker, impl, shape, threads)


def median_times(
    steps: dict[str, Callable[[], None]], device: torch.device, repeats: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds per call of each step, the steps alternating within every repeat."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(warmup):
        for step in steps.values():
            step()
    for _ in range(repeats):
        for name, step in steps.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


def benchmark_loss(device: torch.device, threads: int, repeats: int, warmup: int) -> list[dict]:
    """Focal-loss forward+backward: median time and peak memory per implementation and shape."""
    records = []
    for shape in LOSS_SHAPES:
        inputs = make_loss_inputs(shape, device)
        steps = {impl: loss_step(impl, inputs) for impl in LOSS_IMPLS}
        times = median_times(steps, device, repeats, warmup)
        del inputs, steps
        for impl in LOSS_IMPLS:
            records.append(
                {
                    "what": "loss",
                    "shape": list(shape),
                    "impl": impl,
                    "median_ms": 1000 * statistics.median(times[impl]),
                    "times_ms": [1000 * t for t in times[impl]],
                    "peak_mib": peak_memory(impl, shape, device, threads) / MIB,
                }
            )
    return records


def print_loss_table(records: list[dict]) -> None:
    """One line per record, with time and memory relative to torchvision's on the same shape."""
    reference = {tuple(r["shape"]): r for r in records if r["impl"] == "torchvision_onehot"}
    print(
        f"{'shape':<16} {'implementation':<20} {'median ms':>10} {'peak MiB':>10} "
        f"{'time ×tv':>9} {'mem ×tv':>8}"
    )
    for r in records:
        ref = reference[tuple(r["shape"])]
        print(
            f"{str(tuple(r['shape'])):<16} {r['impl']:<20} {r['median_ms']:>10.1f} "
            f"{r['peak_mib']:>10.1f} {r['median_ms'] / ref['median_ms']:>9.2f} "
            f"{r['peak_mib'] / ref['peak_mib']:>8.2f}"
        )


BENCHMARKS = {"loss": (benchmark_loss, print_loss_table)}
"""``what=`` choices: a runner returning JSON-able records, and a printer for them."""

DEFAULTS = {
    "what": "loss",
    "device": "cpu",
    "threads": "0",
    "repeats": "7",
    "warmup": "2",
    "json": "",
}


def parse_args(argv: list[str]) -> dict[str, str]:
    """``key=value`` arguments over ``DEFAULTS``; a ValueError names a malformed or unknown one."""
    args = dict(DEFAULTS)
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in DEFAULTS:
            raise ValueError(
                f"unknown argument {arg!r}: expected key=value with key in {sorted(DEFAULTS)}"
            )
        args[key] = value
    if args["what"] not in BENCHMARKS:
        raise ValueError(f"what={args['what']!r}: expected one of {sorted(BENCHMARKS)}")
    if args["device"] not in ("cpu", "cuda"):
        raise ValueError(f"device={args['device']!r}: expected cpu or cuda")
    if args["device"] == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but torch.cuda.is_available() is False")
    for key in ("threads", "repeats", "warmup"):
        if not args[key].isdigit():
            raise ValueError(f"{key}={args[key]!r}: expected a non-negative integer")
    return args


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one, else the machine type."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


DELEGATES = {"model": "benchmark_model", "data": "benchmark_data"}
"""``what=`` choices measured by a script of their own beside this one (same ``key=value`` args)."""


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    what = next((a.partition("=")[2] for a in argv if a.startswith("what=")), "loss")
    if what in DELEGATES:
        delegate = importlib.import_module(DELEGATES[what])
        return delegate.main([a for a in argv if not a.startswith("what=")])
    try:
        args = parse_args(argv)
    except ValueError as err:
        print(f"benchmark.py: {err}", file=sys.stderr)
        return 2
    threads = int(args["threads"]) or torch.get_num_threads()
    torch.set_num_threads(threads)
    device = torch.device(args["device"])
    run, show = BENCHMARKS[args["what"]]
    records = run(device, threads, int(args["repeats"]), int(args["warmup"]))
    meta = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "threads": threads,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "command": "python tools/benchmark.py " + " ".join(argv),
    }
    print(json.dumps(meta))
    show(records)
    if args["json"]:
        Path(args["json"]).write_text(json.dumps({"meta": meta, "records": records}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
