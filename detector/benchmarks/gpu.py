"""GPU check (``what=gpu``): one prepared command for a short GPU window, every figure in one JSON.

``python tools/benchmark.py what=gpu json=gpu.json`` on one H100/H200 (about 6–8 minutes), or
``python -m detector.benchmarks.gpu json=gpu.json`` where Hydra is not installed (:func:`main`):

1. **precision**: a few training steps of focaldet's R50-FPN at 800×1333 in float32, bf16
   autocast and fp16 autocast with a ``GradScaler``; the losses must be finite and within
   :data:`PRECISION_RTOL` of float32's (lr 0, so every step sees the same weights);
2. **train**: img/s and peak memory of focaldet's and torchvision's RetinaNet (same weights, as
   ``what=model``) in bf16 at batch 8 and 16, channels_last on and off, and ``torch.compile``
   (``detector.engine.compile.compile_network``, what ``train.compile=true`` runs) on and off;
3. **infer**: batched inference img/s of both, and focaldet's post-processing time alone;
4. **ddp**: a single-GPU ``torchrun`` start with NCCL (an all-reduce and a barrier), timed.

Each part records its figures, or its error, and the check goes on. The compiled configurations
run last and are skipped once ``budget_s`` has passed, so the window is not overrun.

``dry_run=true`` runs the same code on the CPU at toy sizes (ResNet-18, 128×128 images, the
smallest the P7 stride allows, batches of 1 and 2, 3 classes, one timed step, gloo instead of
NCCL, ``compile_backend=eager`` unless given), which ``tests/benchmarks/test_gpu.py`` does so
that the check cannot rot between GPU windows. On a CPU without bf16 kernels (oneDNN's
reference kernels, many times slower than float32) it takes minutes even so.
"""

from __future__ import annotations

import inspect
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from detector.benchmarks.common import (
    check_device,
    cuda_peak_bytes,
    machine,
    markdown_table,
    time_steps,
)
from detector.benchmarks.model import IMPLS, build_pair, compare_detections, make_inputs, make_step
from detector.engine.compile import compile_network

FULL = {"depth": 50, "height": 800, "width": 1333, "batches": (8, 16), "precision_batch": 2,
        "num_classes": 80}  # fmt: skip
DRY = {"depth": 18, "height": 128, "width": 128, "batches": (1, 2), "precision_batch": 1,
       "num_classes": 3}  # fmt: skip
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISION_RTOL = {"bf16": 0.05, "fp16": 0.01}
"""Largest relative difference of a step's total loss from float32's."""
ROOT = Path(__file__).resolve().parents[2]


def _timed(step: Callable[[], object], dev: torch.device, iters: int, warmup: int) -> float:
    """Median wall seconds of ``step`` after ``warmup`` calls (CUDA synchronised)."""
    return statistics.median(time_steps({"step": step}, dev, iters, warmup)["step"]["wall"])


def _pair(size: dict, dev: torch.device, channels_last: bool, backend: str | None) -> dict:
    """Both models on ``dev`` with the same weights: ``{impl: models dict}``."""
    tv, ours, criterion, post = build_pair(
        size["depth"], size["height"], size["num_classes"], size["width"]
    )
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    tv.to(dev, memory_format=fmt)
    ours.to(dev, memory_format=fmt)
    if backend is not None:
        compile_network(tv, backend)
        compile_network(ours, backend)
    return {
        "torchvision": {"model": tv},
        "focaldet": {"model": ours, "criterion": criterion.to(dev), "post": post},
    }


def check_precision(size: dict, dev: torch.device, steps: int) -> dict[str, Any]:
    """Total loss of ``steps`` focaldet training steps per precision, and their check."""
    models = _pair(size, dev, True, None)["focaldet"]
    images, targets = make_inputs(
        size["precision_batch"], size["height"], size["num_classes"], dev, size["width"]
    )
    out: dict[str, Any] = {}
    for name, dtype in PRECISIONS.items():
        scaler = torch.amp.GradScaler(dev.type, enabled=dtype == torch.float16)
        step = make_step("focaldet", "train", models, images, targets, dtype, scaler)
        out[name] = {"losses": [float(step()) for _ in range(steps)]}
    reference = out["fp32"]["losses"]
    for name, rtol in PRECISION_RTOL.items():
        losses = out[name]["losses"]
        diff = max(abs(a - b) / abs(b) for a, b in zip(losses, reference, strict=True))
        finite = all(torch.isfinite(torch.tensor(losses)).tolist())
        out[name].update(max_rel_diff=diff, finite=finite, ok=finite and diff <= rtol, rtol=rtol)
    return out


