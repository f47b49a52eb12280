"""A run's life: assemble what it trains with, continue it from its checkpoint if asked, fit, and record how it ended.

``Life`` is one run's, from its first record to its summary; ``run_lives`` drives one life, or the lives
of a fused group together through the same ``fit`` with the same callbacks, so a run's life has one home.
The loop (``lenet.training.loop``) does the training; the harness adds its callbacks to the run's own:
``StopOnSignal`` (Ctrl-C, SIGTERM), ``BestWeights`` (best.pth), ``Checkpointing`` and ``Tracking``
(metrics.jsonl, weights, loggers). The summary is finished and written however the run ends.
"""

from __future__ import annotations

import errno
import logging
import sys
import time
from typing import Any, Callable, Optional, Sequence

import torch

from lenet.core.errors import CheckpointError, DivergedError, Pruned
from lenet.core.metrics import best_row
from lenet.core.models import num_params
from lenet.run import signals
from lenet.run.assemble import METRIC_KEYS, assemble
from lenet.run.checkpoint import CHECKPOINT_FILE, BestWeights, Checkpointing, check_config, load_checkpoint, restore
from lenet.run.config import RESUME_IGNORES, Config
from lenet.run.context import job_context
from lenet.run.files import remove_stale_temporaries
from lenet.run.job import JobInfo
from lenet.run.loggers import STEP_LOGGING_KEY
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
from lenet.run.tracking import BEST_WEIGHTS, StepLogging, Tracking, weights_file
from lenet.training.callbacks import Callbacks
from lenet.training.loop import FitSettings, Steps, fit_group
from lenet.training.state import TrainState

log = logging.getLogger(__name__)


def run_job(cfg: Config, job: JobInfo, config_record: dict[str, Any], logger: Any = None) -> Outcome:
    """Train and evaluate as ``cfg`` says, recording into ``job.run_dir``; how it ended.

    The summary and the loggers are finished also when training fails or is interrupted; the
    exception is then raised again for the caller to report (a pruned run returns, status pruned).
    ``logger`` is where the run's lines go (by default the process's log: console and train.log).
    """
    life = Life(cfg, job, config_record, logger)
    run_lives([life])
    if life.error is not None and not isinstance(life.error, Pruned):
        raise life.error
    return life.outcome


