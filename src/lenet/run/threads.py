"""How many CPU threads a job trains with: by default its share of the machine's cores, the same whatever the load.

CPU results depend on the thread count, so the default depends only on the machine and the job's
share of it (cores / jobs running at once, at most ``$SLURM_CPUS_PER_TASK``): the same command gives
the same result on a quiet and on a busy machine. ``device.num_threads=N`` pins a count;
``device.num_threads=probe`` trades that repeatability for speed on a busy machine: a few training
steps of a small probe network with each candidate count, alternately, and the fastest wins (more
threads can be much slower than fewer when another process takes a core: every parallel region of a
step waits for its slowest thread). The count is recorded, and a resumed run keeps its own.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from typing import Any, Callable, Optional

import torch

log = logging.getLogger(__name__)

PROBE_ROUNDS = 3  # alternations of the candidates
PROBE_STEPS = 8  # training steps per candidate and round: some of the scheduler's time slices
PROBE_BATCH = 64
# more threads must be this much faster per step to be chosen: when the machine is loaded, the probe's
# few steps vary, and the cost of too many threads (every step waiting on a descheduled one) is larger
PROBE_MARGIN = 0.85


def available_cores() -> int:
    """Cores this job may use: its CPU affinity where the OS has one, else all; at most SLURM's cpus-per-task."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    return min(cores, int(slurm)) if slurm.isdigit() and int(slurm) > 0 else cores


def thread_budget(parallel_jobs: int) -> int:
    """CPU threads per job so that ``parallel_jobs`` jobs share this machine's cores without oversubscribing."""
    return max(1, available_cores() // parallel_jobs)


def candidates(budget: int) -> list[int]:
    """Thread counts worth trying: the budget, then halving down to one."""
    counts = [budget]
    while counts[-1] > 1:
        counts.append(counts[-1] // 2)
    return counts


def _probe_step() -> Callable[[], None]:
    """One training step (forward, backward, SGD update) of a LeNet-sized network on random data."""
    from lenet.core.models import LeNet5

    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):  # the probe must not move the run's random numbers
        model = LeNet5().to(memory_format=torch.channels_last)
    x = torch.randn(PROBE_BATCH, 1, 32, 32, generator=generator).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (PROBE_BATCH,), generator=generator)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        with torch.no_grad():
            for p in model.parameters():
                p.sub_(p.grad, alpha=1e-3)

    return step


def probe_num_threads(budget: int) -> tuple[int, dict[int, float]]:
    """The fastest of ``candidates(budget)`` on this machine now (by a margin), and each one's median seconds per step."""
    counts = candidates(budget)
    if len(counts) == 1:
        return counts[0], {}
    step = _probe_step()
    seconds: dict[int, list[float]] = {n: [] for n in counts}
    previous = torch.get_num_threads()
    try:
        for n in counts:  # warm-up: the first steps of each thread count allocate and create threads
            torch.set_num_threads(n)
            step()
        for _ in range(PROBE_ROUNDS):
            for n in counts:
                torch.set_num_threads(n)
                start = time.perf_counter()
                for _ in range(PROBE_STEPS):
                    step()
                seconds[n].append((time.perf_counter() - start) / PROBE_STEPS)
    finally:
        torch.set_num_threads(previous)
    medians = {n: statistics.median(s) for n, s in seconds.items()}
    chosen = counts[-1]  # the fewest
    for n in reversed(counts[:-1]):
        if medians[n] < PROBE_MARGIN * medians[chosen]:
            chosen = n
    return chosen, medians


PROBE = "probe"  # device.num_threads=probe


def choose_num_threads(
    setting: int | str | None, device: torch.device, parallel_jobs: int
) -> tuple[int, dict[int, float]]:
    """The thread count to train with: ``setting`` if a number, else the job's share of the cores, or with
    ``probe`` the fastest count within that share (CPU training only; on an accelerator the CPU threads
    only feed it). Returns the count and the probe's seconds per step (empty when it did not run)."""
    if isinstance(setting, int):
        return setting, {}
    budget = thread_budget(parallel_jobs)
    if setting != PROBE or device.type != "cpu":
        return budget, {}
    return probe_num_threads(budget)


def running_elsewhere(samples: int = 5, interval: float = 0.01) -> Optional[float]:
    """How many tasks other than this one are running now (median of a few reads), or None where unknown.

    Linux counts the runnable tasks of the moment (``procs_running`` in ``/proc/stat``, this reader
    included); elsewhere the OS's one-minute load average stands in. Not the average on Linux: it still
    holds a run that just ended, so a user's second run in a row would be told the machine is busy.
    """
    counts = []
    try:
        for i in range(samples):
            if i:
                time.sleep(interval)
            with open("/proc/stat", encoding="ascii") as stat:
                counts.extend(int(line.split()[1]) - 1 for line in stat if line.startswith("procs_running "))
    except (OSError, ValueError, IndexError):
        counts = []
    if counts:
        return float(statistics.median(counts))
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # not every OS reports it
        return None


def busy_machine(threads: int) -> Optional[str]:
    """One line when the work running now leaves a job fewer free cores than its ``threads`` (None otherwise).

    The work counted is every other running task (this sweep's other jobs included): the cores it leaves
    free are what this job's threads share; with fewer, every step waits for a busy core.
    """
    if threads <= 1:
        return None
    others = running_elsewhere()
    cores = available_cores()
    if others is None or cores - others >= threads - 0.5:
        return None
    return (
        f"the machine is busy ({others:g} other tasks running on {cores} cores): this job's {threads} CPU threads "
        "share the cores other work leaves, and every step waits for the slowest (seen here: an epoch 6x slower "
        "with 2 threads than with 1 under a load of 4-6); the default keeps results repeatable, "
        "device.num_threads=1 or device.num_threads=probe (the fastest count now, not repeatable) trade that "
        "for speed"
    )


def set_threads(
    pinned: int | str | None, saved: int | None, device: torch.device, parallel_jobs: int, logger: Any = None
) -> tuple[int, dict]:
    """Set torch's CPU threads: a resumed run's own count ``saved`` (its results depend on it), else as chosen.

    Returns the count and the probe's seconds per step (empty when it did not run). A default count on a
    busy machine is said in one line (``busy_machine``).
    """
    if saved:
        if pinned is not None and pinned != saved:
            log.warning(
                "device.num_threads=%s ignored: the run continues with the %d threads it started with, "
                "whose results it would otherwise not repeat",
                pinned,
                saved,
            )
        pinned = saved
    num_threads, probe = choose_num_threads(pinned, device, parallel_jobs)
    if pinned is None and device.type == "cpu":
        warning = busy_machine(num_threads)
        if warning:
            (logger or log).warning("%s", warning)
    torch.set_num_threads(num_threads)
    return num_threads, probe
