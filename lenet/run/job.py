"""One job: turn the typed config into data, model and optimizer, train, evaluate and record.

``run_from_hydra`` is what ``train.py`` calls; it also decides how a failure ends the job: one
line on stderr and a non-zero exit for a single run, a recorded failure and NaN inside a sweep so
that the other jobs go on.
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import importlib
import logging
import math
import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from lenet.core.augment import build_augmentation
from lenet.run.checkpoint import CHECKPOINT_FILE, check_config, load_checkpoint, restore, save_checkpoint
from lenet.run.config import RESUME_IGNORES, Config, Precision, to_typed
from lenet.core.data import load_dataset
from lenet.train.loop import evaluate, train_one_epoch
from lenet.core.errors import DeviceError, DivergedError, Interrupted, Pruned, UserError
from lenet.core.losses import build_loss
from lenet.core.metrics import get_metric, metric_key
from lenet.core.models import build_model, num_params
from lenet.core.optim import build_optimizer, build_scheduler
from hydra_plugins.lenet.pruning import trial_reporter
from lenet.run.signals import SignalStop, pending_name
from lenet.run.sweep_dir import job_label, read_swept_keys, split_override
from lenet.run.threads import available_cores, choose_num_threads
from lenet.run.loggers import build_loggers
from lenet.run.tracking import Tracker, atomic_file, read_summary, remove_stale_temporaries

log = logging.getLogger(__name__)

METRIC_KEYS = ["epoch", "train_loss", "test_loss", "test_acc", "lr", "seconds"]  # of each metrics.jsonl row


@dataclass
class JobInfo:
    """What Hydra knows about this job that the config does not hold."""

    run_dir: Path
    cwd: Path  # where the user started; relative paths are resolved against it
    overrides: list[str] = field(default_factory=list)
    multirun: bool = False
    sweep_dir: Optional[Path] = None
    label: str = ""  # what sets this job apart in its sweep, e.g. pooling=avg,seed=1
    parallel_jobs: int = 1  # jobs of the sweep running at once on this machine
    requeueable: bool = False  # run by submitit, which may run it again after a time-out or pre-emption
    choices: dict[str, Optional[str]] = field(default_factory=dict)  # the option Hydra chose in each group
    launcher: str = ""  # the launcher's _target_ in a multirun
    sweeper: Optional[dict[str, Any]] = None  # the sweeper's node in a multirun (lenet's Optuna search prunes)
    job_num: int = 0  # the job's number in its sweep (the trial's, in lenet's Optuna search)

    @classmethod
    def from_hydra(cls) -> "JobInfo":
        """Read the running job's Hydra config."""
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        multirun = hc.mode == RunMode.MULTIRUN
        n_jobs = OmegaConf.select(hc, "launcher.n_jobs", default=None) if multirun else None
        cores = available_cores()
        parallel = 1 if n_jobs is None else (cores if n_jobs < 0 else min(n_jobs, cores))
        return cls(
            run_dir=Path(hc.runtime.output_dir),
            cwd=Path(hc.runtime.cwd),
            overrides=list(hc.overrides.task),
            multirun=multirun,
            sweep_dir=Path(hc.sweep.dir).resolve() if multirun else None,
            label=job_label(list(hc.overrides.task), read_swept_keys(Path(hc.sweep.dir)) if multirun else None),
            parallel_jobs=max(1, parallel),
            requeueable="SUBMITIT_EXECUTOR" in os.environ,
            choices=dict(hc.runtime.choices),
            launcher=str(OmegaConf.select(hc, "launcher._target_", default="")) if multirun else "",
            sweeper=OmegaConf.to_container(hc.sweeper, resolve=True) if multirun else None,
            job_num=int(OmegaConf.select(hc, "job.num", default=0) or 0),
        )

    def label_of(self, group: str, node: dict[str, Any]) -> str:
        """What built ``group``'s component: the option chosen, or the ``_target_`` when the command line set it."""
        choice = self.choices.get(group)
        target_overridden = any(split_override(o)[0] == f"{group}._target_" for o in self.overrides)
        return choice if choice and not target_overridden else str(node.get("_target_"))

    @property
    def sweep_name(self) -> Optional[str]:
        """The sweep's dir (relative to where it was started), shared by all jobs of a sweep."""
        if self.sweep_dir is None:
            return None
        try:
            return str(self.sweep_dir.relative_to(self.cwd.resolve()))
        except ValueError:
            return str(self.sweep_dir)


