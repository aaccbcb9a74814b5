"""Mixed precision: bf16 autocast where the device has it, fp16 + GradScaler on CUDA on request.

Only the network runs under autocast; its consumers compute in float32 from its outputs (the
losses chunk by chunk, the post-processor on its input), so losses, box decoding, IoU and NMS
stay in float32.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch

logger = logging.getLogger(__name__)


def cpu_supports_bf16() -> bool:
    """Whether oneDNN has bf16 kernels for this CPU (AVX-512 and newer); elsewhere bf16 autocast
    is emulated and slower than float32."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


class MixedPrecision:
    """The autocast context and the gradient scaler of one run.

    Args:
        device: where the network runs.
        enabled: ``train.amp``; off means plain float32. On a CPU without bf16 kernels it falls
            back to float32 with a warning.
        dtype: ``"bf16"`` (default; CPU and CUDA with bf16 support; no scaler needed, bf16 has
            float32's exponent range) or ``"fp16"`` (CUDA only, with a ``GradScaler``).
    """

    def __init__(self, device: torch.device, enabled: bool = False, dtype: str = "bf16") -> None:
        if dtype not in ("bf16", "fp16"):
            raise ValueError(f"mixed precision dtype must be bf16 or fp16, got {dtype!r}")
        if enabled and dtype == "fp16" and device.type != "cuda":
            raise ValueError("fp16 mixed precision needs CUDA; use bf16 on CPU")
        cuda = device.type == "cuda"
        if enabled and dtype == "bf16" and cuda and not torch.cuda.is_bf16_supported():
            dtype = "fp16"  # pre-Ampere GPUs: fall back to fp16 with loss scaling
        if enabled and device.type == "cpu" and not cpu_supports_bf16():
            logger.warning("this CPU has no bf16 kernels (oneDNN); training in float32 instead")
            enabled = False
        self.device = device
        self.enabled = enabled
        self.dtype = torch.bfloat16 if dtype == "bf16" else torch.float16
        self.scaler = torch.amp.GradScaler(
            device.type, enabled=enabled and self.dtype == torch.float16
        )

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Autocast to the chosen dtype (a no-op when disabled)."""
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.enabled):
            yield

    def __repr__(self) -> str:
        mode = str(self.dtype).removeprefix("torch.") if self.enabled else "float32"
        return f"MixedPrecision({mode}, scaler={self.scaler.is_enabled()})"