def _throughput(
    models: dict, mode: str, batch: int, size: dict, dev: torch.device, timing: dict
) -> dict[str, Any]:
    """img/s (and CUDA peak MiB) of both implementations' ``mode`` step in bf16 at ``batch``."""
    images, targets = make_inputs(batch, size["height"], size["num_classes"], dev, size["width"])
    record: dict[str, Any] = {}
    for impl in IMPLS:
        step = make_step(impl, mode, models[impl], images, targets, torch.bfloat16)
        start = time.perf_counter()
        step()  # the first call compiles, where compiling is on
        first = time.perf_counter() - start
        seconds = _timed(step, dev, timing["iters"], timing["warmup"])
        record[impl] = {"img_per_s": batch / seconds, "step_s": seconds, "first_call_s": first}
        if dev.type == "cuda":
            base, peak = cuda_peak_bytes(step, dev)
            record[impl]["peak_mib"] = peak / 2**20
    record["ratio_img_per_s"] = record["focaldet"]["img_per_s"] / record["torchvision"]["img_per_s"]
    if dev.type == "cuda":
        mine, theirs = record["focaldet"]["peak_mib"], record["torchvision"]["peak_mib"]
        record["ratio_peak_memory"] = mine / theirs
    return record


def check_inference(size: dict, dev: torch.device, timing: dict) -> dict[str, Any]:
    """Batched inference of both in bf16, their detections compared, and post-processing."""
    models = _pair(size, dev, True, None)
    batch = size["batches"][0]
    record = _throughput(models, "infer", batch, size, dev, timing)
    images, _ = make_inputs(batch, size["height"], size["num_classes"], dev, size["width"])
    ours = models["focaldet"]
    with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16):
        outputs = ours["model"](images)
        theirs = models["torchvision"]["model"](images)
    record["detections"] = compare_detections(ours["post"](outputs), theirs)
    with torch.inference_mode():
        record["postprocess_s"] = _timed(lambda: ours["post"](outputs), dev, **timing)
    return record


