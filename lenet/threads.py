"""How many CPU threads a job uses: its share of the cores this process may run on."""

from __future__ import annotations

import os


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity where the OS has one (Linux), else all of them."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_num_threads(parallel_jobs: int) -> int:
    """CPU threads per job so that ``parallel_jobs`` jobs share this machine's cores without oversubscribing."""
    return max(1, available_cores() // parallel_jobs)
