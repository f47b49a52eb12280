"""Several runs of one architecture trained as one program: a fused group.

Each member keeps its own parameters (leaf tensors), initial weights, shuffle order, augmentation
draws and optimizer state: the optimizer holds one parameter group per member, so ``torch.optim`` does
every update with that member's own settings (lr, weight decay, momentum, ...), and the schedule steps
every group. A step stacks the members' parameters and calls the model once for all of them
(``torch.func.vmap`` over ``functional_call``); each member's loss is its own, so its gradients are
exactly those of its model trained alone. A member whose loss diverges leaves the group; the others go on.

Each member shows the harness the interface of a ``TrainState`` (``MemberState``): its ``state_dict()``
is a single run's checkpoint, so a fused run resumes, evaluates and compares as any run does.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch
from torch import nn
from torch.func import functional_call, vmap

from lenet.core.errors import DivergedError
from lenet.core.metrics import compute
from lenet.core.optim import Scheduler
from lenet.train.callbacks import Callbacks
from lenet.train.loop import FitSettings, autocast
from lenet.train.state import set_rng_state


def _member_slice(value: Any, index: int, count: int) -> Any:
    """A member's part of a shared scheduler's state: its entry of each per-group list."""
    return [value[index]] if isinstance(value, list) and len(value) == count else value


@dataclass
class MemberState:
    """One run of a fused group, as the harness's callbacks see a run (``TrainState``'s interface)."""

    group: "FusedGroup"
    index: int
    params: dict[str, torch.Tensor]  # name -> this member's leaf tensor
    generator: torch.Generator
    torch_rng: torch.Tensor  # the global RNG's state after this member's init, as its own run would have it
    run_dir: Optional[Path] = None
    config: Mapping[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: Optional[str] = None
    eval_weights: str = "model"
    notes: dict[str, Any] = field(default_factory=dict)  # how the loop ran, for the summary (TrainState.notes)
    alive: bool = True

    @property
    def step(self) -> int:
        return self.group.step

    @property
    def epoch(self) -> int:
        return len(self.history)

    @property
    def model(self) -> nn.Module:
        """This member's weights in a module of the group's architecture (a copy: for saving and reading)."""
        module = copy.deepcopy(self.group.template)
        module.load_state_dict({**module.state_dict(), **{k: v.detach() for k, v in self.params.items()}})
        return module

    @property
    def eval_model(self) -> nn.Module:
        return self.model

    @property
    def optimizer_group(self) -> dict[str, Any]:
        return self.group.optimizer.param_groups[self.index]

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason

    def state_dict(self) -> dict[str, Any]:
        """This member's checkpoint, in the format of a single run's (``TrainState.state_dict``)."""
        names = list(self.params)
        optimizer = self.group.optimizer
        group = {k: v for k, v in self.optimizer_group.items() if k != "params"}
        count = len(self.group.members)
        scheduler = self.group.scheduler.scheduler.state_dict()
        return {
            "model": {**self.group.template.state_dict(), **{k: v.detach().clone() for k, v in self.params.items()}},
            "optimizer": {
                "state": {
                    i: optimizer.state[self.params[n]] for i, n in enumerate(names) if self.params[n] in optimizer.state
                },
                "param_groups": [{**group, "params": list(range(len(names)))}],
            },
            "scheduler": {k: _member_slice(v, self.index, count) for k, v in scheduler.items()},
            "rng": {"torch": self.torch_rng, "shuffle": self.generator.get_state()},
            "step": self.step,
            "epoch": self.epoch,
            "history": self.history,
            "stop_reason": self.stop_reason,
            "callbacks": {},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue this member from a single run's checkpoint (the group's step must be the checkpoint's)."""
        with torch.no_grad():
            for name, tensor in self.params.items():
                tensor.copy_(state["model"][name])
        saved = state["optimizer"]
        for i, name in enumerate(self.params):
            if i in saved["state"]:
                self.group.optimizer.state[self.params[name]] = dict(saved["state"][i])
        self.optimizer_group.update({k: v for k, v in saved["param_groups"][0].items() if k != "params"})
        set_rng_state({"torch": state["rng"]["torch"], "shuffle": state["rng"]["shuffle"]}, self.generator)
        self.torch_rng = state["rng"]["torch"]
        self.history = list(state["history"])
        self.stop_reason = state.get("stop_reason")


@dataclass
class FusedGroup:
    """The members, the architecture they share, one optimizer (a group each) and one schedule."""

    template: nn.Module
    members: list[MemberState]
    optimizer: torch.optim.Optimizer
    scheduler: Scheduler
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    step: int = 0

    @property
    def alive(self) -> list[MemberState]:
        return [m for m in self.members if m.alive]

    @property
    def epoch(self) -> int:
        return max((m.epoch for m in self.members), default=0)

    def forward(self, members: list[MemberState], x: torch.Tensor, shared_input: bool) -> torch.Tensor:
        """The members' outputs: ``x`` (M, B, ...) one batch each, or (B, ...) for all (``shared_input``)."""
        params = {name: torch.stack([m.params[name] for m in members]) for name in members[0].params}
        buffers = dict(self.template.named_buffers())

        def one(p: dict, xi: torch.Tensor) -> torch.Tensor:
            return functional_call(self.template, (p, buffers), (xi,))

        return vmap(one, in_dims=(0, None if shared_input else 0))(params, x)


