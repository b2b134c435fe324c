"""What machine a benchmark ran on: every benchmark prints this line and stores it in its JSON, because the
project's machines differ (some AMD EPYC hosts have AVX2 only, others AVX-512 with native bf16)."""

from __future__ import annotations

import os
import platform

import torch

#: The CPU features that decide float32 and bf16 matrix-product speed.
FEATURES = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def describe() -> dict:
    model = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return {"cpu": model, "cpu_features": [f for f in FEATURES if f in flags], "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def line(info: dict | None = None) -> str:
    info = info or describe()
    return (f"machine: {info['cpu']} ({info['cores']} cores; {', '.join(info['cpu_features']) or 'no AVX2'}; "
            f"torch {info['torch']}, {info['torch_threads']} threads)")