def resolve_device(name: str) -> torch.device:
    """The torch device for ``device=name``; an unavailable one raises DeviceError."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if (name == "cuda" and not cuda) or (name == "mps" and not mps):
        raise DeviceError(
            f"device={name} was asked for but is not available on this machine; use device=auto or device=cpu"
        )
    if name not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"unknown device {name!r}; use auto, cpu, cuda or mps")
    return torch.device(name)


def _resolve_path(path: str, cwd: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else cwd / p


def seconds_since_process_start() -> Optional[float]:
    """Wall time since this process started (Linux; None elsewhere), interpreter start-up included."""
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


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


@dataclass
class Parts:
    """What a job trains and evaluates with, built from its config."""

    device: torch.device
    model: torch.nn.Module
    forward: Any  # the model, or its torch.compile'd form
    optimizer: torch.optim.Optimizer
    loss_fn: Any
    metric_fns: dict[str, Any]
    train: Any
    test: Any
    scheduler: Any  # lenet.core.optim.Scheduler
    generator: torch.Generator
    augment: Any


def _kept_if_completed(cfg: Config, job: JobInfo, config_record: dict[str, Any]) -> Optional[dict[str, Any]]:
    """On resume, the summary of a run that completed with this config: it is kept as it is."""
    previous = read_summary(job.run_dir) if cfg.trainer.resume or job.requeueable else None
    if not (previous and previous.get("status") == "completed" and previous.get("epochs") == cfg.trainer.epochs):
        return None
    # the same run? its checkpoint says with which config it was made
    checkpoint_path = job.run_dir / CHECKPOINT_FILE
    check_config(load_checkpoint(checkpoint_path), checkpoint_path, config_record, RESUME_IGNORES)
    log.info("%s completed before: kept as it is (final test accuracy %.2f%%)", job.run_dir,
             100 * previous["final_test_acc"])  # fmt: skip
    return previous


def _new_summary(cfg: Config, job: JobInfo) -> dict[str, Any]:
    """The summary of a job about to start: its labels, and None for every result."""
    return {
        "status": "running", "error": None, "final_test_acc": None, "best_test_acc": None, "best_epoch": None,
        "final_test_loss": None, "final_train_loss": None, "num_params": None, "epochs": cfg.trainer.epochs,
        "epochs_completed": 0, "wall_seconds": None, "seconds_per_epoch": None, "overrides": job.overrides,
        "model": cfg.model.get("name") or job.label_of("model", cfg.model), "pooling": cfg.model.get("pooling"),
        "loss": job.label_of("loss", cfg.loss), "optimizer": job.label_of("optimizer", cfg.optimizer),
        "scheduler": job.label_of("scheduler", cfg.scheduler), "dataset": cfg.data.name, "seed": cfg.seed,
        "device": None, "num_threads": None, "num_threads_probe": None,
        "weights": None, "image_size": None, "resumed_from_epoch": None, "setup_seconds": None, "startup_seconds": None,
        "started_at": _now(), "finished_at": None, "torch_version": torch.__version__,
    }  # fmt: skip


def _build(
    cfg: Config, job: JobInfo, config_record: dict[str, Any], tracker: Tracker, summary: dict[str, Any],
    first_in_process: bool,
) -> Parts:  # fmt: skip
    """Model, optimizer, loss, metrics and loggers, then the data and schedule: what a wrong setting breaks first."""
    device = resolve_device(cfg.device.name)
    summary["device"] = str(device)
    # model and optimizer before the data, so that a wrong argument of theirs fails before any work
    torch.manual_seed(cfg.seed)
    offered = {"in_channels": len(cfg.data.mean), "num_classes": cfg.data.num_classes}  # what the data decides
    model = build_model(cfg.model, offered).to(device)
    if cfg.trainer.channels_last:  # NHWC: faster convolution and pooling kernels on the CPU
        model = model.to(memory_format=torch.channels_last)
    summary["num_params"] = num_params(model)
    optimizer = build_optimizer(model, cfg.optimizer, device)
    loss_fn = build_loss(cfg.loss)
    # test_acc is always recorded; the others add test_<name> keys to every row
    metric_fns = {name: get_metric(name) for name in cfg.trainer.metrics if name != "accuracy"}
    # before the data, so that a logger that cannot start (W&B online without credentials) fails first
    tracker.loggers = build_loggers(
        cfg.logger,
        {"run_dir": job.run_dir, "config": config_record, "sweep": job.sweep_name, "label": job.label or None,
         "model": model},
    )  # fmt: skip
    if first_in_process:
        # Exempt what the imports made (torch's, Hydra's and the loggers' modules: about 10^5 objects) from the
        # cyclic garbage collector, which otherwise walks them all on each full collection during training and
        # once more at exit. torch.optim imports torch._dynamo when the first optimizer is built: import it now
        # so that its objects are exempt too. Once per process and before any job's data, so that only a first
        # job's few small objects (model, optimizer) are kept out of it.
        importlib.import_module("torch._dynamo")
        gc.freeze()
    train, test = load_dataset(
        cfg.data.name, _resolve_path(cfg.data.root, job.cwd), cfg.data.download, cfg.data.resize.value,
        cfg.data.mean, cfg.data.std, device, synthetic_sizes=(cfg.data.train_size, cfg.data.test_size),
        size=cfg.data.size, num_classes=cfg.data.num_classes, loader=cfg.data.loader,
    )  # fmt: skip
    summary["image_size"] = list(train.image_size)  # lenet.tools.predict brings other images to it
    steps_per_epoch = math.ceil(len(train) / cfg.trainer.batch_size)
    monitorable = METRIC_KEYS + [metric_key(name) for name in metric_fns]
    return Parts(
        device=device, model=model, forward=torch.compile(model) if cfg.trainer.compile else model,
        optimizer=optimizer, loss_fn=loss_fn, metric_fns=metric_fns, train=train, test=test,
        scheduler=build_scheduler(optimizer, cfg.scheduler, cfg.trainer.epochs, steps_per_epoch, monitorable),
        generator=torch.Generator().manual_seed(cfg.seed),  # shuffling and augmentation; in the checkpoint
        augment=build_augmentation(cfg.data.augment.value, dataclasses.asdict(cfg.data.distort)),
    )  # fmt: skip


def _threads(cfg: Config, job: JobInfo, parts: Parts, checkpoint: Optional[dict[str, Any]], summary: dict) -> int:
    """Set torch's CPU threads: a resumed run's own count (its results depend on it), else the probe's pick."""
    # after the loggers' start-up, which would otherwise count as load
    pinned = cfg.device.num_threads
    if checkpoint is not None and checkpoint.get("num_threads"):
        if pinned and pinned != checkpoint["num_threads"]:
            log.warning(
                "device.num_threads=%d ignored: the run continues with the %d threads it started with, "
                "whose results it would otherwise not repeat", pinned, checkpoint["num_threads"],
            )  # fmt: skip
        pinned = checkpoint["num_threads"]
    num_threads, probe = choose_num_threads(pinned, parts.device, job.parallel_jobs)
    torch.set_num_threads(num_threads)
    summary["num_threads"] = num_threads
    summary["num_threads_probe"] = {str(n): seconds for n, seconds in probe.items()} or None
    return num_threads


