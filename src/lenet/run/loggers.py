"""Loggers: where a run reports besides its own ``metrics.jsonl`` and ``summary.json``.

The ``logger`` config group holds a dict of loggers, each a ``_target_`` class with its own
arguments (``logger=[wandb,tensorboard]`` chooses several, ``logger=none`` none). The harness offers
each constructor what only it knows, where the constructor takes it: ``run_dir``, ``config`` (the
resolved config as a dict), ``sweep`` (the sweep's name in a multirun), ``label`` (what sets the job
apart in its sweep, e.g. ``pooling=avg,seed=1``) and ``model``. A logger of your own subclasses
``Logger`` and overrides what it needs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
from enum import Enum
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from lenet.core.errors import ConfigError, Interrupted, UserError
from lenet.core.factory import bind, call
from lenet.run import signals

log = logging.getLogger(__name__)


class Logger:
    """The interface: every method may be left as it is (it does nothing).

    ``step`` is the run's optimizer step count (its global step), the same axis for epochs and steps: an epoch's
    row is logged at the step that ended it.
    """

    def log_row(self, row: dict[str, Any], step: int) -> None:
        """One epoch's row of ``metrics.jsonl``, at the global step that ended the epoch."""

    def log_step(self, values: dict[str, float], step: int) -> None:
        """Values of the training steps (``train_loss_step``: the mean loss of the last steps), every
        ``logger.log_every_n_steps`` steps."""

    def resume(self, history: list[tuple[dict[str, Any], int]]) -> None:
        """A resumed run's earlier epochs (row, step), before its new ones; by default logged again as rows.

        A logger that knows what it logged before (W&B, TensorBoard) logs only what it lacks.
        """
        for row, step in history:
            self.log_row(row, step=step)

    def log_file(self, path: Path, kind: str) -> None:
        """A file the run made; ``kind`` is ``model`` for the final weights."""

    def finish(self, summary: dict[str, Any], exit_code: int) -> None:
        """The run ended: ``summary['status']`` is completed, failed or interrupted; ``exit_code`` is the process's."""


class Loggers:
    """The run's loggers as one: a logger that raises is reported and dropped, the run and the others go on."""

    def __init__(self, loggers: Mapping[str, Logger] | None = None):
        self.loggers = dict(loggers or {})

    def _each(self, method: str, *args: Any, **kwargs: Any) -> None:
        for name, logger in list(self.loggers.items()):
            # a logger of its own that is not a Logger may lack the optional methods: Logger's are used
            hook = getattr(logger, method, None) or getattr(Logger, method).__get__(logger)
            try:
                hook(*args, **kwargs)
            except Exception as e:  # the results are safe in the run dir; a logger must not end the run
                log.warning(
                    "logger.%s failed in %s (%s: %s); it gets nothing more of this run",
                    name,
                    method,
                    type(e).__name__,
                    e,
                )
                del self.loggers[name]

    def log_row(self, row: dict[str, Any], step: int) -> None:
        """Pass one row to every logger."""
        self._each("log_row", row, step)

    def log_step(self, values: dict[str, float], step: int) -> None:
        """Pass the training steps' values to every logger."""
        self._each("log_step", values, step)

    def resume(self, history: list[tuple[dict[str, Any], int]]) -> None:
        """Pass a resumed run's earlier rows (and their steps) to every logger."""
        if history:
            self._each("resume", history)

    def log_file(self, path: Path, kind: str) -> None:
        """Pass a file of the run to every logger."""
        self._each("log_file", path, kind)

    def finish(self, summary: dict[str, Any], exit_code: int) -> None:
        """Finish every logger, once; each is finished even when another fails."""
        self._each("finish", summary, exit_code)
        self.loggers.clear()


STEP_LOGGING_KEY = "log_every_n_steps"  # logger.log_every_n_steps: a setting of the group, not a logger


def logger_nodes(nodes: Mapping[str, Any]) -> dict[str, Any]:
    """The loggers of the ``logger`` config: its nodes, without the group's own settings."""
    return {name: node for name, node in nodes.items() if name != STEP_LOGGING_KEY}


REQUIRED_METHODS = ("log_row", "finish")


