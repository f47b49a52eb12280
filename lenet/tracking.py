"""Where a run's results go: local files in the run dir (always) and Weights & Biases (optional).

``metrics.jsonl`` (one JSON object per epoch) and ``summary.json`` are rewritten whole through a
temporary file and a rename, so a crash never leaves a half-written or duplicated line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator, Optional

from lenet.config import LoggerConfig, WandbMode
from lenet.errors import UserError

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; give it the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that readers see the old or the new file, never a part."""
    with atomic_file(path) as tmp, open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The per-epoch records of a run, in order; empty when the run logged none."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_summary(run_dir: Path) -> Optional[dict[str, Any]]:
    """The run's summary.json, or None when there is none."""
    path = run_dir / SUMMARY_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def resolve_wandb_mode(mode: Optional[WandbMode]) -> str:
    """The W&B mode to use: the configured one, else $WANDB_MODE, else offline."""
    if mode is not None:
        return mode.value
    return os.environ.get("WANDB_MODE") or "offline"


_wandb_setup: Optional[threading.Thread] = None  # started by prepare_wandb, joined by start_wandb


def prepare_wandb(mode: Optional[WandbMode]) -> None:
    """Import W&B and start its service process on a thread; call it before torch is imported.

    Measured on a 2-core CPU: W&B then adds ~0.5 s to a run's start-up instead of ~1.2 s. wandb.init
    imports W&B Launch on every call (wandb 0.31), 0.15 s before torch is imported and 0.6 s after
    (pydantic looks up its models' docstrings through a walk of sys.modules, which torch fills); and
    W&B's service process boots while torch is being imported instead of after.
    """
    global _wandb_setup
    if _wandb_setup is not None or resolve_wandb_mode(mode) == "disabled":
        return
    import wandb

    with contextlib.suppress(ImportError):  # a private module: only the import's timing is at stake
        import wandb.sdk.launch.inputs.internal  # noqa: F401

    def setup() -> None:
        try:
            wandb.setup()
        except Exception:  # wandb.init starts the service again and reports what goes wrong
            log.debug("starting the W&B service ahead of wandb.init failed", exc_info=True)

    _wandb_setup = threading.Thread(target=setup, name="wandb-setup")
    _wandb_setup.start()


def start_wandb(
    cfg: LoggerConfig, run_dir: Path, config: dict[str, Any], group: Optional[str], name: Optional[str]
) -> Any:
    """Start a W&B run whose files live in ``run_dir``; fail fast when online without credentials."""
    import wandb

    if _wandb_setup is not None:
        _wandb_setup.join()
    mode = resolve_wandb_mode(cfg.mode)
    # W&B's own settings read $WANDB_MODE; make them agree with logger.mode for this run only, so
    # the next job of a sweep in this process resolves its mode from the user's environment again
    previous = os.environ.get("WANDB_MODE")
    os.environ["WANDB_MODE"] = mode
    try:
        if mode == "online" and not wandb.login(prompt=False, verify=False):
            raise UserError(
                "logger.mode=online needs W&B credentials and none are configured: run `wandb login` "
                "or set WANDB_API_KEY, or log offline with logger.mode=offline and `wandb sync` later"
            )
        return wandb.init(
            dir=str(run_dir),
            mode=mode,
            project=cfg.project,
            entity=cfg.entity,
            group=cfg.group or group,
            name=cfg.name or name,
            tags=list(cfg.tags) or None,
            config=config,
            reinit="finish_previous",  # a previous job of the sweep in this process must never leak in
            settings=wandb.Settings(console="off", silent=True),
        )
    finally:
        if previous is None:
            os.environ.pop("WANDB_MODE", None)
        else:
            os.environ["WANDB_MODE"] = previous


class Tracker:
    """Records one run: metrics and summary files in its dir, mirrored to a W&B run if given."""

    def __init__(self, run_dir: Path, wandb_run: Any = None):
        self.run_dir = run_dir
        self.wandb_run = wandb_run

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        """Write all epochs so far to metrics.jsonl, replacing what it held."""
        write_atomic(self.run_dir / METRICS_FILE, "".join(json.dumps(row) + "\n" for row in history))

    def log_epoch(self, history: list[dict[str, Any]]) -> None:
        """Write all epochs so far to metrics.jsonl and send the newest to W&B."""
        self.write_metrics(history)
        if self.wandb_run is not None and history:
            self.wandb_run.log(history[-1], step=history[-1]["epoch"])

    def replay(self, history: list[dict[str, Any]]) -> None:
        """Send the epochs a resumed run had finished before to its new W&B run."""
        if self.wandb_run is None:
            return
        for row in history:
            self.wandb_run.log(row, step=row["epoch"])

    def log_weights(self, path: Path, artifact_name: str) -> None:
        """Upload the weights file as a W&B model artifact."""
        if self.wandb_run is None:
            return
        import wandb

        artifact = wandb.Artifact(artifact_name, type="model")
        artifact.add_file(str(path))
        self.wandb_run.log_artifact(artifact)

    def finish(self, summary: dict[str, Any], exit_code: int) -> None:
        """Write summary.json and finish the W&B run, marked failed when ``exit_code`` is not 0."""
        write_atomic(self.run_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
        if self.wandb_run is not None:
            try:
                keys = ("status", "final_test_acc", "best_test_acc", "best_epoch", "num_params", "wall_seconds")
                self.wandb_run.summary.update({k: summary[k] for k in keys if summary.get(k) is not None})
            finally:
                self.wandb_run.finish(exit_code=exit_code)
                self.wandb_run = None
