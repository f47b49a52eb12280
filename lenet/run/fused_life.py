"""The life of a fused group: jobs of one sweep that differ only in their seed and optimizer settings, trained as one.

Which jobs can share a program (``fused_key``): the same config but for ``seed`` and the optimizer's scalar
settings, and nothing that ties a run to its own loop (callbacks, a monitored schedule, torch.compile,
trainer.cuda_graphs=true, a model's own parameter groups). ``run_group`` assembles them (the data once, each model from its own seed),
trains them with ``lenet.train.fused``, and records every job in its own folder exactly as a run alone
records itself: metrics.jsonl, summary.json, checkpoint, weights and loggers.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Optional

import torch

from lenet.core.errors import Interrupted, UserError
from lenet.core.metrics import build_metrics, metric_key
from lenet.core.models import build_model, num_params
from lenet.core.optim import build_optimizer, build_scheduler
from lenet.run import signals
from lenet.run.assemble import METRIC_KEYS, assemble_data, resolve_device
from lenet.run.checkpoint import CHECKPOINT_FILE, Checkpointing, check_config, load_checkpoint
from lenet.run.config import RESUME_IGNORES, Config
from lenet.run.context import job_context
from lenet.run.files import remove_stale_temporaries
from lenet.run.job import JobInfo
from lenet.run.lifecycle import fill_results, new_summary
from lenet.run.loggers import build_loggers
from lenet.run.outcome import Outcome, Status, outcome_from_summary, status_of, write_summary
from lenet.run.threads import set_threads
from lenet.run.tracking import Tracking, weights_file
from lenet.train.callbacks import Callbacks
from lenet.train.fused import FusedGroup, MemberState, fit_fused

log = logging.getLogger(__name__)
MEMBER_KEYS = (
    "seed",
    "optimizer.lr",
    "optimizer.weight_decay",
    "optimizer.momentum",
    "optimizer.betas",
    "optimizer.eps",
    "optimizer.alpha",
)


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
    trainer, scheduler = record.get("trainer", {}), record.get("scheduler", {})
    if record.get("callbacks") or trainer.get("compile") or scheduler.get("monitor"):
        return None
    if trainer.get("cuda_graphs") is True:  # asked for its own captured step: a group has one step for all
        return None
    shared = json.loads(json.dumps(record))
    for key in (*MEMBER_KEYS, "logger", "trainer.resume", "trainer.progress"):  # what members may differ in
        _drop(shared, key)
    return json.dumps(shared, sort_keys=True)


class _Groups:
    """A model-like object whose ``parameter_groups()`` are the members': how ``build_optimizer`` makes one group each."""

    def __init__(self, groups: list[dict[str, Any]]):
        self.groups = groups

    def parameter_groups(self) -> list[dict[str, Any]]:
        return self.groups


def _scalar_settings(cfg: Config) -> dict[str, Any]:
    return {k: v for k, v in dict(cfg.optimizer).items() if f"optimizer.{k}" in MEMBER_KEYS}


