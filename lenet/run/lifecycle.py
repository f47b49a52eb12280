"""A run's life: assemble what it trains with, continue it from its checkpoint if asked, fit, and record how it ended.

``run_job`` is the whole of it. The loop (``lenet.train.loop.fit``) does the training; the harness adds
three callbacks to the run's own: ``StopOnSignal`` (Ctrl-C, SIGTERM), ``Checkpointing`` and ``Tracking``
(metrics.jsonl, weights, loggers). The summary is finished and written however the run ends.
"""

from __future__ import annotations

import errno
import logging
import sys
import time
from typing import Any, Optional

import torch

from lenet.core.errors import CheckpointError, DivergedError, Pruned
from lenet.core.models import num_params
from lenet.run import signals
from lenet.run.assemble import METRIC_KEYS, assemble
from lenet.run.checkpoint import CHECKPOINT_FILE, Checkpointing, check_config, load_checkpoint, restore
from lenet.run.config import RESUME_IGNORES, Config
from lenet.run.context import job_context
from lenet.run.files import remove_stale_temporaries
from lenet.run.job import JobInfo
from lenet.run.outcome import (
    DiskFull,
    Outcome,
    Status,
    Summary,
    SummaryError,
    now,
    outcome_from_summary,
    read_summary,
    status_of,
    write_summary,
)
from lenet.run.progress import ProgressBar
from lenet.run.threads import set_threads
from lenet.run.tracking import Tracking, weights_file
from lenet.train.loop import FitSettings, fit
from lenet.train.state import TrainState

log = logging.getLogger(__name__)


def run_job(cfg: Config, job: JobInfo, config_record: dict[str, Any], logger: Any = None) -> Outcome:
    """Train and evaluate as ``cfg`` says, recording into ``job.run_dir``; how it ended.

    The summary and the loggers are finished also when training fails or is interrupted; the
    exception is then raised again for the caller to report (a pruned run returns, status pruned).
    ``logger`` is where the run's lines go (by default the process's log: console and train.log).
    """
    resume = cfg.trainer.resume or job_context().requeueable  # a requeued job continues where it stopped
    kept = _kept_if_completed(cfg, job, config_record) if resume else None
    if kept is not None:
        return kept
    started, first_in_process = time.perf_counter(), _first_job_of_process()
    summary = new_summary(cfg, job)
    remove_stale_temporaries(job.run_dir)
    tracking = Tracking(job.run_dir, cfg.trainer.epochs, weights_file(job.run_dir, cfg.data.name), logger=logger)
    run: Optional[TrainState] = None
    checkpointing: Optional[Checkpointing] = None
    exit_code, keep_summary, wall_before = 1, False, 0.0
    try:
        with signals.recorded():
            signals.raise_if_pending()  # received during start-up or between a sweep's jobs
            run, settings = assemble(cfg, job, config_record, tracking)
            summary.update(
                device=str(settings.train.images.device),
                num_params=num_params(run.model),
                image_size=list(settings.train.image_size),
            )
            # a refused resume leaves the summary of the run it would continue as it was
            keep_summary = resume and (job.run_dir / CHECKPOINT_FILE).exists()
            threads, wall_before = _continue(run, settings, cfg, job, config_record, resume, summary)
            keep_summary = False
            write_summary(job.run_dir, summary)  # running: its blocks are kept for the end, however it ends
            summary.update(
                setup_seconds=time.perf_counter() - started,
                startup_seconds=seconds_since_process_start() if first_in_process else None,
            )
            checkpointing = Checkpointing(job.run_dir / CHECKPOINT_FILE, config_record, threads, wall_before, run.epoch)
            harness = {
                "signals": signals.StopOnSignal(),
                **_progress(cfg, settings),
                "checkpoint": checkpointing,
                "tracking": tracking,
            }
            fit(run, settings, run.callbacks.then(harness))
            fill_results(summary, run, run.epoch)
            run.callbacks.then({"tracking": tracking}).on_fit_end(run, summary)
        summary["status"], exit_code = Status.completed, 0
    except BaseException as e:
        error = _explained(e, cfg, job, run)
        summary["status"], summary["error"], exit_code = status_of(error)
        if isinstance(error, Pruned):
            log.info("%s", error)
        elif error is e:
            raise
        else:
            raise error from None
    finally:
        fill_results(summary, run, checkpointing.epochs_saved if checkpointing else 0)  # what a resume keeps
        summary.update(wall_seconds=wall_before + time.perf_counter() - started, finished_at=now())
        tracking.finish(summary, exit_code, write=not keep_summary)
    return outcome_from_summary(job.run_dir, summary)