class Life:
    """One run's life: its summary, its tracking, what it trains with, and how it ended (``outcome``, ``error``)."""

    def __init__(self, cfg: Config, job: JobInfo, config_record: dict[str, Any], logger: Any = None):
        self.cfg, self.job, self.record = cfg, job, config_record
        self.log = logger or log  # where its lines go: the run's console and train.log
        self.resume = cfg.trainer.resume or job_context().requeueable  # a requeued job continues where it stopped
        self.started, self.first_in_process = time.perf_counter(), _first_job_of_process()
        self.summary = new_summary(cfg, job)
        self.tracking = Tracking(
            job.run_dir, cfg.trainer.epochs, weights_file(job.run_dir, cfg.data.name), logger=logger
        )
        self.run: Optional[TrainState] = None
        self.settings: Optional[FitSettings] = None
        self.callbacks = Callbacks()
        self.checkpointing: Optional[Checkpointing] = None
        self.wall_before = 0.0
        self.keep_summary = False  # a refused resume leaves the summary of the run it would continue as it was
        self.error: Optional[BaseException] = None
        self.outcome: Optional[Outcome] = None

    def kept(self) -> bool:
        """On resume, whether the run completed before with this config: then it is kept as it is (``outcome``)."""
        kept = _kept_if_completed(self.cfg, self.job, self.record, self.log) if self.resume else None
        self.outcome = kept
        return kept is not None

    def start(self, progress: bool = True) -> None:
        """Assemble the run, continue it from its checkpoint if asked, write its running summary, add the harness."""
        remove_stale_temporaries(self.job.run_dir)
        assembly = assemble(self.cfg, self.job, self.record, self.tracking)
        self.run, self.settings = assembly.run, assembly.settings
        self.summary.update(
            device=str(self.settings.train.images.device),
            num_params=num_params(self.run.model),
            image_size=list(self.settings.train.image_size),
            split={
                name: len(s)
                for name, s in (
                    ("train", self.settings.train),
                    ("val", self.settings.val),
                    ("test", self.settings.test),
                )
                if s is not None
            },
        )
        self.keep_summary = self.resume and (self.job.run_dir / CHECKPOINT_FILE).exists()
        threads = self._continue()
        self.keep_summary = False
        write_summary(self.job.run_dir, self.summary)  # running, from now on
        self.summary.update(
            setup_seconds=time.perf_counter() - self.started,
            startup_seconds=seconds_since_process_start() if self.first_in_process else None,
        )
        best = best_key(self.cfg, self.run.row_keys, self.log)
        self.summary["selected_on"] = best
        self.checkpointing = Checkpointing(
            self.job.run_dir / CHECKPOINT_FILE, self.record, threads, self.wall_before, self.run.epoch
        )
        harness: dict[str, Any] = {"signals": signals.StopOnSignal()}
        if progress:
            harness.update(_progress(self.cfg, self.settings))
        if best is not None:  # the best epoch's weights, written before the checkpoint that counts the epoch
            harness["best"] = BestWeights(self.job.run_dir / BEST_WEIGHTS, best)
        harness.update(checkpoint=self.checkpointing, tracking=self.tracking)
        every = self.cfg.logger.get(STEP_LOGGING_KEY, 0)
        if every and self.tracking.loggers.loggers:
            harness["step_logging"] = StepLogging(self.tracking.loggers, every)
        self.callbacks = self.run.callbacks.then(harness)

    def _continue(self) -> int:
        """Set the CPU threads, and continue the run from its checkpoint when resuming; the thread count."""
        path = self.job.run_dir / CHECKPOINT_FILE
        checkpoint = load_checkpoint(path) if self.resume else None
        threads, probe = set_threads(
            self.cfg.device.num_threads,
            checkpoint and checkpoint.get("num_threads"),
            self.settings.train.images.device,
            job_context().parallel_jobs,
            self.log,
        )
        self.summary.update(num_threads=threads, num_threads_probe={str(n): s for n, s in probe.items()} or None)
        if checkpoint is None:
            if self.cfg.trainer.resume:
                self.log.info("trainer.resume=true but %s does not exist: starting from epoch 1", path)
            return threads
        restore(self.run, checkpoint, path, self.record, RESUME_IGNORES)
        self.summary["resumed_from_epoch"] = self.run.epoch
        self.log.info("resuming from %s after epoch %d", path, self.run.epoch)
        self.wall_before = checkpoint["wall_seconds"]
        return threads

    def complete(self) -> None:
        """The run trained all it was asked to: its results, then the callbacks' and the tracking's ends."""
        fill_results(self.summary, self.run, self.run.epoch)
        self.callbacks.on_fit_end(self.run, self.summary)  # the run's own callbacks, then the harness's
        self.summary["status"] = Status.completed

    def guard(self, step: Callable[[], None]) -> None:
        """Run one step of the life; an exception ends this life alone (a BaseException such as Ctrl-C goes on up)."""
        if self.error is None:
            try:
                step()
            except Exception as e:
                self.error = e

    def end(self) -> None:
        """Record how the run ended (its summary and loggers, however it ended): ``outcome``; ``error`` explained."""
        if self.outcome is not None:  # kept as it was
            return
        exit_code = 0
        if self.error is not None:
            self.error = _explained(self.error, self.cfg, self.job, self.run)
            self.summary["status"], self.summary["error"], exit_code = status_of(self.error)
            if isinstance(self.error, Pruned):
                self.log.info("%s", self.error)
        saved = self.checkpointing.epochs_saved if self.checkpointing else 0
        fill_results(self.summary, self.run, saved if self.error is not None else self.run.epoch)  # what a resume keeps
        self.summary.update(wall_seconds=self.wall_before + time.perf_counter() - self.started, finished_at=now())
        self.tracking.finish(self.summary, exit_code, write=not self.keep_summary)
        self.outcome = outcome_from_summary(self.job.run_dir, self.summary)