def _nodes(nodes: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """(key, node as a mapping) of each logger of the ``logger`` config; one that is not a node is refused."""
    found = []
    for name, node in logger_nodes(nodes).items():
        key = f"logger.{name}"
        if dataclasses.is_dataclass(node):
            node = {f.name: _plain(getattr(node, f.name)) for f in dataclasses.fields(node)}
        if not isinstance(node, Mapping):
            raise ConfigError(f"{key} must be a node with a _target_, got {node!r}")
        found.append((key, node))
    return found


def check_loggers(nodes: Mapping[str, Any]) -> None:
    """What each logger can say of its settings before any folder is made (its class's ``check_settings``)."""
    every = nodes.get(STEP_LOGGING_KEY, 0)
    if not isinstance(every, int) or isinstance(every, bool) or every < 0:
        raise ConfigError(f"logger.{STEP_LOGGING_KEY} must be 0 (epochs only) or a number of steps, got {every!r}")
    for key, node in _nodes(nodes):
        bound = bind(node, key)
        check = getattr(bound.func, "check_settings", None)
        if callable(check):
            call(functools.partial(check, **bound.keywords), key)


def build_loggers(nodes: Mapping[str, Any], offered: Mapping[str, Any]) -> Loggers:
    """The loggers that ``nodes`` (the ``logger`` config: name -> node with ``_target_``) describe, started."""
    loggers = Loggers()
    try:
        for key, node in _nodes(nodes):
            logger = construct(node, key, offered)
            missing = [m for m in REQUIRED_METHODS if not callable(getattr(logger, m, None))]
            if missing:
                raise ConfigError(
                    f"{key}._target_={node['_target_']} has no {' or '.join(missing)} method: "
                    "subclass lenet.run.loggers.Logger"
                )
            loggers.loggers[key.removeprefix("logger.")] = logger
    except BaseException:
        loggers.finish({"status": "failed"}, 1)  # those already started
        raise
    return loggers


def construct(node: Mapping[str, Any], key: str, offered: Mapping[str, Any]) -> Any:
    """Build ``node``'s ``_target_``; one whose constructor raises is one ConfigError line naming ``key``."""
    try:
        return call(bind(node, key), key, offered=offered)
    except (UserError, Interrupted):
        raise
    except OSError as e:  # a logger that cannot reach what it writes to: a bug in one raises as it is
        reason = " ".join(str(e).split())[:300]
        raise ConfigError(f"{key} ({node.get('_target_')}) could not start: {type(e).__name__}: {reason}") from None


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value


def resolve_wandb_mode(mode: Optional[str]) -> str:
    """The W&B mode to use: the configured one, else $WANDB_MODE, else offline."""
    return _plain(mode) or os.environ.get("WANDB_MODE") or "offline"


NO_CREDENTIALS_MESSAGE = (
    "logger.wandb.mode=online needs W&B credentials and none are configured: run `wandb login` "
    "or set WANDB_API_KEY, or log offline with logger.wandb.mode=offline and `wandb sync` later"
)
# summary.json keys that W&B's run summary gets (the per-epoch values are in its history)
WANDB_SUMMARY_SKIPS = ("overrides", "num_threads_probe", "error")


class WandbLogger(Logger):
    """A Weights & Biases run in this process, its files in the run dir; ``self.run`` is the live ``wandb.Run``.

    Any code of the job may log media to it as well (``wandb.log``, ``wandb.run``), or a subclass may add to
    ``log_row``; ``watch`` passes its arguments to ``wandb.Run.watch(model, ...)``. The resolved config is the
    run's config. The run's id, and the last epoch W&B holds for sure (given before a finish that returned:
    offline, W&B keeps nothing of a process killed before it finishes), are kept in the run dir
    (``wandb/lenet.json``), so a resumed run continues its own W&B run (the same id, ``resume="allow"``; offline
    too) and gives it every epoch a killed process did not. A W&B service that stops answering delays the run's end by
    ``finish_timeout`` seconds at most: it is then stopped, the records it had are in the run dir.
    """

    RECORD = "lenet.json"

    @staticmethod
    def check_settings(mode: Optional[str] = None, **settings: Any) -> None:
        """Refuse online logging without credentials, before the run has a folder."""
        if resolve_wandb_mode(mode) == "online":
            import wandb

            if not wandb.login(prompt=False, verify=False):
                raise UserError(NO_CREDENTIALS_MESSAGE)

    def __init__(
        self,
        run_dir: Path,
        config: Optional[dict[str, Any]] = None,
        sweep: Optional[str] = None,
        label: Optional[str] = None,
        model: Any = None,
        mode: Optional[str] = None,
        project: str = "lenet",
        entity: Optional[str] = None,
        group: Optional[str] = None,
        name: Optional[str] = None,
        tags: Sequence[str] = (),
        log_model: bool = False,
        watch: Optional[Mapping[str, Any]] = None,
        settings: Optional[Mapping[str, Any]] = None,
        finish_timeout: float = 60.0,
    ):
        import wandb  # here: a run without W&B never imports it

        mode = resolve_wandb_mode(mode)
        self.check_settings(mode)
        if signals.pending_name():  # received while W&B looked for credentials (its login catches everything)
            raise Interrupted(signals.pending_name())
        self.log_model, self.finish_timeout = log_model, float(finish_timeout)
        self.record_path = Path(run_dir) / "wandb" / self.RECORD
        self.record = self._read_record()
        try:
            with signals.raising():  # a Ctrl-C or SIGTERM must not wait for W&B's start-up (up to init_timeout)
                self.run = wandb.init(
                    dir=str(Path(run_dir).resolve()),
                    mode=mode,
                    project=project,
                    entity=entity,
                    group=group or sweep,
                    name=name or label,
                    tags=list(tags) or None,
                    config=config,
                    id=self.record.get("id"),
                    resume="allow" if self.record.get("id") else None,
                    reinit="finish_previous",  # a previous job of a sweep in this process never leaks into this run
                    settings=wandb.Settings(**{"console": "off", "silent": True, **(settings or {})}),
                )
        except Interrupted:
            raise
        except Exception as e:  # W&B's messages may run over many lines: the first says what
            reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise UserError(
                f"W&B could not start the run: {type(e).__name__}: {reason}; logger=none trains without W&B"
            ) from None
        self._write_record(id=self.run.id)
        self.last_epoch = self.record.get("epoch", 0)
        if watch is not None and model is not None:
            self.run.watch(model, **watch)

    def _read_record(self) -> dict[str, Any]:
        try:
            record = json.loads(self.record_path.read_text())
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) and isinstance(record.get("id"), str) else {}

    def _write_record(self, **values: Any) -> None:
        from lenet.run.files import write_text

        self.record.update(values)
        write_text(self.record_path, json.dumps(self.record) + "\n")

    def log_row(self, row: dict[str, Any], step: int) -> None:
        """Log the row at ``step``, and remember that this epoch reached the run."""
        self.run.log(row, step=step)
        self.last_epoch = row.get("epoch", self.last_epoch)

    def log_step(self, values: dict[str, float], step: int) -> None:
        """Log the steps' values at ``step``."""
        self.run.log(values, step=step)

    def resume(self, history: list[tuple[dict[str, Any], int]]) -> None:
        """Give the continued W&B run the epochs it does not have (those a killed process did not log)."""
        logged = self.record.get("epoch", 0)
        for row, step in history:
            if row["epoch"] > logged:
                self.log_row(row, step)

    def log_file(self, path: Path, kind: str) -> None:
        """Upload the final weights as a model artifact when ``log_model`` is set."""
        if kind == "model" and self.log_model:
            import wandb

            artifact = wandb.Artifact(path.stem, type="model")
            artifact.add_file(str(path))
            self.run.log_artifact(artifact)

    def finish(self, summary: dict[str, Any], exit_code: int) -> None:
        """Set the run's summary and finish it, marked failed when ``exit_code`` is not 0, within ``finish_timeout``."""
        try:
            self.run.summary.update(
                {k: v for k, v in summary.items() if v is not None and k not in WANDB_SUMMARY_SKIPS}
            )
        finally:
            self._finish_within(exit_code)

    def _finish_within(self, exit_code: int) -> None:
        import threading

        done, failure = threading.Event(), []

        def finish() -> None:
            try:
                self.run.finish(exit_code=exit_code)
            except BaseException as e:  # said below, in the run's thread
                failure.append(e)
            finally:
                done.set()

        threading.Thread(target=finish, name="wandb-finish", daemon=True).start()
        if done.wait(self.finish_timeout):
            if failure:
                raise failure[0]
            self._write_record(epoch=self.last_epoch)  # W&B holds these for sure now
            return
        log.warning(
            "W&B did not finish the run within %g s (logger.wandb.finish_timeout): its service stopped answering and "
            "was stopped; what it had recorded is in %s (wandb sync uploads it)",
            self.finish_timeout,
            self.record_path.parent,
        )
        stop_wandb_service()


