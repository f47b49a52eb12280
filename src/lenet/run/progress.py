"""A progress bar over each epoch's steps (``trainer.progress``; by default only when stderr is a terminal)."""

from __future__ import annotations

import math
from typing import Any

from lenet.training.callbacks import Callback


class ProgressBar(Callback):
    """tqdm's bar of the current epoch's steps, on stderr, gone when the epoch ends."""

    def __init__(self, epochs: int, images: int, batch_size: int):
        self.epochs, self.steps = epochs, math.ceil(images / batch_size)
        self.bar: Any = None

    def on_epoch_start(self, run: Any) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=self.steps, desc=f"epoch {run.epoch + 1}/{self.epochs}", unit="batch", leave=False, dynamic_ncols=True
        )

    def on_step_end(self, run: Any, loss: Any) -> None:
        self.bar.update()

    def on_epoch_end(self, run: Any, row: dict[str, Any]) -> None:
        self.bar.close()
