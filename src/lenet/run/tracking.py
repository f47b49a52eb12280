"""Where a run's results go: ``metrics.jsonl``, the final weights and ``summary.json`` in its dir, and its loggers.

``Tracking`` is the callback the harness adds to every run. ``metrics.jsonl`` (one JSON object per
epoch) is rewritten whole through a temporary file and a rename, so a crash never leaves a half-written
or duplicated line; the summary is written through ``lenet.run.outcome``, its owner.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

from lenet.run.files import save_torch, write_text
from lenet.run.loggers import Loggers
from lenet.run.outcome import write_summary
from lenet.training.callbacks import Callback
from lenet.training.state import TrainState

log = logging.getLogger(__name__)
METRICS_FILE = "metrics.jsonl"
BEST_WEIGHTS = "best.pth"  # the weights of the best epoch (trainer.best), beside the final ones


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The per-epoch records of a run, in order; empty when the run logged none."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def weights_file(run_dir: Path, dataset: str) -> Path:
    """Where a run's final weights go: ``lenet_<dataset>.pth``."""
    return run_dir / f"lenet_{dataset}.pth"


class StepLogging(Callback):
    """The training loss to the loggers every ``every`` steps: summed on the device, read once per ``every`` steps."""

    def __init__(self, loggers: Loggers, every: int):
        self.loggers, self.every = loggers, every
        self.sum: Any = None
        self.count = 0

    def on_step_end(self, run: TrainState, loss: Any) -> None:
        self.sum = loss.float() if self.sum is None else self.sum + loss.float()  # no host sync
        self.count += 1
        if run.step % self.every == 0:
            self.loggers.log_step({"train_loss_step": self.sum.item() / self.count}, step=run.step)
            self.sum, self.count = None, 0


class Tracking(Callback):
    """Records one run: each epoch in metrics.jsonl and the loggers, the final weights, and the summary at the end."""

    def __init__(
        self, run_dir: Path, epochs: int, weights: Path, loggers: Optional[Loggers] = None, logger: Any = None
    ):
        self.run_dir, self.epochs, self.weights = run_dir, epochs, weights
        self.loggers = loggers or Loggers()
        self.log = logger or log  # where its lines go: the run's console and train.log

    def on_fit_start(self, run: TrainState) -> None:
        self._write_metrics(run.history)  # a resumed run drops epochs logged after its checkpoint was written
        per_epoch = run.step // run.epoch if run.epoch else 0  # every epoch takes the same steps
        self.loggers.resume([(row, row["epoch"] * per_epoch) for row in run.history])  # each at the step ending it

    def on_epoch_end(self, run: TrainState, row: dict[str, Any]) -> None:
        self._write_metrics(run.history)
        self.loggers.log_row(row, step=run.step)
        val = f"  val_loss {row['val_loss']:.4f}  val_acc {100 * row['val_acc']:.2f}%" if "val_acc" in row else ""
        self.log.info(
            "epoch %d/%d  train_loss %.4f%s  test_loss %.4f  test_acc %.2f%%  lr %.3g  %.1fs",
            row["epoch"],
            self.epochs,
            row["train_loss"],
            val,
            row["test_loss"],
            100 * row["test_acc"],
            row["lr"],
            row["seconds"],
        )

    def on_fit_end(self, run: TrainState, summary: dict[str, Any]) -> None:
        save_torch(run.eval_model.state_dict(), self.weights)  # a crash never leaves a truncated weights file
        summary["weights"] = self.weights.name
        self.loggers.log_file(self.weights, "model")
        early = f"; stopped early: {run.stop_reason}" if run.stop_reason and run.epoch < self.epochs else ""
        threads = f"; {summary['num_threads']} CPU threads" if summary.get("device") == "cpu" else ""
        if not run.history:  # asked to stop before its first epoch
            self.log.info(
                "done before any epoch%s; run dir %s; weights (as initialised) %s", early, self.run_dir, self.weights
            )
            return
        of = "" if run.eval_weights == "model" else f" of the {run.eval_weights} weights"
        best = ""
        if summary.get("best_epoch") is not None:
            best = (
                f"; best epoch {summary['best_epoch']} by {summary['selected_on']} (test accuracy there "
                f"{100 * summary['best_test_acc']:.2f}%, weights {BEST_WEIGHTS})"
            )
        self.log.info(
            "done: final test accuracy%s %.2f%%%s%s%s; run dir %s; weights %s",
            of,
            100 * run.history[-1]["test_acc"],
            best,
            early,
            threads,
            self.run_dir,
            self.weights,
        )

    def _write_metrics(self, history: list[dict[str, Any]]) -> None:
        write_text(self.run_dir / METRICS_FILE, "".join(json.dumps(row) + "\n" for row in history))

    def finish(self, summary: dict[str, Any], exit_code: int, write: bool = True) -> None:
        """Write summary.json (unless told not to) and finish the loggers, marked failed when ``exit_code`` is not 0."""
        if write:
            write_summary(self.run_dir, summary)
        self.loggers.finish(summary, exit_code)