def fused_train_epoch(group: FusedGroup, settings: FitSettings, callbacks: Callbacks) -> dict[int, float]:
    """One pass over the training set for every live member, each in its own order; member index -> mean loss."""
    members = group.alive
    images, labels = settings.train.images, settings.train.labels
    n, device = len(labels), images.device
    orders = torch.stack([torch.randperm(n, generator=m.generator) for m in members]).to(device)
    loss_sums = torch.zeros(len(members), device=device)
    for start in range(0, n, settings.batch_size):
        index = orders[:, start : start + settings.batch_size]  # (M, B): each member's batch
        x = images.index_select(0, index.reshape(-1)).view(*index.shape, *images.shape[1:])
        y = labels.index_select(0, index.reshape(-1)).view(index.shape)
        if settings.augment is not None:
            x = torch.stack([settings.augment(x[i], m.generator) for i, m in enumerate(members)])

        def closure() -> torch.Tensor:
            group.optimizer.zero_grad()
            with autocast(device, settings.bf16):
                scores = group.forward(members, x, shared_input=False)
                losses = vmap(group.loss_fn)(scores, y)
            losses.sum().backward()  # each member's gradients are those of its own loss
            return losses

        losses = group.optimizer.step(closure)
        group.scheduler.step_batch()
        group.step += 1
        loss_sums += losses.detach().float() * index.shape[1]
        callbacks.on_step_end(group, losses)
    return {m.index: s / n for m, s in zip(members, loss_sums.tolist())}


@torch.no_grad()
def fused_evaluate(group: FusedGroup, settings: FitSettings) -> dict[int, dict[str, float]]:
    """``test_loss``, ``test_acc`` and the metrics of every live member; member index -> values."""
    members = group.alive
    images, labels = settings.test.images, settings.test.labels
    scores, loss_sums = [], torch.zeros(len(members), device=images.device)
    group.template.eval()
    for start in range(0, len(labels), settings.eval_batch_size):
        x, y = images[start : start + settings.eval_batch_size], labels[start : start + settings.eval_batch_size]
        with autocast(images.device, settings.bf16):
            logits = group.forward(members, x, shared_input=True)
            loss_sums += vmap(group.loss_fn, in_dims=(0, None))(logits, y).float() * len(y)
        scores.append(logits.float())
    all_scores = torch.cat(scores, dim=1)
    losses = (loss_sums / len(labels)).tolist()
    return {
        m.index: {"test_loss": losses[i], **compute(settings.metrics or {}, all_scores[i], labels)}
        for i, m in enumerate(members)
    }


def fit_fused(
    group: FusedGroup,
    settings: FitSettings,
    shared: Callbacks,
    own: Mapping[int, Callbacks],
    on_diverged: Callable[[MemberState, DivergedError], None],
) -> FusedGroup:
    """Train every member to ``settings.epochs`` epochs; ``shared`` callbacks see the group's steps, ``own``
    (member index -> callbacks) each member's epochs; a diverged member is handed to ``on_diverged`` and leaves."""
    shared.on_fit_start(group)
    for member in group.alive:
        own[member.index].on_fit_start(member)
    while group.alive and group.epoch < settings.epochs:
        shared.on_epoch_start(group)
        started, lrs = time.perf_counter(), {m.index: m.optimizer_group["lr"] for m in group.alive}
        group.template.train()
        train_losses = fused_train_epoch(group, settings, shared)
        evaluations = fused_evaluate(group, settings)
        seconds = time.perf_counter() - started
        finished = []
        for member in group.alive:
            evaluation, train_loss = evaluations[member.index], train_losses[member.index]
            if not (math.isfinite(train_loss) and math.isfinite(evaluation["test_loss"])):
                bad = train_loss if not math.isfinite(train_loss) else evaluation["test_loss"]
                member.alive = False  # out of the group: no more steps, its other members go on
                on_diverged(member, DivergedError(f"the loss became {bad} in epoch {member.epoch + 1}"))
                continue
            row = {
                "epoch": member.epoch + 1,
                "train_loss": train_loss,
                "test_loss": evaluation.pop("test_loss"),
                "test_acc": evaluation.pop("test_acc"),
                "lr": lrs[member.index],
                "seconds": seconds,
                **evaluation,
            }
            member.history.append(row)
            finished.append((member, row))
        if group.scheduler.interval == "epoch":  # before the checkpoints, as in a run alone
            group.scheduler.scheduler.step()
        for member, row in finished:
            own[member.index].on_epoch_end(member, row)
    return group
