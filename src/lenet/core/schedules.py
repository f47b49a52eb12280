"""The harness's learning-rate schedules: functions of the step, applied through torch's ``LambdaLR``.

Each takes the optimizer and the run's length (``total_steps``, ``steps_per_epoch``: counted in the
scheduler's own steps, so per epoch when its ``interval`` is ``epoch``) and returns a ``LambdaLR``
whose factor multiplies every parameter group's initial lr. Any other ``torch.optim.lr_scheduler``
class works from the config as well; these are the ones shipped as options.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch.optim.lr_scheduler import LambdaLR


def _half_cosine(start: float, end: float, progress: float) -> float:
    """From ``start`` at progress 0 to ``end`` at progress 1 along half a cosine."""
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))


def _constant_factor(step: int) -> float:
    return 1.0


def _step_factor(step: int, step_size: int, gamma: float) -> float:
    return gamma ** (step // step_size)


def _cosine_factor(step: int, warmup: int, total_steps: int, floor: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return _half_cosine(1.0, floor, min(1.0, (step - warmup) / max(1, total_steps - warmup)))


def _onecycle_factor(step: int, peak_step: float, total_steps: int, start: float, end: float) -> float:
    if step < peak_step:
        return _half_cosine(start, 1.0, step / peak_step)
    return _half_cosine(1.0, end, min(1.0, (step - peak_step) / max(1e-9, total_steps - 1 - peak_step)))


def _require(ok: bool, key: str, allowed: str, value: float) -> None:
    if not ok:
        raise ValueError(f"{key} must be {allowed}, got {value!r}")


def constant(optimizer: torch.optim.Optimizer) -> LambdaLR:
    """Keep every group's lr as the optimizer was given it."""
    return LambdaLR(optimizer, partial(_constant_factor))


def step(optimizer: torch.optim.Optimizer, steps_per_epoch: int, step_epochs: int = 4, gamma: float = 0.1) -> LambdaLR:
    """Multiply the lr by ``gamma`` every ``step_epochs`` epochs."""
    _require(step_epochs >= 1, "step_epochs", ">= 1", step_epochs)
    _require(0 < gamma <= 1, "gamma", "in (0, 1]", gamma)
    return LambdaLR(optimizer, partial(_step_factor, step_size=step_epochs * steps_per_epoch, gamma=gamma))


def cosine(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    warmup_epochs: float = 0.0,
    min_lr: float = 0.0,
) -> LambdaLR:
    """Linear warm-up from 0 over ``warmup_epochs``, then half a cosine down to ``min_lr`` at the end."""
    epochs = total_steps / steps_per_epoch
    _require(0 <= warmup_epochs < epochs, "warmup_epochs", "in [0, trainer.epochs)", warmup_epochs)
    warmup = round(warmup_epochs * steps_per_epoch)
    factors = []
    for group in optimizer.param_groups:
        _require(0 <= min_lr < group["lr"], "min_lr", f"in [0, the optimizer's lr {group['lr']})", min_lr)
        factors.append(partial(_cosine_factor, warmup=warmup, total_steps=total_steps, floor=min_lr / group["lr"]))
    return LambdaLR(optimizer, factors)


def onecycle(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    pct_start: float = 0.25,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> LambdaLR:
    """torch's OneCycleLR lr (cosine annealing, two phases) peaking at the optimizer's lr; momentum is left alone."""
    _require(0 < pct_start < 1, "pct_start", "in (0, 1)", pct_start)
    _require(math.isfinite(div_factor) and div_factor > 0, "div_factor", "> 0", div_factor)
    _require(math.isfinite(final_div_factor) and final_div_factor > 0, "final_div_factor", "> 0", final_div_factor)
    factor = partial(
        _onecycle_factor,
        peak_step=pct_start * total_steps - 1,
        total_steps=total_steps,
        start=1 / div_factor,
        end=1 / (div_factor * final_div_factor),
    )
    return LambdaLR(optimizer, factor)
