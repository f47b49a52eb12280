"""Several runs of one architecture taking their steps as one program: the only code a fused group has of its own.

Each run of the group is a ``TrainState`` like any other (its own model, optimizer, schedule, random
numbers and callbacks) driven by the same ``fit``; ``VmappedSteps`` is how the group takes a step. The
runs' parameters are stacked and the model is called once for all of them (``torch.func.vmap`` over
``functional_call``); each run's loss is its own, so the gradients that reach its parameters are exactly
those of its model trained alone, and its own optimizer then steps it (after its callbacks'
``on_before_optimizer_step``). Evaluation stacks the weights each run evaluates and calls the model once
per batch for all of them.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Iterable, Optional, Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap

from lenet.core.data import Split
from lenet.core.metrics import build_metrics, compute
from lenet.training.callbacks import Callbacks
from lenet.training.loop import FitSettings, autocast
from lenet.training.state import TrainState


def draws_random_numbers(model: nn.Module, sample: torch.Tensor) -> bool:
    """Whether ``model``'s forward in training mode draws from torch's global generators (dropout and the like).

    Such a run cannot share a program (its draws would not be those of the run alone) nor a process's
    generators with runs on other threads: it trains alone. Checked on a copy, the generators put back.
    """
    probe = copy.deepcopy(model).train()
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        with torch.no_grad():
            probe(sample)
        drew = not torch.equal(cpu, torch.get_rng_state())
        if cuda is not None:
            drew = drew or any(not torch.equal(a, b) for a, b in zip(cuda, torch.cuda.get_rng_state_all()))
        return drew
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def _stacked(modules: Iterable[nn.Module]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The modules' parameters and buffers, each stacked along a new first dimension (one entry per module)."""
    modules = list(modules)
    params = [dict(m.named_parameters()) for m in modules]
    buffers = [dict(m.named_buffers()) for m in modules]
    return (
        {name: torch.stack([p[name] for p in params]) for name in params[0]},
        {name: torch.stack([b[name] for b in buffers]) for name in buffers[0]},
    )


def _once(loss: torch.Tensor) -> Callable[[], torch.Tensor]:
    """A closure that hands an optimizer the loss the group computed, once: an optimizer that evaluates it again
    (LBFGS) cannot step inside a group."""
    calls = []

    def closure() -> torch.Tensor:
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("this optimizer evaluates the loss several times per step: train it without fusing")
        return loss

    return closure


class VmappedSteps:
    """Steps and evaluation of a fused group's runs as one program (``lenet.training.loop.Steps``)."""

    def __init__(self, settings: FitSettings):
        self.settings = settings
        self.template: Optional[nn.Module] = None  # the architecture, called with each run's tensors
        self.loss_fn: Any = None

    def prepare(self, runs: Sequence[TrainState], settings: FitSettings, callbacks: Sequence[Callbacks]) -> None:
        if runs:
            self.template = copy.deepcopy(runs[0].model).requires_grad_(False)
            self.loss_fn = runs[0].loss_fn

    def _forward(self, params: dict, buffers: dict, x: torch.Tensor, shared_input: bool) -> torch.Tensor:
        def one(p: dict, b: dict, xi: torch.Tensor) -> torch.Tensor:
            return functional_call(self.template, (p, b), (xi,))

        return vmap(one, in_dims=(0, 0, None if shared_input else 0))(params, buffers, x)

    def train_step(
        self,
        runs: Sequence[TrainState],
        batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
        callbacks: Sequence[Callbacks],
    ) -> list[Optional[torch.Tensor]]:
        """One step of every run: one forward and backward for all, then each run's own optimizer step."""
        x = torch.stack([b[0] for b in batches])
        y = torch.stack([b[1] for b in batches])
        for run in runs:
            run.optimizer.zero_grad()
        params, buffers = _stacked(run.model for run in runs)
        self.template.train()
        with autocast(x.device, self.settings.bf16):
            scores = self._forward(params, buffers, x, shared_input=False)
            losses = vmap(self.loss_fn)(scores, y)
        losses.sum().backward()  # each run's gradients are those of its own loss
        self._write_back(runs, buffers)
        stepped: list[Optional[torch.Tensor]] = []
        for k, (run, hooks) in enumerate(zip(runs, callbacks)):
            try:
                hooks.on_before_optimizer_step(run)
                run.optimizer.step(_once(losses[k]))
                stepped.append(losses[k].detach())
            except Exception as e:  # its own code raised: it ends alone
                run.error = e
                stepped.append(None)
        return stepped

    @staticmethod
    def _write_back(runs: Sequence[TrainState], buffers: dict[str, torch.Tensor]) -> None:
        """Each run's buffers as its forward in training mode left them (running statistics)."""
        with torch.no_grad():
            for k, run in enumerate(runs):
                for name, buffer in run.model.named_buffers():
                    buffer.copy_(buffers[name][k])

    def evaluate(self, runs: Sequence[TrainState], split: Split, name: str) -> list[Optional[dict[str, Any]]]:
        """``<name>_loss``, ``<name>_acc`` and the metrics of each run's evaluated weights on ``split``."""
        params, buffers = _stacked(run.eval_model for run in runs)
        images, labels = split.images, split.labels
        loss_sums = torch.zeros(len(runs), device=images.device)
        scores = []
        self.template.eval()
        with torch.inference_mode():
            for start in range(0, len(labels), self.settings.eval_batch_size):
                x, y = (
                    images[start : start + self.settings.eval_batch_size],
                    labels[start : start + self.settings.eval_batch_size],
                )
                with autocast(images.device, self.settings.bf16):
                    logits = self._forward(params, buffers, x, shared_input=True)
                    loss_sums += vmap(self.loss_fn, in_dims=(0, None))(logits, y).float() * len(y)
                scores.append(logits.float())
            all_scores = torch.cat(scores, dim=1)
            losses = (loss_sums / len(labels)).tolist()
            metrics = self.settings.metrics if self.settings.metrics is not None else build_metrics([])
            return [
                {f"{name}_loss": losses[k], **compute(metrics, all_scores[k], labels, name)} for k in range(len(runs))
            ]
