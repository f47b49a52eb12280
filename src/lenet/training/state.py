"""What a run trains with and what it has done: one object, saved and restored whole.

``TrainState`` is what the loop advances and what every callback receives as ``run``. Its
``state_dict()`` is the checkpoint's content (model, optimizer, scheduler, random-number states,
steps, epochs, history and each callback's own state), so a run restored from it continues bit for
bit where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch
from torch import nn

from lenet.core.optim import Scheduler


def global_rng_state() -> dict[str, Any]:
    """The states of torch's global generators: the CPU's and, where there are any, every GPU's."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_global_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what ``global_rng_state`` saved."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """The random-number states that decide what happens next in training."""
    return {**global_rng_state(), "shuffle": generator.get_state()}


def set_rng_state(state: Mapping[str, Any], generator: torch.Generator) -> None:
    """Restore what ``rng_state`` saved."""
    set_global_rng_state(state)
    generator.set_state(state["shuffle"])


def _plain_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state as built from the config: a captured step's tensor lrs and capturable flags undone.

    So that a checkpoint resumes the same on any device, graphs or not (lenet.training.graphed_step).
    """
    state = optimizer.state_dict()
    for group in state["param_groups"]:  # copies of the optimizer's groups
        if isinstance(group.get("lr"), torch.Tensor):
            group["lr"] = group["lr"].item()
        if "capturable" in group and "capturable" in optimizer.defaults:
            group["capturable"] = optimizer.defaults["capturable"]
    return state


@dataclass
class TrainState:
    """The model and recipe a run trains with, its progress, and where it runs.

    ``model`` is trained; ``eval_model`` is what is evaluated and saved (the model itself unless a
    callback, such as the EMA, sets another, naming it in ``eval_weights``).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Scheduler
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    generator: torch.Generator  # shuffling and augmentation
    callbacks: Mapping[str, Any] = field(default_factory=dict)  # name -> callback: their states are saved too
    step: int = 0  # optimizer steps so far
    epoch: int = 0  # epochs finished
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per finished epoch
    stop_reason: Optional[str] = None  # set by request_stop: the run ends after the current epoch
    run_dir: Optional[Path] = None
    config: Mapping[str, Any] = field(default_factory=dict)  # the run's resolved config
    row_keys: list[str] = field(default_factory=list)  # the keys each epoch's row will hold
    eval_model: Optional[nn.Module] = None
    eval_weights: str = "model"  # what eval_model is, e.g. "ema(decay=0.999)"
    notes: dict[str, Any] = field(
        default_factory=dict
    )  # how the loop ran (cuda_graphs, compile_seconds): for the summary
    compiled: Optional[nn.Module] = None  # the model as called in training and evaluation when torch.compile'd
    error: Optional[BaseException] = None  # why the run ended early: its loss diverged or its own code raised

    def __post_init__(self) -> None:
        if self.eval_model is None:
            self.eval_model = self.model

    @property
    def lr(self) -> float:
        """The learning rate of the first parameter group, as the next step will use it."""
        return float(self.optimizer.param_groups[0]["lr"])  # a tensor under a captured step

    def request_stop(self, reason: str) -> None:
        """End the run after the current epoch, for ``reason`` (the first request is kept)."""
        if self.stop_reason is None:
            self.stop_reason = reason

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run exactly: tensors, numbers, strings and containers only."""
        return {
            "model": self.model.state_dict(),
            "optimizer": _plain_optimizer_state(self.optimizer),
            "scheduler": self.scheduler.scheduler.state_dict(),
            "rng": rng_state(self.generator),
            "step": self.step,
            "epoch": self.epoch,
            "history": self.history,
            "stop_reason": self.stop_reason,
            "callbacks": {
                name: cb.state_dict()
                for name, cb in self.callbacks.items()
                if callable(getattr(cb, "state_dict", None))
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from what ``state_dict`` returned."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.scheduler.load_state_dict(state["scheduler"])  # its step count places the lr schedule
        set_rng_state(state["rng"], self.generator)
        self.history = list(state["history"])
        self.epoch = int(state.get("epoch", len(self.history)))
        self.step = int(state.get("step", 0))  # checkpoints made before callbacks did not count steps
        self.stop_reason = state.get("stop_reason")
        saved = state.get("callbacks", {})
        for name, cb in self.callbacks.items():
            if name in saved and callable(getattr(cb, "load_state_dict", None)):
                cb.load_state_dict(saved[name])
