"""The three passes of a label loss over the ``(M, K)`` logits, fused where a compiler is at hand.

Each pass evaluates a loss's ``y = 0`` branch (``losses._chunked.NegativeBranch``) on every
element, with the IGNORE rows masked:

- :func:`negative_row_sums`: ``Σ_k f(x)`` per row (forward of ``"sum"`` and ``"mean"``);
- :func:`negative_elementwise`: ``w f(x)``, 0 on IGNORE rows (forward of ``"none"``);
- :func:`negative_grad`: ``f'(x) · scale``, 0 on IGNORE rows (backward).

Evaluated eagerly, ``f`` is five to eight elementwise kernels over each chunk, and each kernel
ends at an OpenMP barrier: when another process holds one of the cores (a data-loader worker,
another job), every barrier waits for a time slice, and the loss slowed five- to eightfold under
one competing process while torchvision's took twice as long (issue 16). ``torch.compile`` turns
each pass into one loop over the elements that keeps ``f``'s intermediates in registers: one kernel
(one barrier) per direction over the whole tensor, and no temporaries, so no chunking either.

The compiled passes are used for inputs of at least :data:`FUSED_MIN_NUMEL` elements where
inductor can build code for the device (a C++ compiler for the CPU, Triton for CUDA); smaller
inputs, and every input where no compiler is present or compiling fails, run the eager chunked
loop, whose numbers are exactly those of the unfused implementation. The two agree within float
rounding (relative 1e-5 in float32, 1e-12 in float64: inductor's vectorised ``exp`` and ``log``
round differently; tests/losses/test_kernels.py).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
from collections.abc import Callable, Iterator

import torch

logger = logging.getLogger(__name__)

CHUNK_BYTES = {"cpu": 16 << 20, "cuda": 128 << 20}
"""Memory budget of the eager loop's temporaries per chunk, by device type. The eager branches
keep up to :data:`EAGER_TEMPORARIES` chunk-sized tensors alive at once; on CPU 16 MiB is 2^20
float32 elements of K = 80 logits per chunk: few barriers (under load a (98208, 80) loss took
3.1 s with chunks of 2^17 elements, 0.42–0.48 s with 2^19–2^20), and well under the gradient
itself (73 MiB for (240000, 80))."""
EAGER_TEMPORARIES = 4
"""Chunk-sized tensors alive at once in an eager pass (``p``, ``softplus``, their product, the
compute-dtype copy of a bf16/fp16 chunk)."""
FUSED_MIN_NUMEL = 1 << 20
"""Inputs smaller than this run eagerly: a compiled pass costs seconds to build once per process
(the first call; inductor caches its code on disk), which only large logits repay."""

_settings = {"min_numel": FUSED_MIN_NUMEL, "enabled": True}


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other floating dtype (fp16, bf16, fp32) computes in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def chunk_numel(t: torch.Tensor, temporaries: int) -> int:
    """Elements per eager chunk of ``t``: ``temporaries`` compute-dtype tensors of that many
    elements fit in the device's :data:`CHUNK_BYTES`."""
    itemsize = torch.finfo(compute_dtype(t.dtype)).bits // 8
    budget = CHUNK_BYTES.get(t.device.type, CHUNK_BYTES["cuda"])
    return max(1, budget // (itemsize * temporaries))


def chunk_rows(logits: torch.Tensor, temporaries: int = EAGER_TEMPORARIES) -> int:
    """Rows of ``logits (M, K)`` per eager chunk (see :func:`chunk_numel`)."""
    return max(1, chunk_numel(logits, temporaries) // max(1, logits.shape[1]))


def spans(length: int, step: int) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` covering ``range(length)`` in pieces of at most ``step``."""
    return [(start, min(start + step, length)) for start in range(0, length, step)]


@functools.cache
def compiler_available(device_type: str) -> bool:
    """Whether inductor can generate code for ``device_type``: a C++ compiler (``$CXX``, g++,
    clang++ or c++) on the path for the CPU, Triton for CUDA."""
    if device_type == "cpu":
        names = [os.environ.get("CXX", ""), "g++", "clang++", "c++"]
        return any(name and shutil.which(name) for name in names)
    if device_type == "cuda":
        from torch.utils._triton import has_triton

        return has_triton()
    return False


@contextlib.contextmanager
def fused_kernels(enabled: bool = True, min_numel: int = FUSED_MIN_NUMEL) -> Iterator[None]:
    """Within the block, use the compiled passes (``enabled``) from ``min_numel`` elements on,
    or never (``enabled=False``); for tests and benchmarks that compare the two."""
    saved = dict(_settings)
    _settings.update(enabled=enabled, min_numel=min_numel)
    try:
        yield
    finally:
        _settings.update(saved)


def _use_fused(logits: torch.Tensor) -> bool:
    return (
        _settings["enabled"]
        and logits.numel() >= _settings["min_numel"]
        and compiler_available(logits.device.type)
    )


def _row_sums(branch, x: torch.Tensor) -> torch.Tensor:
    return torch.sum(branch.loss(x.to(compute_dtype(x.dtype))), dim=1)


def _elementwise(branch, x: torch.Tensor, keep: torch.Tensor, weight: float) -> torch.Tensor:
    # where, not a product: logits of IGNORE rows may be anything, even inf or NaN.
    loss = branch.loss(x.to(compute_dtype(x.dtype))) * weight
    return torch.where(keep[:, None], loss, 0.0).to(x.dtype)


def _grad(branch, x: torch.Tensor, keep: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    g = torch.where(keep[:, None], branch.grad(x.to(compute_dtype(x.dtype))), 0.0)
    return (g * scale).to(x.dtype)


@functools.cache
def _compiled(fn: Callable) -> Callable:
    # dynamic=True: one kernel for every M (and K), not a recompilation per batch shape.
    return torch.compile(fn, dynamic=True, fullgraph=True)


def _fused(fn: Callable, *args: object) -> torch.Tensor | None:
    """``fn(*args)`` compiled; None (and the eager loop from now on) if compiling fails."""
    try:
        return _compiled(fn)(*args)
    except Exception as e:  # noqa: BLE001 - any compiler failure means: run eagerly
        logger.warning("compiling the focal-loss kernels failed, running them eagerly: %s", e)
        _settings["enabled"] = False
        return None


def negative_row_sums(branch, logits: torch.Tensor) -> torch.Tensor:
    """``(M,)`` row sums of ``branch.loss`` over ``logits (M, K)``, in the compute dtype."""
    if _use_fused(logits) and (out := _fused(_row_sums, branch, logits)) is not None:
        return out
    out = logits.new_empty(logits.shape[0], dtype=compute_dtype(logits.dtype))
    for start, end in spans(logits.shape[0], chunk_rows(logits)):
        chunk = logits[start:end].to(out.dtype)
        torch.sum(branch.loss(chunk), dim=1, out=out[start:end])
    return out


def negative_elementwise(
    branch, logits: torch.Tensor, keep: torch.Tensor, weight: float
) -> torch.Tensor:
    """``(M, K)`` ``weight · branch.loss(logits)`` in the logits' dtype, 0 where ``keep (M,)``
    is False."""
    if (
        _use_fused(logits)
        and (out := _fused(_elementwise, branch, logits, keep, weight)) is not None
    ):
        return out
    out = torch.empty_like(logits)
    cdt, ignored = compute_dtype(logits.dtype), ~keep
    for start, end in spans(logits.shape[0], chunk_rows(logits)):
        neg = branch.loss(logits[start:end].to(cdt)).mul_(weight)
        out[start:end] = neg.masked_fill_(ignored[start:end, None], 0.0)
    return out


def negative_grad(
    branch, logits: torch.Tensor, keep: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """``(M, K)`` ``branch.grad(logits) · scale`` in the logits' dtype, 0 where ``keep (M,)`` is
    False; ``scale`` is a compute-dtype scalar tensor or ``(M, K)``."""
    if _use_fused(logits) and (out := _fused(_grad, branch, logits, keep, scale)) is not None:
        return out
    grad = torch.empty_like(logits)
    cdt, ignored = compute_dtype(logits.dtype), ~keep
    elementwise = scale.dim() > 0
    for start, end in spans(logits.shape[0], chunk_rows(logits)):
        # A fill, not a product, as in forward; the product is written into the gradient.
        g = branch.grad(logits[start:end].to(cdt)).masked_fill_(ignored[start:end, None], 0.0)
        torch.mul(g, scale[start:end] if elementwise else scale, out=grad[start:end])
    return grad
