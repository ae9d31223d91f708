"""Which float type runs the matrix work: bfloat16 where it is fast and measured to score as float32 does.

bfloat16 is fast on GPUs that support it and on CPUs with native bfloat16 instructions (AVX512-BF16: AMD Zen 4
and later, Intel Cooper Lake; AMX: Intel Sapphire Rapids and later); other CPUs only emulate it, more slowly
than float32. On GPUs tunelab uses it everywhere: bfloat16 weights for zero-shot, bfloat16 autocast for
fine-tuning and evaluation. On CPUs, measured on a 2-core Zen 4 (benchmarks/results/cpu-bf16*.json):
- zero-shot with bfloat16 weights is 1.6-2.1x faster and scores as float32 does, so it is the default where
  the CPU computes bfloat16 natively;
- fine-tuning under bfloat16 autocast trains 1.43-1.51x faster, but its SST-2 classifiers scored 0.38 points
  lower on average over six seeds (44 dev sentences lost, 24 gained, McNemar p 0.02: cpu-bf16-pooled.json),
  so fine-tuning and the evaluation of fine-tuned models stay float32 on CPUs unless `TUNELAB_CPU_BF16=on`.
`TUNELAB_CPU_BF16`: auto (the default, as above), on (bfloat16 for all of it, even where only emulated), off
(float32 for all of it). The `bf16` options (`--no-bf16`) turn bfloat16 off on any device.
"""

from __future__ import annotations

import functools
import os
from contextlib import AbstractContextManager

import torch

from tunelab.errors import UsageError

ENV = "TUNELAB_CPU_BF16"
_CHOICES = {"auto": None, "on": True, "1": True, "true": True, "off": False, "0": False, "false": False}


def cpu_setting() -> bool | None:
    """`TUNELAB_CPU_BF16`: True (on), False (off) or None (auto)."""
    value = os.environ.get(ENV, "auto").strip().lower()
    if value not in _CHOICES:
        raise UsageError(f"{ENV}={os.environ[ENV]!r} must be auto, on or off")
    return _CHOICES[value]


@functools.cache
def _cpu_has_native_bf16() -> bool:
    cpu = torch.cpu  # torch's own CPUID checks (private names, so look them up defensively)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(check is None for check in checks):
        return False
    return any(check() for check in checks if check is not None)


def bf16_native(dev: torch.device) -> bool:
    """Whether `dev` computes bfloat16 natively (a CPU's check, not its override)."""
    if dev.type == "cuda":
        # compute capability 8 (Ampere) and later; earlier cards only emulate bfloat16 (slowly), which
        # torch.cuda.is_bf16_supported() counts by default. ROCm GPUs all have it.
        return bool(torch.version.hip) or torch.cuda.get_device_capability(dev)[0] >= 8
    return dev.type == "cpu" and _cpu_has_native_bf16()


def bf16_weights(dev: torch.device, wanted: bool = True) -> bool:
    """Zero-shot in bfloat16 weights: where `wanted` (the `bf16` option) and native, unless overridden."""
    setting = cpu_setting() if dev.type == "cpu" else None
    return wanted and (bf16_native(dev) if setting is None else setting)


def bf16_autocast(dev: torch.device, wanted: bool = True) -> bool:
    """Fine-tuning and evaluation under bfloat16 autocast: where `wanted` on GPUs that support it; on CPUs
    only with TUNELAB_CPU_BF16=on (the module's docstring says why)."""
    if dev.type == "cpu":
        return wanted and cpu_setting() is True
    return wanted and bf16_native(dev)


def eval_dtype(dev: torch.device, bf16: bool = True) -> torch.dtype:
    """The weights' dtype for zero-shot scoring and generation (no training state to keep in float32)."""
    return torch.bfloat16 if bf16_weights(dev, bf16) else torch.float32


def autocast(dev: torch.device, bf16: bool = True) -> AbstractContextManager:
    """bfloat16 autocast on `dev` when `bf16_autocast`; float32 weights stay as they are."""
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16_autocast(dev, bf16))


def autocast_dtype(dev: torch.device, bf16: bool = True) -> str:
    """What an evaluation's results record: bfloat16 (autocast) or float32."""
    return "bfloat16" if bf16_autocast(dev, bf16) else "float32"


class Float32Linear(torch.nn.Linear):
    """A linear layer that computes in float32 (float64 stays float64), whatever its weights' dtype and under
    autocast: the output heads (class scores, span starts and ends, the LM head), whose outputs are compared
    with each other. In bfloat16 (8 bits of mantissa) the small difference of two large logits rounds away;
    with float32 heads, bfloat16 zero-shot changed 13 of 200 SQuAD answers, not 24 (results/cpu-bf16.json
    against cpu-bf16-bf16-heads.json). A head is a small share of the arithmetic."""

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
