"""Benchmarks that print figures (they are not tests): one entry point for detector/benchmarks/.

    python tools/benchmark.py what=loss [loss.device=cpu] [loss.threads=0] [loss.repeats=7]
        [loss.warmup=2] [loss.load=0] [json=FILE]
    python tools/benchmark.py what=model [model.depth=50] [model.size=512] [model.batch=2]
        [model.num_classes=80] [model.threads=2] [model.device=cpu] [model.amp=false]
        [model.compile=false] [model.iters=10] [model.warmup=2] [model.memory=true] [json=FILE]
    python tools/benchmark.py what=data [data.ann_dir=DIR] [data.img_dir=DIR] [data.short_size=800]
        [data.max_size=1333] [data.passes=7] [data.limit=0] [data.pil=true] [json=FILE]
    python tools/benchmark.py what=eval [eval.images=5000] [eval.boxes=7] [eval.detections=100]
        [eval.repeat=3] [eval.backends=pycocotools,faster_coco_eval] [eval.report=true]
    python tools/benchmark.py what=dataset [dataset.scales=[0.25,1,4]] [dataset.workers=[0,2,8]]
        [dataset.designs=[compact,legacy]] [dataset.skip=[legacy:4:8]] [dataset.out=DIR]
    python tools/benchmark.py what=gpu [gpu.dry_run=false] [gpu.iters=10] [gpu.budget_s=420]
        [json=FILE]
    python tools/benchmark.py what=predict [predict.images=DIR] [predict.n=10] [predict.threads=0]
        [predict.repeats=5] [predict.backends=[torchvision,predictor,onnx,onnx_int8]]
        [predict.min_size=800] [predict.max_size=1333] [json=FILE]

Keys (configs/benchmark.yaml): ``what`` picks the benchmark; the node of the same name holds the
keyword arguments of its ``run()`` (``detector/benchmarks/<what>.py``, whose docstring says what
is measured and how); ``json`` also writes the whole result there. Prints one JSON line (date,
hardware, threads, versions, load average, command, settings), then a markdown table.

Adding a benchmark: write ``detector/benchmarks/<what>.py`` with ``run(**kwargs) -> dict``
(plain keyword arguments with defaults, a JSON-able result) and optionally
``format_table(result) -> str``; import it below and add it to ``BENCHMARKS``; add a ``<what>:``
node with its keys to configs/benchmark.yaml.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NamedTuple

from omegaconf import DictConfig

from detector.benchmarks import data, dataset, gpu, loss, model, predict
from detector.benchmarks import eval as eval_bench
from detector.benchmarks.common import report
from detector.engine.cli import run_tool, typed_kwargs
from detector.engine.config import ConfigError


class Benchmark(NamedTuple):
    run: Callable[..., dict[str, Any]]
    format_table: Callable[[dict[str, Any]], str] | None = None
    """None: the result is printed as JSON."""


BENCHMARKS = {
    "loss": Benchmark(loss.run, loss.format_table),
    "model": Benchmark(model.run, model.format_table),
    "data": Benchmark(data.run, data.format_table),
    "eval": Benchmark(eval_bench.run, eval_bench.format_figures),
    "dataset": Benchmark(dataset.run, dataset.format_table),
    "gpu": Benchmark(gpu.run, gpu.format_table),
    "predict": Benchmark(predict.run, predict.format_table),
}
"""``what=`` → the benchmark: the one table (no lookup by module name)."""


def run(cfg: DictConfig, command: str) -> int:
    """Run ``cfg.what`` with the keys of its node; a bad value is a one-line config error."""
    if cfg.what not in BENCHMARKS:
        raise ConfigError(f"what={cfg.what!r}: expected one of {', '.join(BENCHMARKS)}")
    bench = BENCHMARKS[cfg.what]
    kwargs = typed_kwargs(bench.run, cfg[cfg.what], cfg.what)
    try:
        result = bench.run(**kwargs)
    except ValueError as e:
        raise ConfigError(f"{cfg.what}: {e}") from None
    report(result, bench.format_table, command, cfg.json)
    return 0


def main(argv: list[str]) -> int:
    """Exit status of the tool for the command-line arguments ``argv`` (2: a config error)."""
    command = "python tools/benchmark.py " + " ".join(argv)
    return run_tool("benchmark", lambda cfg: run(cfg, command), argv, __doc__, ("json",))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
