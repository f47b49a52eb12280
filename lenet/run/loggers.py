"""Loggers: where a run reports besides its own ``metrics.jsonl`` and ``summary.json``.

The ``logger`` config group holds a dict of loggers, each a ``_target_`` class with its own
arguments (``logger=[wandb,tensorboard]`` chooses several, ``logger=none`` none). The harness offers
each constructor what only it knows, where the constructor takes it: ``run_dir``, ``config`` (the
resolved config as a dict), ``sweep`` (the sweep's name in a multirun), ``label`` (what sets the job
apart in its sweep, e.g. ``pooling=avg,seed=1``) and ``model``. A logger of your own subclasses
``Logger`` and overrides what it needs.
"""

from __future__ import annotations

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
    """The interface: every method may be left as it is (it does nothing)."""

    def log_row(self, row: dict[str, Any], step: int) -> None:
        """One epoch's row of ``metrics.jsonl`` (its ``epoch`` is ``step``)."""

    def resume(self, history: list[dict[str, Any]]) -> None:
        """A resumed run's earlier epochs, before its new ones; by default logged again as rows."""
        for row in history:
            self.log_row(row, step=row["epoch"])

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
            try:
                getattr(logger, method)(*args, **kwargs)
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

    def resume(self, history: list[dict[str, Any]]) -> None:
        """Pass a resumed run's earlier rows to every logger."""
        if history:
            self._each("resume", history)

    def log_file(self, path: Path, kind: str) -> None:
        """Pass a file of the run to every logger."""
        self._each("log_file", path, kind)

    def finish(self, summary: dict[str, Any], exit_code: int) -> None:
        """Finish every logger, once; each is finished even when another fails."""
        self._each("finish", summary, exit_code)
        self.loggers.clear()


REQUIRED_METHODS = ("log_row", "finish")


def check_loggers(nodes: Mapping[str, Any]) -> None:
    """What each logger can say of its settings before any folder is made (its class's ``check_settings``)."""
    for name, node in nodes.items():
        key = f"logger.{name}"
        if dataclasses.is_dataclass(node):
            node = {f.name: _plain(getattr(node, f.name)) for f in dataclasses.fields(node)}
        if not isinstance(node, Mapping):
            raise ConfigError(f"{key} must be a node with a _target_, got {node!r}")
        bound = bind(node, key)
        check = getattr(bound.func, "check_settings", None)
        if callable(check):
            call(functools.partial(check, **bound.keywords), key)


def build_loggers(nodes: Mapping[str, Any], offered: Mapping[str, Any]) -> Loggers:
    """The loggers that ``nodes`` (the ``logger`` config: name -> node with ``_target_``) describe, started."""
    loggers = Loggers()
    try:
        for name, node in nodes.items():
            key = f"logger.{name}"
            if dataclasses.is_dataclass(node):
                node = {f.name: _plain(getattr(node, f.name)) for f in dataclasses.fields(node)}
            if not isinstance(node, Mapping):
                raise ConfigError(f"{key} must be a node with a _target_, got {node!r}")
            logger = construct(node, key, offered)
            missing = [m for m in REQUIRED_METHODS if not callable(getattr(logger, m, None))]
            if missing:
                raise ConfigError(
                    f"{key}._target_={node['_target_']} has no {' or '.join(missing)} method: "
                    "subclass lenet.run.loggers.Logger"
                )
            loggers.loggers[name] = logger
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
    ``log_row``; ``watch`` passes its arguments to ``wandb.Run.watch(model, ...)``.
    """

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
    ):
        import wandb  # here: a run without W&B never imports it

        mode = resolve_wandb_mode(mode)
        if mode == "online" and not wandb.login(prompt=False, verify=False):
            raise UserError(NO_CREDENTIALS_MESSAGE)
        if signals.pending_name():  # received while W&B looked for credentials (its login catches everything)
            raise Interrupted(signals.pending_name())
        self.log_model = log_model
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
        if watch is not None and model is not None:
            self.run.watch(model, **watch)

    def log_row(self, row: dict[str, Any], step: int) -> None:
        """Log the row at ``step``."""
        self.run.log(row, step=step)

    def log_file(self, path: Path, kind: str) -> None:
        """Upload the final weights as a model artifact when ``log_model`` is set."""
        if kind == "model" and self.log_model:
            import wandb

            artifact = wandb.Artifact(path.stem, type="model")
            artifact.add_file(str(path))
            self.run.log_artifact(artifact)

    def finish(self, summary: dict[str, Any], exit_code: int) -> None:
        """Set the run's summary and finish it, marked failed when ``exit_code`` is not 0."""
        try:
            self.run.summary.update(
                {k: v for k, v in summary.items() if v is not None and k not in WANDB_SUMMARY_SKIPS}
            )
        finally:
            self.run.finish(exit_code=exit_code)


class TensorBoardLogger(Logger):
    """TensorBoard event files in ``run_dir/log_dir``: every number of a row as a scalar at the epoch.

    A resumed run writes its rows again from epoch 1 with TensorBoard's ``purge_step``, which hides the
    earlier events of those epochs, so the curves end as the checkpoint's history does.
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
        self.writer: Any = None  # made at the first row, which decides the purge step

    def _open(self, step: Optional[int]) -> Any:
        if self.writer is None:
            self.writer = self._writer_class(log_dir=str(self.log_dir), purge_step=step)
            if self.config is not None:
                self.writer.add_text("config", f"```\n{json.dumps(self.config, indent=2)}\n```", global_step=step)
        return self.writer

    def log_row(self, row: dict[str, Any], step: int) -> None:
        """Add each finite number of the row as a scalar at ``step``."""
        writer = self._open(step)
        for key, value in row.items():
            if (
                key != "epoch"
                and isinstance(value, (int, float))
                and not isinstance(value, bool)
                and math.isfinite(value)
            ):
                writer.add_scalar(key, value, global_step=step)
        writer.flush()

    def finish(self, summary: dict[str, Any], exit_code: int) -> None:
        """Add the summary as text and close the event file."""
        writer = self._open(None)  # no row was logged: nothing to purge
        writer.add_text("summary", f"```\n{json.dumps(summary, indent=2, default=str)}\n```")
        writer.close()
