"""``callbacks=grad_clip``: clip the gradients' total norm before each optimizer step (``torch.nn.utils.clip_grad_norm_``)."""

from __future__ import annotations

import math
from typing import Any

import torch

from lenet.training.callbacks import Callback


class GradClip(Callback):
    """Scale the gradients so that their total ``norm_type`` norm is at most ``max_norm``."""

    graph_safe = True  # tensor work only: a captured step (trainer.cuda_graphs) may include it

    def __init__(self, max_norm: float = 1.0, norm_type: float = 2.0):
        if not (math.isfinite(max_norm) and max_norm > 0):
            raise ValueError(f"max_norm must be a finite number > 0, got {max_norm!r}")
        self.max_norm, self.norm_type = float(max_norm), float(norm_type)

    def on_before_optimizer_step(self, run: Any) -> None:
        # the norm stays a tensor on the device: no host sync
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), self.max_norm, self.norm_type, foreach=True)
