"""What every benchmark shares: timing, peak memory (in a fresh process on CPU), a description
of the machine, and the JSON and markdown report.

A benchmark is a module of this package with ``run(**kwargs) -> dict`` (plain keyword arguments
with defaults; a JSON-able result, ``{"meta", "config", ...}``) and, optionally,
``format_table(result) -> str``. ``tools/benchmark.py`` lists them in one table and calls
:func:`report` on the result.
"""

from __future__ import annotations

import datetime
import json
import multiprocessing
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torchvision

MIB = 1 << 20
KIB = 1 << 10


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
    """The value ``worker(*args, queue)`` puts on ``queue``, run in a freshly spawned process.

    On CPU PyTorch keeps no allocator statistics and a process's resident set never shrinks, so
    a peak measured in a process that ran something else first could reuse freed memory unseen.
    """
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=worker, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def cuda_peak_bytes(step: Callable[[], object], device: torch.device) -> tuple[int, int]:
    """``(allocated before, peak allocated)`` in bytes over one call of ``step`` on CUDA, after
    one warm-up call and a reset of the allocator's peak statistics."""
    step()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize(device)
    return base, torch.cuda.max_memory_allocated(device)


def time_steps(
    steps: dict[str, Callable[[], object]],
    device: torch.device,
    iters: int,
    warmup: int,
    swap_order: bool = False,
) -> dict[str, dict[str, list[float]]]:
    """Wall and process CPU seconds of each step per call: ``{name: {"wall": […], "cpu": […]}}``.

    After ``warmup`` calls of each, the steps alternate ``iters`` times, so that a slow spell of a
    shared machine hits all alike; with ``swap_order`` the order is reversed every other round
    (for two steps: the first of the pair alternates too). CUDA is synchronised around each call.
    """
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            steps[name]()
    times: dict[str, dict[str, list[float]]] = {n: {"wall": [], "cpu": []} for n in names}
    for i in range(iters):
        for name in names[::-1] if swap_order and i % 2 else names:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            wall, cpu = time.perf_counter(), time.process_time()
            steps[name]()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[name]["wall"].append(time.perf_counter() - wall)
            times[name]["cpu"].append(time.process_time() - cpu)
    return times


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """The best rate, in GFLOP/s (2 n³ per product), of an ``size`` × ``size`` float32 matrix
    product on the CPU over ``repeats`` calls after one warm-up, on PyTorch's current threads:
    the rate the friendliest dense kernel reaches on this machine, a practical ceiling for
    convolutions, which are matrix products with extra data movement."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def check_device(device: str) -> torch.device:
    """``device`` (cpu, cuda or cuda:N) as a torch.device; ValueError if unknown or absent."""
    if device.split(":")[0] not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device=cuda but torch.cuda.is_available() is False")
    return torch.device(device)


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


def machine(device: torch.device) -> dict[str, Any]:
    """When and where a benchmark ran: date, hardware, threads, library versions, load average
    (how busy the machine was: figures from a shared machine need it)."""
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "hardware": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "load_average": list(os.getloadavg()),
    }


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table; the first column is left-aligned, the figures right-aligned."""
    align = [":--"] + ["--:"] * (len(header) - 1)
    lines = [header, align, *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def report(
    result: dict[str, Any],
    format_table: Callable[[dict[str, Any]], str] | None,
    command: str,
    json_path: str | None = None,
) -> None:
    """Print ``result``'s meta and config as one JSON line, then its table (the whole result as
    JSON where the benchmark has no table), and write the whole result to ``json_path``."""
    result.setdefault("meta", {})["command"] = command
    print(json.dumps({**result["meta"], **result.get("config", {})}))
    print(format_table(result) if format_table else json.dumps(result, indent=2))
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2))


BUSY_LOOP = "while True: pass"
"""What a competing process runs: a plain Python busy loop, one core's worth of load (as a
DataLoader worker decoding images, or another job)."""


@contextmanager
def busy_processes(count: int) -> Iterator[list[subprocess.Popen]]:
    """Within the block, ``count`` processes each spinning :data:`BUSY_LOOP`; they are killed
    and reaped on the way out, also after an error."""
    procs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(count)]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()