def _epoch(
    cfg: Config, parts: Parts, epoch: int, history: list[dict[str, Any]], stop: Any, checkpoint_path: Path
) -> dict[str, Any]:
    """Train one epoch and evaluate: the epoch's metrics.jsonl row; a NaN or infinite loss raises DivergedError."""
    epoch_start = time.perf_counter()
    lr = parts.optimizer.param_groups[0]["lr"]  # of the epoch's first step
    bf16 = cfg.trainer.precision == Precision.bf16
    progress = sys.stderr.isatty() if cfg.trainer.progress is None else cfg.trainer.progress
    train_loss = train_one_epoch(
        parts.forward, parts.loss_fn, parts.optimizer, parts.train.images, parts.train.labels, cfg.trainer.batch_size,
        parts.generator, scheduler=parts.scheduler.per_step, augment=parts.augment, bf16=bf16, progress=progress,
        stop_requested=stop, desc=f"epoch {epoch}/{cfg.trainer.epochs}",
    )  # fmt: skip
    evaluation = evaluate(
        parts.forward, parts.loss_fn, parts.test.images, parts.test.labels, cfg.trainer.eval_batch_size, bf16,
        parts.metric_fns,
    )  # fmt: skip
    test_loss, test_acc = evaluation.pop("test_loss"), evaluation.pop("test_acc")
    if not (math.isfinite(train_loss) and math.isfinite(test_loss)):
        kept = (
            f"the checkpoint of epoch {epoch - 1} is kept in {checkpoint_path}"
            if history
            else "no checkpoint was written"
        )
        bad = train_loss if not math.isfinite(train_loss) else test_loss
        raise DivergedError(
            f"the loss became {bad} in epoch {epoch}; "
            f"{kept}; lower optimizer.lr (now {cfg.optimizer.get('lr')}) or change the schedule"
        )
    return {"epoch": epoch, "train_loss": train_loss, "test_loss": test_loss, "test_acc": test_acc, "lr": lr,
            "seconds": time.perf_counter() - epoch_start, **evaluation}  # fmt: skip


