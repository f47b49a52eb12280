"""Optimizers (SGD, Adam, AdamW) and learning-rate schedules built from their config nodes.

The optimizers do torch.optim's arithmetic, op for op, so results match torch.optim bit for bit
(tests check it), with one foreach kernel per op for all parameters. They are our own because
torch.optim imports torch._dynamo on first use: 1.3 s of start-up plus 0.9 s of interpreter exit
measured here, in runs of a few seconds per epoch. A schedule is a function from the step number
to the lr, so resuming needs no scheduler state: the optimizer counts the steps.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch

from lenet.config import AdamConfig, AdamWConfig, CosineConfig, OneCycleConfig, OptimizerConfig, SGDConfig, StepConfig
from lenet.config import SchedulerConfig

Schedule = Callable[[int], float]  # step number (0 = the first step) -> lr


class Optimizer:
    """What the training loop uses: ``lr``, ``steps`` taken, ``zero_grad``, ``step`` and a state dict."""

    buffer_names: tuple[str, ...] = ()

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float):
        self.params = [p for p in params if p.requires_grad]
        self.lr = lr
        self.steps = 0
        self.buffers = {name: [torch.zeros_like(p) for p in self.params] for name in self.buffer_names}

    def zero_grad(self) -> None:
        """Drop the gradients (the next backward pass allocates fresh ones, as torch's set_to_none)."""
        for p in self.params:
            p.grad = None

    def _grads(self) -> list[torch.Tensor]:
        grads = [p.grad for p in self.params]
        if any(g is None for g in grads):  # every parameter of our models gets a gradient at every step
            raise RuntimeError(f"{type(self).__name__}.step() called with a parameter that has no gradient")
        return grads

    @torch.no_grad()
    def step(self) -> None:
        """Update the parameters from their gradients, with the current ``lr``."""
        self.steps += 1
        self._update(self._grads())

    def _update(self, grads: list[torch.Tensor]) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue: lr, steps taken and the per-parameter buffers."""
        return {"type": type(self).__name__, "lr": self.lr, "steps": self.steps, "buffers": self.buffers}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from what ``state_dict`` returned (of an optimizer of the same type and parameters)."""
        if state.get("type") != type(self).__name__:
            raise ValueError(f"optimizer state of {state.get('type')!r} cannot be loaded into {type(self).__name__}")
        self.lr, self.steps = state["lr"], state["steps"]
        for name, saved in state["buffers"].items():
            for buffer, value in zip(self.buffers[name], saved, strict=True):
                buffer.copy_(value)


class SGD(Optimizer):
    """SGD with momentum, Nesterov momentum and L2 weight decay, as torch.optim.SGD (dampening 0)."""

    buffer_names = ("momentum",)

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0):  # fmt: skip
        super().__init__(params, lr)
        self.momentum, self.nesterov, self.weight_decay = momentum, nesterov, weight_decay

    def _update(self, grads: list[torch.Tensor]) -> None:
        if self.weight_decay != 0:
            grads = torch._foreach_add(grads, self.params, alpha=self.weight_decay)
        if self.momentum != 0:
            momentum = self.buffers["momentum"]
            if self.steps == 1:  # torch starts the buffer as a copy of the first gradient
                torch._foreach_copy_(momentum, grads)
            else:
                torch._foreach_mul_(momentum, self.momentum)
                torch._foreach_add_(momentum, grads)
            if self.nesterov:
                grads = torch._foreach_add(grads, momentum, alpha=self.momentum)
            else:
                grads = momentum
        torch._foreach_add_(self.params, grads, alpha=-self.lr)


class Adam(Optimizer):
    """Adam (Kingma & Ba) with L2 weight decay, as torch.optim.Adam; ``decoupled=True`` is AdamW."""

    buffer_names = ("exp_avg", "exp_avg_sq")

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, decoupled: bool = False):  # fmt: skip
        super().__init__(params, lr)
        self.betas, self.eps, self.weight_decay, self.decoupled = betas, eps, weight_decay, decoupled

    def _update(self, grads: list[torch.Tensor]) -> None:
        beta1, beta2 = self.betas
        exp_avg, exp_avg_sq = self.buffers["exp_avg"], self.buffers["exp_avg_sq"]
        if self.weight_decay != 0:
            if self.decoupled:
                torch._foreach_mul_(self.params, 1 - self.lr * self.weight_decay)
            else:
                grads = torch._foreach_add(grads, self.params, alpha=self.weight_decay)
        torch._foreach_lerp_(exp_avg, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sq, beta2)
        torch._foreach_addcmul_(exp_avg_sq, grads, grads, 1 - beta2)
        # torch.optim keeps the step count as a float32 tensor and reads it back as a Python float
        step = float(self.steps)
        step_size = self.lr / (1 - beta1**step)
        denom = torch._foreach_sqrt(exp_avg_sq)
        torch._foreach_div_(denom, (1 - beta2**step) ** 0.5)
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(self.params, exp_avg, denom, -step_size)


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimizerConfig) -> Optimizer:
    """The optimizer that ``cfg`` describes."""
    if isinstance(cfg, SGDConfig):
        return SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    if isinstance(cfg, AdamConfig):
        return Adam(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=cfg.weight_decay,
                    decoupled=isinstance(cfg, AdamWConfig))  # fmt: skip
    raise TypeError(f"no optimizer for {type(cfg).__name__}")


def _cosine(start: float, end: float, progress: float) -> float:
    """From ``start`` at progress 0 to ``end`` at progress 1 along half a cosine."""
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))


def build_schedule(cfg: SchedulerConfig, base_lr: float, epochs: int, steps_per_epoch: int) -> Schedule:
    """The lr at each step of a run of ``epochs * steps_per_epoch`` steps (constant for ``none``)."""
    total_steps = epochs * steps_per_epoch
    if isinstance(cfg, StepConfig):
        step_size = cfg.step_epochs * steps_per_epoch
        return lambda step: base_lr * cfg.gamma ** (step // step_size)
    if isinstance(cfg, CosineConfig):
        warmup = round(cfg.warmup_epochs * steps_per_epoch)
        floor = cfg.min_lr / base_lr

        def cosine(step: int) -> float:
            if step < warmup:
                return base_lr * ((step + 1) / warmup)
            return base_lr * _cosine(1.0, floor, min(1.0, (step - warmup) / max(1, total_steps - warmup)))

        return cosine
    if isinstance(cfg, OneCycleConfig):
        # torch's OneCycleLR formulas (cosine, two phases), but also valid for runs of very few steps
        start, end = 1 / cfg.div_factor, 1 / (cfg.div_factor * cfg.final_div_factor)
        peak_step = cfg.pct_start * total_steps - 1

        def onecycle(step: int) -> float:
            if step < peak_step:
                return base_lr * _cosine(start, 1.0, step / peak_step)
            return base_lr * _cosine(1.0, end, min(1.0, (step - peak_step) / max(1e-9, total_steps - 1 - peak_step)))

        return onecycle
    if cfg.name == "none":
        return lambda step: base_lr
    raise TypeError(f"no scheduler for {type(cfg).__name__} named {cfg.name!r}")
