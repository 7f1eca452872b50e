"""The machine a bench line was measured on, as a dict every bench prints with its figures (and
`rlhf verify` with its verdict).

Two 2-core sessions of this project ran the same pipeline code's `make demo` flow in 7.2 and 3.7
minutes, and `ppo_vs_trl` read 1.67-1.74 on one and 2.08 on the other: a figure without its CPU
cannot be compared with another. The CPU also sets which kernels torch picks (its "capability"),
and so how floats round: the demo's metrics for one seed differ between two such CPUs.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
CPUINFO_FIELDS = {"model name": "name", "cpu family": "family", "model": "model"}


def cpu_model(cpuinfo: Path = CPUINFO) -> str:
    """ "AMD EPYC (family 26, model 2)" from /proc/cpuinfo's first processor; platform's guess elsewhere.

    Virtual machines often report only the vendor's line name, so family and model go with it: they
    tell one generation from the next where the name does not."""
    try:
        lines = cpuinfo.read_text().split("\n\n", 1)[0].splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    found = {}
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() in CPUINFO_FIELDS:
            found[CPUINFO_FIELDS[key.strip()]] = value.strip()
    name = found.get("name") or platform.processor() or platform.machine()
    if "family" in found and "model" in found:
        return f"{name} (family {found['family']}, model {found['model']})"
    return name


def machine() -> dict:
    """{"cpu", "cores", "torch_cpu_capability", "torch_threads"} of this process."""
    import torch

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        # The threads each torch process runs (OMP_NUM_THREADS where set, else torch's default).
        "torch_threads": torch.get_num_threads(),
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory since it started, in MiB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    kilobytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform == "darwin" else 1)
    return kilobytes / 1024