def stop_wandb_service() -> None:
    """Stop this process's W&B service (wandb-core) that no longer answers, so that the process can end (Linux)."""
    import signal

    for entry in Path("/proc").glob("[0-9]*"):
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if parent == os.getpid() and b"wandb-core" in command:
            with contextlib.suppress(OSError):
                os.kill(int(entry.name), signal.SIGKILL)
    try:
        import wandb

        wandb.teardown()  # what W&B would wait for at exit: nothing is left to wait for
    except BaseException:  # noqa: BLE001 - its teardown of a stopped service raises, even SystemExit
        pass


class TensorBoardLogger(Logger):
    """TensorBoard event files in ``run_dir/log_dir``: every number of a row as a scalar at its step, the training
    loss every ``logger.log_every_n_steps`` steps, and the resolved config as hparams with the final figures.

    A resumed run opens the event file with TensorBoard's ``purge_step`` at the step after its checkpoint, which
    hides what a killed process logged after it, so the curves go on as the checkpoint's history does.
    """

    def __init__(self, run_dir: Path, config: Optional[dict[str, Any]] = None, log_dir: str = "tensorboard"):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError(
                "logger=tensorboard needs the tensorboard package: pip install tensorboard "
                "(or pip install -e '.[tensorboard]')"
            ) from None
        self._writer_class = SummaryWriter
        self.log_dir = Path(run_dir) / log_dir
        self.config = config
        self.writer: Any = None  # made at the first value, which decides the purge step

    def _open(self, purge_step: Optional[int] = None) -> Any:
        if self.writer is None:
            self.writer = self._writer_class(log_dir=str(self.log_dir), purge_step=purge_step)
            if self.config is not None:
                self.writer.add_text("config", f"```\n{json.dumps(self.config, indent=2)}\n```")
        return self.writer

    def resume(self, history: list[tuple[dict[str, Any], int]]) -> None:
        """Go on after the checkpoint's last step: what a killed process logged after it is purged."""
        self._open(purge_step=history[-1][1] + 1)

    def log_row(self, row: dict[str, Any], step: int) -> None:
        """Add each finite number of the row as a scalar at ``step``."""
        writer = self._open()
        for key, value in row.items():
            if key != "epoch" and _number(value):
                writer.add_scalar(key, value, global_step=step)
        writer.flush()

    def log_step(self, values: dict[str, float], step: int) -> None:
        """Add the steps' values as scalars at ``step``."""
        writer = self._open()
        for key, value in values.items():
            if _number(value):
                writer.add_scalar(key, value, global_step=step)

    def finish(self, summary: dict[str, Any], exit_code: int) -> None:
        """Add the config as hparams with the final figures, the summary as text, and close the event file."""
        writer = self._open()
        if self.config is not None:
            final = {f"hparams/{k}": v for k, v in summary.items() if k.startswith(("final_", "best_")) and _number(v)}
            writer.add_hparams(_hparams(self.config), final, run_name=".")  # into this run's own folder
        writer.add_text("summary", f"```\n{json.dumps(summary, indent=2, default=str)}\n```")
        writer.close()


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _hparams(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """The config flattened to dotted keys and the values TensorBoard's hparams take (others as text)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(_hparams(value, f"{prefix}{key}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[f"{prefix}{key}"] = value
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat
