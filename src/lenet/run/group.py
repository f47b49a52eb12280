"""Jobs of one sweep trained together (``hydra/launcher=fused``): which may, and how; each still lives the one life.

Jobs may share a program when they share everything but their seed and the optimizer's scalar settings
(``fused_key``), their model draws no random numbers in its forward (``lenet.training.fused``), and nothing
ties a run to its own step (torch.compile, ``trainer.cuda_graphs=true``). ``run_group`` trains them: each
member is a ``lenet.run.lifecycle.Life`` (assembled by the one assembler, the data loaded once per
process, its own callbacks, checkpoints, summary and loggers), and

- ``vmapped`` (the default on a GPU): the lives go through one ``fit_group`` whose steps are one program
  for all (``lenet.training.fused.VmappedSteps``);
- ``threads`` (the default elsewhere, where grouped convolutions are slower than the members' own steps:
  docs/performance.md): each member is a run of its own on a thread of its own, the process's cores
  shared out among them.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Optional

from lenet.core.errors import Interrupted, UserError
from lenet.run.assemble import resolve_device
from lenet.run.config import Config
from lenet.run.context import job_context, set_job_context
from lenet.run.job import JobInfo
from lenet.run.lifecycle import Life, run_lives
from lenet.run.outcome import Outcome
from lenet.run.threads import available_cores
from lenet.training.fused import VmappedSteps

log = logging.getLogger(__name__)
# what the members of a group may differ in: their seed and the optimizer's scalar settings, and what does not
# change a run (its loggers, its progress bar, how it was asked to run)
MEMBER_KEYS = (
    "seed",
    "optimizer.lr",
    "optimizer.weight_decay",
    "optimizer.momentum",
    "optimizer.betas",
    "optimizer.eps",
    "optimizer.alpha",
    "logger",
    "trainer.resume",
    "trainer.progress",
)
MODES = ("auto", "vmapped", "threads")


@dataclass
class Member:
    """One job of a group: its typed config, its place, its resolved config record."""

    cfg: Config
    job: JobInfo
    record: dict[str, Any]


def _drop(tree: dict[str, Any], dotted: str) -> None:
    *path, last = dotted.split(".")
    for part in path:
        tree = tree.get(part) if isinstance(tree, dict) else None
        if tree is None:
            return
    if isinstance(tree, dict):
        tree.pop(last, None)


def fused_key(record: dict[str, Any]) -> Optional[str]:
    """What a job shares with the jobs it can train with, as a string; None for a job that trains alone."""
    trainer = record.get("trainer", {})
    if trainer.get("compile") or trainer.get("cuda_graphs") is True:  # a step of its own
        return None
    shared = json.loads(json.dumps(record))
    for key in MEMBER_KEYS:
        _drop(shared, key)
    return json.dumps(shared, sort_keys=True)


def run_group(members: list[Member], mode: str = "auto", loggers: Optional[list[Any]] = None) -> list[Any]:
    """Train ``members`` together; each one's outcome (or the exception it ended with), in order."""
    loggers = loggers or [None] * len(members)
    if mode == "auto":
        mode = "vmapped" if resolve_device(members[0].cfg.device.name).type == "cuda" else "threads"
    if mode == "vmapped":
        lives = [Life(m.cfg, m.job, m.record, logger) for m, logger in zip(members, loggers)]
        try:
            run_lives(lives, steps=lambda: VmappedSteps(lives[0].settings))
        except (Interrupted, KeyboardInterrupt):
            pass  # every life recorded it
        return [life.error if life.error is not None else life.outcome for life in lives]
    return _threads(members, loggers)


def _threads(members: list[Member], loggers: list[Any]) -> list[Any]:
    from lenet.run.lifecycle import run_job

    workers = min(len(members), available_cores())
    previous = job_context()
    set_job_context(parallel_jobs=max(workers, previous.parallel_jobs))  # each member its share of the cores

    def one(pair: tuple[Member, Any]) -> Outcome | BaseException:
        member, logger = pair
        try:
            return run_job(member.cfg, member.job, member.record, logger=logger)
        except Exception as e:  # recorded in its own summary; the others go on
            if not isinstance(e, (UserError, Interrupted)):
                (logger or log).exception("job failed")
            return e

    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(one, zip(members, loggers)))
    finally:
        set_job_context(parallel_jobs=previous.parallel_jobs)
