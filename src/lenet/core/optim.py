"""The training recipe from config: a ``torch.optim`` optimizer and a ``torch.optim.lr_scheduler`` scheduler.

Both groups name their class with ``_target_`` and carry its own arguments (Hydra's ``_partial_``
pattern, as in lightning-hydra-template); the harness adds the model's parameters and the run's
length. A model may offer parameter groups, nanoGPT-style, through a ``parameter_groups()`` method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional

import torch
from torch import nn

from lenet.core.errors import ConfigError
from lenet.core.factory import accepted_arguments, bind, call

# keys of a scheduler node that tell the harness how to drive it; the rest are the scheduler's arguments
SCHEDULER_KEYS = ("interval", "monitor")
INTERVALS = ("step", "epoch")


def optimizer_params(model: nn.Module) -> Iterable[Any]:
    """The model's own parameter groups when it offers them (``model.parameter_groups()``), else its parameters."""
    groups = getattr(model, "parameter_groups", None)
    return groups() if callable(groups) else model.parameters()


def build_optimizer(model: nn.Module, cfg: Mapping[str, Any], device: torch.device) -> torch.optim.Optimizer:
    """The optimizer that ``cfg`` names, over ``model``'s parameters.

    Unless the config sets ``fused`` or ``foreach``, torch's fused kernel is used where the class
    and the device have one, else its foreach implementation: the fastest steps torch offers.
    """
    lr = cfg.get("lr")
    if isinstance(lr, (int, float)) and not (math.isfinite(lr) and lr > 0):  # torch lets NaN through
        raise ConfigError(f"optimizer.lr must be a finite number > 0, got {lr!r}")
    bound = bind(cfg, "optimizer")
    accepted, _ = accepted_arguments(bound.func)
    if "fused" in bound.keywords or "foreach" in bound.keywords:
        choices: list[dict[str, bool]] = [{}]
    else:
        choices = [{k: True} for k in ("fused", "foreach") if k in accepted] + [{}]
    for choice in choices[:-1]:
        try:
            return call(bound, "optimizer", optimizer_params(model), offered=choice)
        except RuntimeError:  # torch refuses fused (or foreach) for these parameters or this device
            continue
    return call(bound, "optimizer", optimizer_params(model), offered=choices[-1])


@dataclass
class Scheduler:
    """A torch LR scheduler and when the training loop steps it."""

    scheduler: Any  # a torch.optim.lr_scheduler.LRScheduler or ReduceLROnPlateau
    interval: str  # step | epoch
    monitor: Optional[str] = None  # the metrics.jsonl key ReduceLROnPlateau watches

    def step_epoch(self, row: Mapping[str, Any]) -> None:
        """Step at the end of an epoch, with the watched metric of its ``row`` when the scheduler takes one."""
        if self.interval != "epoch":
            return
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(row[self.monitor])
        else:
            self.scheduler.step()

    def step_batch(self) -> None:
        """Step after an optimizer step, when the scheduler steps per step."""
        if self.interval == "step":
            self.scheduler.step()


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: Mapping[str, Any], epochs: int, steps_per_epoch: int, metrics: list[str]
) -> Scheduler:
    """The scheduler that ``cfg`` names, offered the run's length in its own steps (``total_steps``, ...).

    ``metrics`` are the keys of a metrics.jsonl row, one of which ``monitor`` must name for ReduceLROnPlateau.
    """
    interval = cfg.get("interval", "step")
    if interval not in INTERVALS:
        raise ConfigError(f"scheduler.interval must be step or epoch, got {interval!r}")
    per_epoch = steps_per_epoch if interval == "step" else 1
    offered = {"total_steps": epochs * per_epoch, "steps_per_epoch": per_epoch, "epochs": epochs}
    scheduler = call(bind(cfg, "scheduler", reserved=SCHEDULER_KEYS), "scheduler", optimizer, offered=offered)
    monitor = cfg.get("monitor")
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        if interval != "epoch":
            raise ConfigError("ReduceLROnPlateau steps once per epoch: set scheduler.interval=epoch")
        if monitor is None and "val_loss" not in metrics:
            raise ConfigError(
                "ReduceLROnPlateau watches the validation loss, and data.val_size=0 leaves no validation split: set "
                "data.val_size, or scheduler.monitor=test_loss explicitly (selection on the test set)"
            )
        monitor = monitor or "val_loss"
    if monitor is not None and monitor not in metrics:
        raise ConfigError(f"scheduler.monitor must be one of {', '.join(metrics)}, got {monitor!r}")
    if not hasattr(scheduler, "step") or not hasattr(scheduler, "state_dict"):
        raise ConfigError(f"scheduler._target_={cfg['_target_']} did not build a scheduler (no step/state_dict)")
    return Scheduler(scheduler, interval, monitor)