def _save_weights(cfg: Config, job: JobInfo, parts: Parts, history: list[dict[str, Any]], summary: dict) -> Path:
    """Write the final weights atomically and say where the run went."""
    weights = job.run_dir / f"lenet_{cfg.data.name}.pth"
    with atomic_file(weights) as tmp:  # a crash never leaves a truncated weights file
        torch.save(parts.model.state_dict(), tmp)
    summary["weights"] = weights.name
    best = max(history, key=lambda row: row["test_acc"])
    log.info(
        "done: final test accuracy %.2f%% (best %.2f%% in epoch %d); run dir %s; weights %s",
        100 * history[-1]["test_acc"], 100 * best["test_acc"], best["epoch"], job.run_dir, weights,
    )  # fmt: skip
    return weights


def run_job(cfg: Config, job: JobInfo, config_record: dict[str, Any]) -> dict[str, Any]:
    """Train and evaluate as ``cfg`` says, recording into ``job.run_dir``; return the summary.

    The summary (and the loggers) are finished also when training fails or is interrupted; the
    exception is then raised again for the caller to report.
    """
    kept = _kept_if_completed(cfg, job, config_record)
    if kept is not None:
        return kept
    started = time.perf_counter()
    first_in_process = _first_job_of_process()
    run_dir, checkpoint_path = job.run_dir, job.run_dir / CHECKPOINT_FILE
    summary = _new_summary(cfg, job)
    remove_stale_temporaries(run_dir)
    tracker = Tracker(run_dir)
    exit_code, keep_summary, elapsed_before = 1, False, 0.0
    history: list[dict[str, Any]] = []
    try:
        with SignalStop() as stop:
            if stop():  # received before this job started: during start-up or between a sweep's jobs
                raise Interrupted(stop())
            parts = _build(cfg, job, config_record, tracker, summary, first_in_process)
            # a job that submitit requeued after a time-out or pre-emption continues where it stopped
            resume = cfg.trainer.resume or job.requeueable
            # a resume that is refused leaves the summary of the run it would continue as it was
            keep_summary = resume and (run_dir / "summary.json").is_file()
            checkpoint = load_checkpoint(checkpoint_path) if resume else None
            num_threads = _threads(cfg, job, parts, checkpoint, summary)
            if checkpoint is not None:
                history, elapsed_before = restore(
                    checkpoint, checkpoint_path, config_record, RESUME_IGNORES, parts.model, parts.optimizer,
                    parts.scheduler.scheduler, parts.generator,
                )  # fmt: skip
                summary["resumed_from_epoch"] = len(history)
                tracker.replay(history)
                log.info("resuming from %s after epoch %d", checkpoint_path, len(history))
            elif cfg.trainer.resume:
                log.info("trainer.resume=true but %s does not exist: starting from epoch 1", checkpoint_path)
            keep_summary = False  # the run goes on: its summary is this run's from now on
            tracker.write_metrics(history)  # drops epochs logged after the checkpoint was written
            prune = trial_reporter(job.sweeper, job.job_num, job.sweep_dir) if job.sweep_dir else None
            # to the first training step: from this job's start, and from the process's start for its first job
            summary["setup_seconds"] = time.perf_counter() - started
            summary["startup_seconds"] = seconds_since_process_start() if first_in_process else None
            for epoch in range(len(history) + 1, cfg.trainer.epochs + 1):
                if stop():
                    raise Interrupted(stop())
                row = _epoch(cfg, parts, epoch, history, stop, checkpoint_path)
                history.append(row)
                parts.scheduler.step_epoch(row)
                save_checkpoint(
                    checkpoint_path, parts.model, parts.optimizer, parts.scheduler.scheduler, parts.generator, history,
                    config_record, elapsed_before + time.perf_counter() - started, num_threads,
                )  # fmt: skip
                tracker.log_epoch(history)
                log.info(
                    "epoch %d/%d  train_loss %.4f  test_loss %.4f  test_acc %.2f%%  lr %.3g  %.1fs",
                    epoch, cfg.trainer.epochs, row["train_loss"], row["test_loss"], 100 * row["test_acc"], row["lr"],
                    row["seconds"],
                )  # fmt: skip
                if prune is not None and epoch < cfg.trainer.epochs and prune(epoch, row["test_acc"]):
                    raise Pruned(
                        f"pruned by the Optuna search after epoch {epoch} (test accuracy {100 * row['test_acc']:.2f}%)"
                    )
            tracker.log_file(_save_weights(cfg, job, parts, history, summary), "model")
        summary["status"] = "completed"
        exit_code = 0
    except Pruned as e:
        summary.update(status="pruned", error=str(e))
        exit_code = 0
        log.info("%s", e)
    except Interrupted as e:
        summary.update(status="interrupted", error=str(e))
        exit_code = 128 + signal.Signals[e.signal_name].value
        raise
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once
        summary.update(status="interrupted", error="interrupted by SIGINT")
        exit_code = 130
        raise
    except BaseException as e:
        summary.update(status="failed", error=str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}")
        raise
    finally:
        _fill_results(summary, history)
        summary["wall_seconds"] = elapsed_before + time.perf_counter() - started
        summary["finished_at"] = _now()
        tracker.finish(summary, exit_code, write_summary=not keep_summary)
    return summary


