"""What a benchmark result names about the machine and the code that produced it."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def machine(device: str = "cpu") -> dict:
    """The host, its CPU (and GPU, when `device` is one), and the library versions."""
    import torch
    import transformers

    from tunelab.precision import bf16_native

    info = {
        "host": platform.node(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "bf16_native": bf16_native(torch.device(device)),  # tunelab.precision
    }
    try:  # zero-shot classification's detokenizer (`detokenize`), whose rules change between releases
        info["nltk"] = importlib.metadata.version("nltk")
    except importlib.metadata.PackageNotFoundError:
        info["nltk"] = None
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info