def _continue(
    run: TrainState,
    settings: FitSettings,
    cfg: Config,
    job: JobInfo,
    config_record: dict[str, Any],
    resume: bool,
    summary: Summary,
) -> tuple[int, float]:
    """Set the CPU threads, and continue ``run`` from its checkpoint when resuming; (threads, wall seconds before)."""
    path = job.run_dir / CHECKPOINT_FILE
    checkpoint = load_checkpoint(path) if resume else None
    threads, probe = set_threads(
        cfg.device.num_threads,
        checkpoint and checkpoint.get("num_threads"),
        settings.train.images.device,
        job_context().parallel_jobs,
    )
    summary.update(num_threads=threads, num_threads_probe={str(n): s for n, s in probe.items()} or None)
    if checkpoint is None:
        if cfg.trainer.resume:
            log.info("trainer.resume=true but %s does not exist: starting from epoch 1", path)
        return threads, 0.0
    restore(run, checkpoint, path, config_record, RESUME_IGNORES)
    summary["resumed_from_epoch"] = run.epoch
    log.info("resuming from %s after epoch %d", path, run.epoch)
    return threads, checkpoint["wall_seconds"]


def _progress(cfg: Config, settings: FitSettings) -> dict[str, ProgressBar]:
    shown = sys.stderr.isatty() if cfg.trainer.progress is None else cfg.trainer.progress
    return {"progress": ProgressBar(cfg.trainer.epochs, len(settings.train), cfg.trainer.batch_size)} if shown else {}


def _kept_if_completed(cfg: Config, job: JobInfo, config_record: dict[str, Any]) -> Optional[Outcome]:
    """On resume, the outcome of a run that completed with this config: it is kept as it is."""
    try:
        previous = read_summary(job.run_dir)
    except SummaryError as e:  # its checkpoint still says how far it got
        log.warning("%s: continuing from its checkpoint", e)
        return None
    if not (previous and previous["status"] == Status.completed and previous.get("epochs") == cfg.trainer.epochs):
        return None
    # the same run? its checkpoint says with which config it was made
    checkpoint_path = job.run_dir / CHECKPOINT_FILE
    checkpoint = load_checkpoint(checkpoint_path)
    if checkpoint is None:
        raise CheckpointError(
            f"{job.run_dir} completed before, but its {CHECKPOINT_FILE} is gone, so whether it was made with this "
            "config cannot be checked: restore it, or delete the folder to run the job again"
        )
    check_config(checkpoint, checkpoint_path, config_record, RESUME_IGNORES)
    log.info(
        "%s completed before: kept as it is (final test accuracy %.2f%%)", job.run_dir, 100 * previous["final_test_acc"]
    )
    return outcome_from_summary(job.run_dir, previous)


def new_summary(cfg: Config, job: JobInfo) -> Summary:
    """The summary of a job about to start: its labels, and None for every result."""
    return Summary(
        epochs=cfg.trainer.epochs,
        overrides=list(job.overrides),
        model=cfg.model.get("name") or job.label_of("model", cfg.model),
        pooling=cfg.model.get("pooling"),
        loss=job.label_of("loss", cfg.loss),
        optimizer=job.label_of("optimizer", cfg.optimizer),
        scheduler=job.label_of("scheduler", cfg.scheduler),
        callbacks=sorted(cfg.callbacks),
        dataset=cfg.data.name,
        seed=cfg.seed,
        started_at=now(),
        torch_version=torch.__version__,
    )


def fill_results(summary: Summary, run: Optional[TrainState], epochs: int) -> None:
    """The results of the run's first ``epochs`` epochs into its summary: accuracies, losses, extra metrics."""
    if run is None or not run.history[:epochs]:
        return
    history = run.history[:epochs]
    best = max(history, key=lambda row: row["test_acc"])
    summary.update(
        final_test_acc=history[-1]["test_acc"],
        final_test_loss=history[-1]["test_loss"],
        final_train_loss=history[-1]["train_loss"],
        best_test_acc=best["test_acc"],
        best_epoch=best["epoch"],
        epochs_completed=len(history),
        seconds_per_epoch=sum(r["seconds"] for r in history) / len(history),
        stopped_early=run.stop_reason if run.epoch < summary["epochs"] else None,
        eval_weights=run.eval_weights,
        **run.notes,
    )
    summary.update({f"final_{key}": value for key, value in history[-1].items() if key not in METRIC_KEYS})


def _explained(error: BaseException, cfg: Config, job: JobInfo, run: Optional[TrainState]) -> BaseException:
    """``error``, or the same error saying what is kept and what to do: for a diverged run, and a full disk."""
    checkpoint = job.run_dir / CHECKPOINT_FILE
    if isinstance(error, DivergedError) and run is not None:
        kept = (
            f"the checkpoint of epoch {run.epoch} is kept in {checkpoint}"
            if run.history
            else "no checkpoint was written"
        )
        return DivergedError(
            f"{error}; {kept}; lower optimizer.lr (now {cfg.optimizer.get('lr')}) or change the schedule"
        )
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        kept = (
            f"the checkpoint of the last finished epoch is kept in {checkpoint}"
            if checkpoint.is_file()
            else "no checkpoint was written"
        )
        return DiskFull(
            f"no space left on the disk of {job.run_dir} ({error.strerror}); {kept}; free some space and "
            f"continue with trainer.resume=true hydra.run.dir={job.run_dir}"
        )
    return error


def seconds_since_process_start() -> Optional[float]:
    """Wall time since this process started (Linux; None elsewhere), interpreter start-up included."""
    import os

    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


_jobs_started = 0


def _first_job_of_process() -> bool:
    global _jobs_started
    _jobs_started += 1
    return _jobs_started == 1
