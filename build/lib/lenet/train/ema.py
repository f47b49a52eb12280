"""``callbacks=ema``: an exponential moving average of the weights, evaluated and saved in their place.

The average is ``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn(decay)``, updated
after every optimizer step. Each epoch's evaluation, the final weights file and the summary use the
average (``summary.json``: ``eval_weights: ema(decay=...)``); its state is in every checkpoint, so a
resumed run ends exactly as an uninterrupted one.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from lenet.train.callbacks import Callback


class EMA(Callback):
    """Keep ``decay * average + (1 - decay) * weights`` after each step; evaluate and save the average."""

    def __init__(self, decay: float = 0.999):
        if not 0 < decay < 1:
            raise ValueError(f"decay must be in (0, 1), got {decay!r}")
        self.decay = float(decay)
        self.average: Optional[AveragedModel] = None
        self._restored: Optional[Mapping[str, Any]] = None

    def on_fit_start(self, run: Any) -> None:
        # buffers (e.g. fixed RBF centres) follow the model: only the parameters are averaged
        self.average = AveragedModel(run.model, multi_avg_fn=get_ema_multi_avg_fn(self.decay))
        if self._restored is not None:
            self.average.load_state_dict(self._restored)
        run.eval_model = self.average.module
        run.eval_weights = f"ema(decay={self.decay:g})"

    @torch.no_grad()
    def on_step_end(self, run: Any, loss: Any) -> None:
        self.average.update_parameters(run.model)

    def state_dict(self) -> dict[str, Any]:
        """The averaged weights and how many steps they average."""
        return {} if self.average is None else self.average.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a checkpoint's average (applied when the run starts)."""
        self._restored = state or None