def check_ddp(dev: torch.device, timeout_s: float = 180.0) -> dict[str, Any]:
    """``torchrun --standalone --nproc_per_node=1`` of :func:`ddp_probe` (NCCL on CUDA, gloo on
    CPU); wall seconds of the whole start and the probe's own report."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=1",
        "-m",
        "detector.benchmarks.gpu",
        "ddp-probe",
        dev.type,
    ]
    paths = [str(ROOT), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"torchrun exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return {"torchrun_wall_s": wall, **report}


def ddp_probe(device_type: str) -> dict[str, Any]:
    """Inside torchrun: join the group, all-reduce a tensor, barrier; backend and timings."""
    start = time.perf_counter()
    backend = "nccl" if device_type == "cuda" else "gloo"
    dev = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if device_type == "cuda" else None
    if dev is not None:
        torch.cuda.set_device(dev)
    dist.init_process_group(backend, device_id=dev)
    init_s = time.perf_counter() - start
    value = torch.ones(4, device=dev or "cpu")
    dist.all_reduce(value)
    dist.barrier()
    world = dist.get_world_size()
    dist.destroy_process_group()
    return {
        "backend": backend,
        "world_size": world,
        "init_s": init_s,
        "all_reduce_ok": bool((value == world).all()),
        "total_s": time.perf_counter() - start,
    }


def _part(result: dict, name: str, fn: Callable[[], Any]) -> None:
    """Record ``fn()`` under ``result[name]``, or its error under ``result["errors"][name]``."""
    try:
        result[name] = fn()
    except Exception as e:  # noqa: BLE001 - one failing part must not lose the others' figures
        result.setdefault("errors", {})[name] = f"{type(e).__name__}: {e}"
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _train_configs(size: dict) -> list[dict[str, Any]]:
    """Eager first (every batch, channels_last on and off at the small batch), compiled last."""
    small = size["batches"][0]
    eager = [{"batch": b, "channels_last": True, "compile": False} for b in size["batches"]]
    return [
        *eager,
        {"batch": small, "channels_last": False, "compile": False},
        {"batch": small, "channels_last": True, "compile": True},
    ]


def _train_figures(
    cfg: dict[str, Any], size: dict, dev: torch.device, timing: dict, backend: str
) -> dict[str, Any]:
    models = _pair(size, dev, cfg["channels_last"], backend if cfg["compile"] else None)
    return _throughput(models, "train", cfg["batch"], size, dev, timing)


def run(
    dry_run: bool = False,
    device: str = "cuda",
    iters: int = 10,
    warmup: int = 3,
    precision_steps: int = 3,
    compile_backend: str = "",
    budget_s: int = 420,
) -> dict[str, Any]:
    """The whole check; ``{"meta", "config", "precision", "train", "infer", "ddp", "errors"?}``.

    ``dry_run`` forces the CPU and the toy sizes (module docstring), one timed step after one
    warm-up, and ``eager`` as the compile backend unless ``compile_backend`` names one
    (``""``: inductor on the GPU). Compiled configurations are skipped after ``budget_s``.
    """
    if min(iters, precision_steps) < 1 or warmup < 0 or budget_s < 0:
        raise ValueError("iters and precision_steps must be >= 1, warmup and budget_s >= 0")
    dev = check_device("cpu" if dry_run else device)
    size = DRY if dry_run else FULL
    # The first call of every step is timed apart, so a dry run needs no further warm-up.
    timing = {"iters": 1, "warmup": 0} if dry_run else {"iters": iters, "warmup": warmup}
    backend = compile_backend or ("eager" if dry_run else "inductor")
    started = time.perf_counter()
    result: dict[str, Any] = {"meta": machine(dev), "train": []}
    result["config"] = {
        "dry_run": dry_run,
        "device": str(dev),
        "compile_backend": backend,
        "budget_s": budget_s,
        **timing,
        **size,
    }
    _part(result, "precision", lambda: check_precision(size, dev, precision_steps))
    for cfg in _train_configs(size):
        if cfg["compile"] and time.perf_counter() - started > budget_s:
            result["train"].append({**cfg, "skipped": f"over budget_s={budget_s}"})
            continue
        record = dict(cfg)
        _part(record, "figures", lambda cfg=cfg: _train_figures(cfg, size, dev, timing, backend))
        result["train"].append(record)
    _part(result, "infer", lambda: check_inference(size, dev, timing))
    _part(result, "ddp", lambda: check_ddp(dev))
    result["wall_s"] = time.perf_counter() - started
    return result


def format_table(result: dict[str, Any]) -> str:
    """Training img/s and peak memory per configuration, then the other parts as JSON."""
    rows = []
    for cfg in result["train"]:
        if "figures" not in cfg:
            continue
        r = {**cfg, **cfg["figures"]}
        peak = [f"{r[i].get('peak_mib', float('nan')):.0f}" for i in IMPLS]
        rows.append(
            [
                f"b{r['batch']} cl={r['channels_last']} compile={r['compile']}",
                f"{r['focaldet']['img_per_s']:.1f}",
                f"{r['torchvision']['img_per_s']:.1f}",
                f"{r['ratio_img_per_s']:.2f}",
                *peak,
            ]
        )
    header = ["train bf16", "focaldet img/s", "torchvision img/s", "×tv", "focaldet MiB", "tv MiB"]
    rest = {k: result[k] for k in ("precision", "infer", "ddp", "errors") if k in result}
    rest["not_timed"] = [
        {k: v for k, v in c.items() if k != "figures"}
        for c in result["train"]
        if "figures" not in c
    ]
    return markdown_table(header, rows) + "\n" + json.dumps(rest, indent=1, default=str)


def main(argv: list[str]) -> int:
    """``python -m detector.benchmarks.gpu [key=value ...] [json=FILE]``: the check without
    Hydra (the GPU machine's image has torch and torchvision but not Hydra or pycocotools), or
    ``ddp-probe cuda|cpu``, the torchrun worker of :func:`check_ddp`."""
    if argv[:1] == ["ddp-probe"]:
        print(json.dumps(ddp_probe(argv[1])))
        return 0
    params = inspect.signature(run).parameters
    kwargs: dict[str, Any] = {}
    out = None
    for arg in argv:
        key, _, value = arg.partition("=")
        if key == "json":
            out = value
        elif key in params:
            kind = type(params[key].default)
            kwargs[key] = value.lower() in ("1", "true") if kind is bool else kind(value)
        else:
            raise SystemExit(f"unknown key {key!r} (choose from json, {', '.join(params)})")
    result = run(**kwargs)
    print(format_table(result))
    if out:
        Path(out).write_text(json.dumps(result, indent=2, default=str))
    return 1 if "errors" in result else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
