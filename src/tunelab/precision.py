"""Which float type runs the matrix work: bfloat16 where the hardware computes it natively, float32 elsewhere.

bfloat16 is fast on GPUs that support it and on CPUs with native bfloat16 instructions (AVX512-BF16: AMD Zen 4
and later, Intel Cooper Lake; AMX: Intel Sapphire Rapids and later); other CPUs only emulate it, more slowly
than float32 (benchmarks/cpu_bf16.py measures both speed and scores). `TUNELAB_CPU_BF16` overrides the CPU
detection: auto (the default), on, off.
"""

from __future__ import annotations

import functools
import os
from contextlib import AbstractContextManager

import torch

from tunelab.errors import UsageError

ENV = "TUNELAB_CPU_BF16"
_CHOICES = {"auto": None, "on": True, "1": True, "true": True, "off": False, "0": False, "false": False}


def cpu_bf16() -> bool:
    """Whether this CPU runs bfloat16 natively (or `TUNELAB_CPU_BF16` says to use it, or not)."""
    value = os.environ.get(ENV, "auto").strip().lower()
    if value not in _CHOICES:
        raise UsageError(f"{ENV}={os.environ[ENV]!r} must be auto, on or off")
    forced = _CHOICES[value]
    return _cpu_has_native_bf16() if forced is None else forced


@functools.cache
def _cpu_has_native_bf16() -> bool:
    cpu = torch.cpu  # torch's own CPUID checks (private names, so look them up defensively)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(check is None for check in checks):
        return False
    return any(check() for check in checks if check is not None)


def bf16_native(dev: torch.device) -> bool:
    """Whether bfloat16 arithmetic is fast on `dev`."""
    if dev.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return dev.type == "cpu" and cpu_bf16()


def use_bf16(dev: torch.device, wanted: bool = True) -> bool:
    """bfloat16 when it is `wanted` (the `bf16` option) and fast on `dev`."""
    return wanted and bf16_native(dev)


def eval_dtype(dev: torch.device, bf16: bool = True) -> torch.dtype:
    """The weights' dtype for zero-shot scoring and generation (no training state to keep in float32)."""
    return torch.bfloat16 if use_bf16(dev, bf16) else torch.float32


def autocast(dev: torch.device, bf16: bool = True) -> AbstractContextManager:
    """bfloat16 autocast on `dev` when `use_bf16`; float32 weights stay as they are."""
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16(dev, bf16))


def dtype_name(dev: torch.device, bf16: bool = True) -> str:
    """What a results file records: bfloat16 or float32."""
    return "bfloat16" if use_bf16(dev, bf16) else "float32"


class Float32Linear(torch.nn.Linear):
    """A linear layer that computes in float32 (float64 stays float64), whatever its weights' dtype and under
    autocast: the output heads (class scores, span starts and ends, the LM head), whose outputs are compared
    with each other. In bfloat16 (8 bits of mantissa) the small difference of two large logits is rounded away
    and near-ties go to the first class (benchmarks/results/cpu-bf16-bf16-heads.json); a head is a small
    share of the arithmetic."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(self.weight.dtype, torch.float32)
        with torch.autocast(x.device.type, enabled=False):
            bias = None if self.bias is None else self.bias.to(dtype)
            return torch.nn.functional.linear(x.to(dtype), self.weight.to(dtype), bias)


def float32_head(module: torch.nn.Module) -> torch.nn.Module:
    """`module` (a torch.nn.Linear) computing in float32 from now on. Its class is swapped rather than the
    module wrapped, so that its parameters, their names and what peft and deepcopy do with it stay as they
    are."""
    if type(module) is torch.nn.Linear:
        module.__class__ = Float32Linear
    return module
