"""Device and numeric precision: autocast dtype, channels-last, gradient scaling."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from kdforge.errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda if available, else cpu; otherwise the named device, checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device: '{name}' is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: '{name}' asked for, but PyTorch sees no CUDA GPU here; use cpu or auto")
    return device


def cpu_has_fast_bf16() -> bool:
    """True where oneDNN runs bf16 natively (AVX512-BF16 / AMX); there bf16 autocast pays off."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass(frozen=True)
class Precision:
    device: torch.device
    autocast_dtype: torch.dtype | None  # None: plain fp32
    channels_last: bool

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.autocast_dtype]

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A loss scaler, active only for fp16 (bf16 has fp32's exponent range)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.autocast_dtype is torch.float16)

    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def resolve_precision(precision: str, channels_last: bool | None, device: torch.device) -> Precision:
    """'auto' picks bf16 where the hardware runs it fast (CUDA with bf16, CPUs with bf16 units)."""
    if precision == "auto":
        if device.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "bf16" if cpu_has_fast_bf16() else "fp32"
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("train.precision: fp16 autocast is for CUDA; on CPU use bf16 or fp32")
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if channels_last is None:
        channels_last = dtype is not None
    return Precision(device, dtype, channels_last)