def run_lives(lives: Sequence[Life], steps: Optional[Callable[[], Steps]] = None) -> None:
    """Drive ``lives`` to their ends together: each started, all fitted by one ``fit_group`` (``steps``: how the group
    takes its steps; None: each its own), each completed and recorded. A life whose own part fails ends alone; a
    signal or a second Ctrl-C ends every life not yet ended, and is raised again after they are recorded."""
    waiting = []
    for life in lives:
        try:
            if not life.kept():
                waiting.append(life)
        except Exception as e:
            # it cannot be told whether it completed with this config: it fails, its files as they are
            life.error = e
    try:
        with signals.recorded():
            signals.raise_if_pending()  # received during start-up or between a sweep's jobs
            for life in waiting:
                life.guard(lambda life=life: life.start(progress=len(waiting) == 1))
            ready = [life for life in waiting if life.error is None]
            if ready:
                fit_group(
                    [life.run for life in ready],
                    ready[0].settings,
                    [life.callbacks for life in ready],
                    steps() if steps is not None else None,
                )
            for life in ready:
                life.error = life.run.error
                life.guard(life.complete)
    except BaseException as e:  # a signal before the group started, or a second Ctrl-C: every unfinished life
        for life in waiting:
            if life.error is None and life.summary["status"] == Status.running:
                life.error = e
        raise
    finally:
        for life in waiting:
            life.end()


def best_key(cfg: Config, row_keys: list[str], logger: Any) -> Optional[str]:
    """The metrics key whose best epoch the run reports and keeps (``trainer.best``), if its rows hold it."""
    key = cfg.trainer.best
    if key is not None and key not in row_keys:
        logger.info("no best epoch is selected: the rows hold no %s (data.val_size=%s)", key, cfg.data.val_size)
        return None
    return key


def _progress(cfg: Config, settings: FitSettings) -> dict[str, ProgressBar]:
    """The progress bar ``trainer.progress`` asks for (by default on a terminal only)."""
    shown = sys.stderr.isatty() if cfg.trainer.progress is None else cfg.trainer.progress
    return {"progress": ProgressBar(cfg.trainer.epochs, len(settings.train), cfg.trainer.batch_size)} if shown else {}


def _kept_if_completed(cfg: Config, job: JobInfo, config_record: dict[str, Any], logger: Any) -> Optional[Outcome]:
    """On resume, the outcome of a run that completed with this config: it is kept as it is."""
    try:
        previous = read_summary(job.run_dir)
    except SummaryError as e:  # its checkpoint still says how far it got
        logger.warning("%s: continuing from its checkpoint", e)
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
    logger.info(
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
    """The results of the run's first ``epochs`` epochs into its summary: accuracies, losses, the best epoch (by the
    key the summary's ``selected_on`` names), extra metrics."""
    if run is None:
        return
    summary["stopped_early"] = run.stop_reason if run.epoch < summary["epochs"] else None
    if not run.history[:epochs]:
        return
    history = run.history[:epochs]
    last = history[-1]
    summary.update(
        final_test_acc=last["test_acc"],
        final_test_loss=last["test_loss"],
        final_val_acc=last.get("val_acc"),
        final_val_loss=last.get("val_loss"),
        final_train_loss=last["train_loss"],
        epochs_completed=len(history),
        seconds_per_epoch=sum(r["seconds"] for r in history) / len(history),
        eval_weights=run.eval_weights,
        **run.notes,
    )
    key = summary["selected_on"]
    best = best_row(history, key) if key is not None else None
    if best is not None:
        summary.update(
            best_epoch=best["epoch"],
            best_value=best[key],
            best_val_acc=best.get("val_acc"),
            best_test_acc=best["test_acc"],
            best_weights=BEST_WEIGHTS if (run.run_dir / BEST_WEIGHTS).is_file() else None,
        )
    summary.update({f"final_{key}": value for key, value in last.items() if key not in METRIC_KEYS})


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
            f"continue with: python train.py trainer.resume=true hydra.run.dir={job.run_dir}"
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
