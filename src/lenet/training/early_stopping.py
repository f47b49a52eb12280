"""``callbacks=early_stopping``: end a run whose monitored metric stopped improving (Lightning's keys).

``monitor`` is any key of a metrics.jsonl row (``val_loss`` by default, ``val_acc``, ``val_top5``, ...;
the harness checks it before the run starts, and says so in one line when it is a ``test_*`` key: that
selects on the test set); the run ends after ``patience`` epochs in a row without an improvement of more
than ``min_delta`` (in ``mode``: ``min`` or ``max``). It ends ``completed``: its summary's
``stopped_early`` and its last line say why.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

from lenet.training.callbacks import Callback


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` epochs."""

    def __init__(self, monitor: str = "val_loss", mode: str = "min", patience: int = 3, min_delta: float = 0.0):
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be min or max, got {mode!r}")
        if patience < 1 or min_delta < 0:
            raise ValueError(f"patience must be >= 1 and min_delta >= 0, got {patience!r} and {min_delta!r}")
        self.monitor, self.mode, self.patience, self.min_delta = monitor, mode, int(patience), float(min_delta)
        self.best: Optional[float] = None
        self.best_epoch = 0
        self.wait = 0

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return math.isfinite(value)
        return value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta

    def on_epoch_end(self, run: Any, row: dict[str, Any]) -> None:
        value = float(row[self.monitor])
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, row["epoch"], 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            best = "none finite" if self.best is None else f"best {self.best:.4g} in epoch {self.best_epoch}"
            run.request_stop(
                f"{self.monitor} did not improve by more than {self.min_delta:g} in {self.patience} "
                f"epoch{'s' if self.patience > 1 else ''} ({best})"
            )

    def state_dict(self) -> dict[str, Any]:
        """The best value so far, its epoch, and the epochs waited since."""
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue counting from a checkpoint."""
        self.best, self.best_epoch, self.wait = state["best"], state["best_epoch"], state["wait"]