def _member_logger(member: Member) -> logging.LoggerAdapter:
    """The member's log: its own train.log, and the console with its label in front."""
    logger = logging.getLogger(f"lenet.fused.{member.job.run_dir}")
    handler = logging.FileHandler(member.job.run_dir / "train.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logger.handlers = [handler]
    label = member.job.label or member.job.run_dir.name
    return logging.LoggerAdapter(logger, {}) if not label else _Labelled(logger, label)


class _Labelled(logging.LoggerAdapter):
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[{self.extra}] {msg}", kwargs

    def __init__(self, logger: logging.Logger, label: str):
        super().__init__(logger, label)  # type: ignore[arg-type]


def build_group(members: list[Member], trackings: list[Tracking], summaries: list[dict]) -> tuple[FusedGroup, Any]:
    """The fused group of ``members`` and the loop's settings: each model from its own seed, the data once."""
    first = members[0].cfg
    device = resolve_device(first.device.name)
    models, rngs = [], []
    for member, tracking in zip(members, trackings):
        torch.manual_seed(member.cfg.seed)  # as its own run initialises it
        model = build_model(member.cfg.model, in_channels=len(first.data.mean), num_classes=first.data.num_classes)
        models.append(model.to(device))
        rngs.append(torch.get_rng_state())
        tracking.loggers = build_loggers(
            member.cfg.logger,
            {
                "run_dir": member.job.run_dir,
                "config": member.record,
                "sweep": member.job.sweep_name,
                "label": member.job.label or None,
                "model": model,
            },
        )
    metrics = build_metrics(list(first.trainer.metrics))
    settings = assemble_data(first, members[0].job, metrics)
    params = [{n: p.detach().clone().requires_grad_() for n, p in m.named_parameters()} for m in models]
    groups = [{"params": list(p.values()), **_scalar_settings(m.cfg)} for p, m in zip(params, members)]
    optimizer = build_optimizer(_Groups(groups), first.optimizer, device)
    row_keys = METRIC_KEYS + [metric_key(name) for name in metrics if metric_key(name) not in METRIC_KEYS]
    steps_per_epoch = math.ceil(len(settings.train) / first.trainer.batch_size)
    scheduler = build_scheduler(optimizer, first.scheduler, first.trainer.epochs, steps_per_epoch, row_keys)
    from lenet.core.losses import build_loss

    template = models[0]
    for p in template.parameters():
        p.requires_grad_(False)
    group = FusedGroup(template, [], optimizer, scheduler, build_loss(first.loss))
    for i, (member, p, rng) in enumerate(zip(members, params, rngs)):
        group.members.append(
            MemberState(
                group,
                i,
                p,
                torch.Generator().manual_seed(member.cfg.seed),
                rng,
                run_dir=member.job.run_dir,
                config=member.record,
            )
        )
        summaries[i].update(
            device=str(device), num_params=num_params(models[i]), image_size=list(settings.train.image_size)
        )
    return group, settings


def _resume(group: FusedGroup, members: list[Member]) -> Optional[float]:
    """Continue every member from its checkpoint; None when none has one. All must have finished the same epochs."""
    states = [load_checkpoint(m.job.run_dir / CHECKPOINT_FILE) for m in members]
    if all(s is None for s in states):
        return None
    epochs = {len(s["history"]) if s else 0 for s in states}
    if len(epochs) > 1:
        raise UserError(
            f"the group's jobs stopped after different epochs ({sorted(epochs)}): resume them with "
            "another launcher, one by one"
        )
    for member, state, m in zip(group.members, states, members):
        check_config(state, m.job.run_dir / CHECKPOINT_FILE, m.record, RESUME_IGNORES)
        member.load_state_dict(state)
    shared = dict(states[0]["scheduler"])
    for key, value in shared.items():
        if isinstance(value, list) and len(value) == 1:
            shared[key] = [s["scheduler"][key][0] for s in states]
    group.scheduler.scheduler.load_state_dict(shared)
    group.step = int(states[0].get("step", 0))
    return max(s["wall_seconds"] for s in states)


def run_group(members: list[Member]) -> list[Outcome | BaseException]:
    """Train ``members`` together; each one's outcome (or the exception it ended with), in order.

    On a GPU they are one program (``lenet.train.fused``: one step for all, parameters stacked). On the CPU,
    where the stacked step's grouped convolutions are slower than the members' own steps (docs/performance.md),
    each member is a run of its own on a thread of its own, with the process's cores shared out among them:
    the process, the data in memory and the launcher are shared, the results are those of runs alone.
    """
    if resolve_device(members[0].cfg.device.name).type == "cuda":
        return _run_vmapped(members)
    return _run_threaded(members)


def _run_threaded(members: list[Member]) -> list[Outcome | BaseException]:
    from concurrent.futures import ThreadPoolExecutor

    from lenet.run.context import set_job_context
    from lenet.run.lifecycle import run_job
    from lenet.run.threads import available_cores

    # a model that draws from the global generator while it trains (dropout) would draw in the threads' order
    workers = 1 if any(_draws_while_training(m.cfg) for m in members) else min(len(members), available_cores())
    previous = job_context()
    set_job_context(parallel_jobs=max(workers, previous.parallel_jobs))  # each member its share of the cores
    loggers = [_member_logger(m) for m in members]

    def one(pair: tuple[Member, Any]) -> Outcome | BaseException:
        member, logger = pair
        try:
            return run_job(member.cfg, member.job, member.record, logger=logger)
        except Exception as e:  # recorded in its own summary; the others go on
            if not isinstance(e, (UserError, Interrupted)):
                logger.exception("job failed")
            return e

    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(one, zip(members, loggers)))
    finally:
        set_job_context(parallel_jobs=previous.parallel_jobs)
        for logger in loggers:
            for handler in logger.logger.handlers:
                handler.close()