def _fill_results(summary: dict[str, Any], history: list[dict[str, Any]]) -> None:
    if not history:
        return
    best = max(history, key=lambda row: row["test_acc"])
    summary.update(
        final_test_acc=history[-1]["test_acc"], final_test_loss=history[-1]["test_loss"],
        final_train_loss=history[-1]["train_loss"], best_test_acc=best["test_acc"], best_epoch=best["epoch"],
        epochs_completed=len(history), seconds_per_epoch=sum(r["seconds"] for r in history) / len(history),
    )  # fmt: skip
    summary.update({f"final_{key}": value for key, value in history[-1].items() if key not in METRIC_KEYS})


def _failed_summary(job: JobInfo, error: str) -> None:
    """Record a job that failed before training could start (its config did not validate)."""
    Tracker(job.run_dir).finish(
        {"status": "failed", "error": error, "final_test_acc": None, "best_test_acc": None, "overrides": job.overrides,
         "started_at": _now(), "finished_at": _now()},
        exit_code=1,
    )  # fmt: skip


def interrupted_message(signal_name: str, run_dir: Path) -> str:
    """The line an interrupted run ends with: how to continue it, or that there is nothing to continue."""
    if (run_dir / CHECKPOINT_FILE).is_file():
        kept = (
            f"the checkpoint of the last finished epoch is kept in {run_dir}; "
            f"continue with trainer.resume=true hydra.run.dir={shlex.quote(str(run_dir))}"
        )
    else:
        kept = "no epoch had finished, so there is no checkpoint to continue from; run it again to start over"
    return f"error: interrupted by {signal_name}; {kept}"


