"""The machine a benchmark ran on, in one line: every figure names it."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def describe() -> str:
    """CPU model, cores and ``torch.backends.cpu.get_cpu_capability()`` (and the GPU, if any)."""
    import torch

    model = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f"; GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{model}, {os.cpu_count()} cores, get_cpu_capability() = {torch.backends.cpu.get_cpu_capability()}{gpu}"