def _draws_while_training(cfg: Config) -> bool:
    model = build_model(cfg.model, in_channels=len(cfg.data.mean), num_classes=cfg.data.num_classes)
    return any(isinstance(m, (torch.nn.Dropout, torch.nn.Dropout2d, torch.nn.AlphaDropout)) for m in model.modules())


def _run_vmapped(members: list[Member]) -> list[Outcome | BaseException]:
    started = time.perf_counter()
    summaries = [new_summary(m.cfg, m.job) for m in members]
    loggers = [_member_logger(m) for m in members]
    for m in members:
        remove_stale_temporaries(m.job.run_dir)
    trackings = [
        Tracking(m.job.run_dir, m.cfg.trainer.epochs, weights_file(m.job.run_dir, m.cfg.data.name), logger=lg)
        for m, lg in zip(members, loggers)
    ]
    results: list[Outcome | BaseException | None] = [None] * len(members)
    group, checkpointings, wall_before = None, [], 0.0
    try:
        with signals.recorded():
            signals.raise_if_pending()
            group, settings = build_group(members, trackings, summaries)
            resume = any(m.cfg.trainer.resume for m in members) or job_context().requeueable
            wall_before = (_resume(group, members) if resume else None) or 0.0
            threads, _ = set_threads(
                members[0].cfg.device.num_threads, None, settings.train.images.device, job_context().parallel_jobs
            )
            for member, summary in zip(group.members, summaries):
                summary.update(
                    num_threads=threads,
                    resumed_from_epoch=member.epoch or None,
                    setup_seconds=time.perf_counter() - started,
                    fused_with=len(members),
                )
                write_summary(member.run_dir, summary)
            checkpointings = [
                Checkpointing(m.job.run_dir / CHECKPOINT_FILE, m.record, threads, wall_before, member.epoch)
                for m, member in zip(members, group.members)
            ]
            own = {
                i: Callbacks({"checkpoint": c, "tracking": t})
                for i, (c, t) in enumerate(zip(checkpointings, trackings))
            }

            def diverged(member: MemberState, error: Exception) -> None:
                results[member.index] = _end(
                    member,
                    summaries[member.index],
                    trackings[member.index],
                    checkpointings[member.index],
                    error,
                    members[member.index],
                )

            fit_fused(group, settings, Callbacks({"signals": signals.StopOnSignal()}), own, diverged)
        for member in group.alive:
            i = member.index
            fill_results(summaries[i], member, member.epoch)
            trackings[i].on_fit_end(member, summaries[i])
            summaries[i]["status"] = Status.completed
            results[i] = _finish(summaries[i], trackings[i], 0, started, wall_before, members[i])
    except BaseException as e:
        for i, m in enumerate(members):
            if results[i] is None:
                member = group.members[i] if group else None
                results[i] = _end(
                    member, summaries[i], trackings[i], checkpointings[i] if checkpointings else None, e, m
                )
        if not isinstance(e, Exception):
            raise
    finally:
        for lg in loggers:
            for handler in lg.logger.handlers:
                handler.close()
    return results  # type: ignore[return-value]


def _end(
    member: Optional[MemberState],
    summary: dict,
    tracking: Tracking,
    checkpointing: Optional[Checkpointing],
    error: BaseException,
    m: Member,
) -> Outcome | BaseException:
    """Record how a member ended with ``error``; the error as its result."""
    status, message, exit_code = status_of(error)
    kept = checkpointing.epochs_saved if checkpointing else 0
    summary.update(
        status=status,
        error=message
        if not isinstance(error, Exception) or isinstance(error, UserError)
        else f"{type(error).__name__}: {error}",
    )
    if member is not None:
        fill_results(summary, member, kept)
    _finish(summary, tracking, exit_code, time.perf_counter(), 0.0, m)
    return error


def _finish(
    summary: dict, tracking: Tracking, exit_code: int, started: float, wall_before: float, m: Member
) -> Outcome:
    import datetime

    summary.update(
        wall_seconds=wall_before + time.perf_counter() - started,
        finished_at=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    )
    tracking.finish(summary, exit_code)
    return outcome_from_summary(m.job.run_dir, summary)
