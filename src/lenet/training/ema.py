"""``callbacks=ema``: an exponential moving average of the weights, evaluated and saved in their place.

The average is ``torch.optim.swa_utils.AveragedModel``, updated after every optimizer step. Its decay
warms up as timm's ``ModelEmaV3`` does: at update ``t`` it is ``min(decay, 1 - (1 + t) ** -warmup_power)``,
so that over a short run the average is not dominated by the initial weights (0.84 after 15 updates,
0.98 after 350, 0.998 after 11,000); ``warmup=false`` keeps ``decay`` from the first update. Each epoch's
evaluation, the final weights file and the summary use the average (``summary.json``: ``eval_weights:
ema(decay=...)``); its state is in every checkpoint, so a resumed run ends exactly as an uninterrupted one.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
from torch.optim.swa_utils import AveragedModel

from lenet.training.callbacks import Callback


class EMA(Callback):
    """Keep ``d * average + (1 - d) * weights`` after each step (``d`` warming up to ``decay``); evaluate and save it."""

    def __init__(self, decay: float = 0.999, warmup: bool = True, warmup_power: float = 2 / 3):
        if not 0 < decay < 1:
            raise ValueError(f"decay must be in (0, 1), got {decay!r}")
        if not warmup_power > 0:
            raise ValueError(f"warmup_power must be > 0, got {warmup_power!r}")
        self.decay, self.warmup, self.warmup_power = float(decay), bool(warmup), float(warmup_power)
        self.average: Optional[AveragedModel] = None
        self.updates = 0  # kept on the host: the decay never waits for the device
        self._restored: Optional[Mapping[str, Any]] = None

    def decay_at(self, update: int) -> float:
        """The decay of update number ``update`` (0 for the first, which copies the weights)."""
        if not self.warmup:
            return self.decay
        return min(self.decay, 1 - (1 + update) ** -self.warmup_power)

    def _average(self, averaged: list[torch.Tensor], current: list[torch.Tensor], _: Any) -> None:
        weight = 1 - self.decay_at(self.updates)
        for a, c in zip(averaged, current):
            a.lerp_(c, weight)

    def on_fit_start(self, run: Any) -> None:
        # buffers (e.g. fixed RBF centres) follow the model: only the parameters are averaged
        self.average = AveragedModel(run.model, multi_avg_fn=self._average)
        if self._restored is not None:
            self.average.load_state_dict(self._restored)
            self.updates = int(self.average.n_averaged.item())
        run.eval_model = self.average.module
        run.eval_weights = f"ema(decay={self.decay:g})"

    @torch.no_grad()
    def on_step_end(self, run: Any, loss: Any) -> None:
        self.average.update_parameters(run.model)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        """The averaged weights and how many steps they average."""
        return {} if self.average is None else self.average.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a checkpoint's average (applied when the run starts)."""
        self._restored = state or None
