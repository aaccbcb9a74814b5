"""``torch.compile`` for the network: what is compiled, how image sizes stay cheap, and the log line
that says how long compiling took.

Only the network's modules that hold parameters (for RetinaNet: backbone, FPN, head) are compiled,
each in place (``nn.Module.compile``: the state dict keeps its keys, checkpoints are unchanged).
The parameter-free plumbing around them (padding, anchor generation and its cache keyed by
feature sizes) stays eager, so image sizes reach it as plain integers rather than as symbols a
compiled graph would have to guard on. Inside the compiled modules, the default automatic dynamic
shapes apply: the first batch compiles for its size, the first batch of another size recompiles
once with height and width symbolic, and every later size reuses that graph. The data pipeline
pads to a multiple of 128, so there are few sizes to begin with.

The classification loss needs no wrapping: its passes over the logits are compiled kernels of
their own (``losses/_kernels.py``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")
"""``inductor`` generates fused code (a C++ compiler on CPU, Triton on CUDA); ``aot_eager`` traces
forward and backward as inductor does but runs the traced graphs with eager kernels (no code
generation: the tests use it); ``eager`` only captures the graphs."""


def compiled_graphs() -> int:
    """How many graphs dynamo has compiled in this process so far."""
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


class CompileLog:
    """Forward hooks on the network that log each call during which graphs were compiled, with
    its duration (compiling included), and keep the records in :attr:`events`."""

    def __init__(self, model: nn.Module) -> None:
        self.events: list[dict[str, Any]] = []
        self._start = (0.0, 0)
        model.register_forward_pre_hook(self._before)
        model.register_forward_hook(self._after)

    def _before(self, module: nn.Module, args: Any) -> None:
        self._start = (time.perf_counter(), compiled_graphs())

    def _after(self, module: nn.Module, args: Any, output: Any) -> None:
        started, graphs = self._start
        new = compiled_graphs() - graphs
        if new:
            seconds = time.perf_counter() - started
            shape = tuple(args[0].shape) if args and torch.is_tensor(args[0]) else None
            self.events.append({"graphs": new, "seconds": seconds, "input_shape": shape})
            logger.info("torch.compile: %d graph(s) compiled in %.1f s (forward of input %s, "
                        "compiling included)", new, seconds, shape)  # fmt: skip


def compile_network(model: nn.Module, backend: str = "inductor") -> CompileLog:
    """Compile ``model``'s child modules that hold parameters in place with ``backend``; return
    the :class:`CompileLog` hooked on ``model``. A training step compiles backward graphs too,
    when backward first runs; their time shows in the step time of the first log interval."""
    if backend not in COMPILE_BACKENDS:
        raise ValueError(f"compile_backend must be one of {COMPILE_BACKENDS}, got {backend!r}")
    for child in model.children():
        if any(True for _ in child.parameters()):
            child.compile(backend=backend)
    return CompileLog(model)
