"""Optimizers and learning-rate schedules built from their config nodes."""

from __future__ import annotations

import math
from typing import Iterable, Optional

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR, StepLR

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
            progress = (step - warmup) / max(1, total_steps - warmup)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        return LambdaLR(optimizer, factor)
    if isinstance(cfg, OneCycleConfig):
        return OneCycleLR(
            optimizer,
            max_lr=optimizer.param_groups[0]["lr"],
            total_steps=total_steps,
            pct_start=cfg.pct_start,
            div_factor=cfg.div_factor,
            final_div_factor=cfg.final_div_factor,
            cycle_momentum=False,  # keep the optimizer's momentum/betas as configured
        )
    if cfg.name == "none":
        return None
    raise TypeError(f"no scheduler for {type(cfg).__name__} named {cfg.name!r}")
