"""Optimizers and learning-rate schedules built from their config nodes."""

from __future__ import annotations

import math
from typing import Iterable, Optional

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, StepLR

from lenet.config import AdamConfig, AdamWConfig, CosineConfig, OneCycleConfig, OptimizerConfig, SGDConfig, StepConfig
from lenet.config import SchedulerConfig


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """The torch optimizer that ``cfg`` describes."""
    if isinstance(cfg, SGDConfig):
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
        )
    if isinstance(cfg, AdamConfig):
        cls = torch.optim.AdamW if isinstance(cfg, AdamWConfig) else torch.optim.Adam
        return cls(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=cfg.weight_decay)
    raise TypeError(f"no optimizer for {type(cfg).__name__}")


def _cosine(start: float, end: float, progress: float) -> float:
    """From ``start`` at progress 0 to ``end`` at progress 1 along half a cosine."""
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, epochs: int, steps_per_epoch: int
) -> Optional[LRScheduler]:
    """A per-step lr schedule over ``epochs * steps_per_epoch`` steps, or None for a constant lr."""
    total_steps = epochs * steps_per_epoch
    if isinstance(cfg, StepConfig):
        return StepLR(optimizer, step_size=cfg.step_epochs * steps_per_epoch, gamma=cfg.gamma)
    if isinstance(cfg, CosineConfig):
        base_lr = optimizer.param_groups[0]["lr"]
        warmup = round(cfg.warmup_epochs * steps_per_epoch)
        floor = cfg.min_lr / base_lr

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return _cosine(1.0, floor, min(1.0, (step - warmup) / max(1, total_steps - warmup)))

        return LambdaLR(optimizer, factor)
    if isinstance(cfg, OneCycleConfig):
        # torch's OneCycleLR formulas (cosine, two phases), but also valid for runs of very few steps
        start, end = 1 / cfg.div_factor, 1 / (cfg.div_factor * cfg.final_div_factor)
        peak_step = cfg.pct_start * total_steps - 1

        def factor(step: int) -> float:
            if step < peak_step:
                return _cosine(start, 1.0, step / peak_step)
            return _cosine(1.0, end, min(1.0, (step - peak_step) / max(1e-9, total_steps - 1 - peak_step)))

        return LambdaLR(optimizer, factor)
    if cfg.name == "none":
        return None
    raise TypeError(f"no scheduler for {type(cfg).__name__} named {cfg.name!r}")