class _JobLabel(logging.Filter):
    """Prefixes a sweep job's console lines with its label, so that parallel jobs' lines can be told apart."""

    def __init__(self, label: str):
        super().__init__()
        self.prefix = f"[{label}] "

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.prefix):
            record.msg = f"{self.prefix}{record.msg}"
        return True


def _console_handlers() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if not isinstance(h, logging.FileHandler)]


def _to_log_file(message: str, exc_info: bool = False) -> None:
    """Write an error into the run's train.log only: the console gets it as the ``error:`` line."""
    record = logging.getLogger(__name__).makeRecord(
        __name__, logging.ERROR, __file__, 0, message, None, sys.exc_info() if exc_info else None
    )
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def run_from_hydra(cfg: DictConfig) -> float:
    """Run the job Hydra composed; return its final test accuracy (NaN when it failed inside a sweep)."""
    job = JobInfo.from_hydra()
    label = _JobLabel(job.label) if job.multirun and job.label else None
    handlers = _console_handlers() if label else []
    for handler in handlers:
        handler.addFilter(label)
    try:
        return _run_and_report(cfg, job)
    finally:
        for handler in handlers:
            handler.removeFilter(label)


def _run_and_report(cfg: DictConfig, job: JobInfo) -> float:
    try:
        try:
            typed = to_typed(cfg)
        except UserError as e:
            _failed_summary(job, str(e))
            raise
        summary = run_job(typed, job, OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    except (Interrupted, KeyboardInterrupt) as e:
        name = e.signal_name if isinstance(e, Interrupted) else "SIGINT"
        message = interrupted_message(name, job.run_dir)
        _to_log_file(message)
        print(message, file=sys.stderr)
        raise SystemExit(128 + signal.Signals[name].value) from None
    except UserError as e:
        if job.multirun:
            log.error("job failed: %s", e)
            return math.nan
        _to_log_file(f"error: {e}")
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    except Exception:
        if job.multirun:
            log.exception("job failed")
            return math.nan
        _to_log_file("the run failed with this traceback:", exc_info=True)
        raise
    name = pending_name()
    # a job in a worker process of a parallel launcher leaves the signal to the sweep's own process
    if name and not any(worker in job.launcher for worker in ("joblib", "processes")):
        message = f"error: interrupted by {name} as the run finished: it completed (results in {job.run_dir})"
        _to_log_file(message)
        print(f"{message}; nothing more runs", file=sys.stderr)
        raise SystemExit(128 + signal.Signals[name].value)
    return summary["final_test_acc"]
