"""losses/_kernels.py: the compiled passes equal the eager ones within float rounding, and without
a compiler (or when compiling fails) the loss runs eagerly with exactly the eager numbers."""

import pytest
import torch

import losses._kernels as kernels
from losses import BACKGROUND, IGNORE, focal_loss_star_labels, sigmoid_focal_loss_labels

K = 7
needs_compiler = pytest.mark.skipif(
    not kernels.compiler_available("cpu"), reason="inductor needs a C++ compiler on the path"
)


def make_inputs(dtype: torch.dtype, rows: int = 300):
    gen = torch.Generator().manual_seed(1)
    logits = (torch.randn(rows, K, generator=gen, dtype=torch.float64) * 4 - 2).to(dtype)
    labels = torch.randint(BACKGROUND, K, (rows,), generator=gen)
    labels[:3] = torch.tensor([BACKGROUND, IGNORE, K - 1])
    logits[1] = float("nan")  # an IGNORE row contributes nothing, whatever its logits
    return logits, labels


def loss_and_grad(fn, logits, labels, reduction):
    x = logits.clone().requires_grad_()
    loss = fn(x, labels, reduction=reduction)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), grad


def both_paths(fn, logits, labels, reduction):
    with kernels.fused_kernels(enabled=False):
        eager = loss_and_grad(fn, logits, labels, reduction)
    calls = kernels._compiled.cache_info()
    with kernels.fused_kernels(enabled=True, min_numel=0):
        fused = loss_and_grad(fn, logits, labels, reduction)
    after = kernels._compiled.cache_info()
    return eager, fused, after.hits + after.misses - calls.hits - calls.misses


@needs_compiler
@pytest.mark.parametrize(
    ("dtype", "reduction", "tol"),
    [
        (torch.float32, "sum", 1e-5),
        (torch.float64, "sum", 1e-12),
        (torch.float64, "none", 1e-12),
    ],
)
def test_fused_equals_eager(dtype, reduction, tol):
    logits, labels = make_inputs(dtype)
    (loss, grad), (fused_loss, fused_grad), compiled_calls = both_paths(
        sigmoid_focal_loss_labels, logits, labels, reduction
    )
    assert compiled_calls == 2  # one pass forward, one backward
    assert torch.isfinite(fused_grad).all() and fused_grad[1].eq(0).all()
    torch.testing.assert_close(fused_loss, loss, rtol=tol, atol=tol * 1e-3)
    torch.testing.assert_close(fused_grad, grad, rtol=tol, atol=tol * 1e-3)


@needs_compiler
def test_fused_focal_star_equals_eager():
    logits, labels = make_inputs(torch.float64)
    eager, fused, compiled_calls = both_paths(focal_loss_star_labels, logits, labels, "sum")
    assert compiled_calls == 2
    for a, b in zip(fused, eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


@needs_compiler
def test_fused_gradcheck_float64():
    logits, labels = make_inputs(torch.float64, rows=12)
    logits[1] = 0.0  # gradcheck perturbs every element, the IGNORE row's too
    x = logits.clone().requires_grad_()
    with kernels.fused_kernels(enabled=True, min_numel=0):
        assert torch.autograd.gradcheck(
            lambda t: sigmoid_focal_loss_labels(t, labels, 0.25, 2.0, "sum"), (x,)
        )


def test_without_compiler_runs_eagerly_with_the_same_numbers(monkeypatch):
    monkeypatch.setattr(kernels.shutil, "which", lambda name: None)
    kernels.compiler_available.cache_clear()
    try:
        assert not kernels.compiler_available("cpu")

        def never_compiled(fn):
            raise AssertionError("compiled without a compiler")

        monkeypatch.setattr(kernels, "_compiled", never_compiled)
        logits, labels = make_inputs(torch.float32)
        for reduction in ("sum", "none"):
            with kernels.fused_kernels(enabled=False):
                eager = loss_and_grad(sigmoid_focal_loss_labels, logits, labels, reduction)
            with kernels.fused_kernels(enabled=True, min_numel=0):
                fallback = loss_and_grad(sigmoid_focal_loss_labels, logits, labels, reduction)
            for a, b in zip(fallback, eager, strict=True):
                assert torch.equal(a.nan_to_num(), b.nan_to_num())
    finally:
        kernels.compiler_available.cache_clear()


def test_failed_compilation_falls_back_to_eager(monkeypatch, caplog):
    def broken(*args):
        raise RuntimeError("no cc1plus")

    monkeypatch.setattr(kernels, "_compiled", lambda fn: broken)
    monkeypatch.setattr(kernels, "compiler_available", lambda device_type: True)
    logits, labels = make_inputs(torch.float32)
    with kernels.fused_kernels(enabled=False):
        eager = loss_and_grad(sigmoid_focal_loss_labels, logits, labels, "sum")
    with kernels.fused_kernels(enabled=True, min_numel=0):
        fallback = loss_and_grad(sigmoid_focal_loss_labels, logits, labels, "sum")
        assert kernels._settings["enabled"] is False  # the next calls go straight to eager
    assert kernels._settings["enabled"] is True
    assert (
        "compiling the focal-loss kernels failed, running them eagerly: no cc1plus" in caplog.text
    )
    assert torch.equal(fallback[0], eager[0]) and torch.equal(fallback[1], eager[1])


def test_chunk_size_follows_the_memory_budget(monkeypatch):
    monkeypatch.setitem(kernels.CHUNK_BYTES, "cpu", 1 << 20)
    logits32 = torch.zeros(10, 80)
    # 1 MiB / (4 temporaries × 80 classes × 4 bytes) = 819 rows; float64 halves it.
    assert kernels.chunk_rows(logits32) == 819
    assert kernels.chunk_rows(logits32.double()) == 409
    assert kernels.chunk_rows(logits32.bfloat16()) == 819  # bf16 computes in float32
    assert kernels.chunk_numel(logits32, temporaries=10) == 26214
    monkeypatch.setitem(kernels.CHUNK_BYTES, "cpu", 1)
    assert kernels.chunk_rows(logits32) == 1
