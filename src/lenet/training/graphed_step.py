"""``trainer.cuda_graphs``: the training step captured once as a CUDA graph and replayed for every full batch.

On a GPU a LeNet-5 step is a few hundred kernel launches of microseconds each, so Python and the
launches bound it, not the arithmetic. A captured step (forward, backward, the callbacks' gradient
hooks and the optimizer step) is one replay with no host work. Three things make it exact:

- **Static shapes.** Every full batch is copied into the same input tensors. An epoch's last, smaller
  batch runs eagerly through the same model and optimizer: no second capture, the same arithmetic.
- **A tensor learning rate.** Each parameter group's lr becomes a one-element tensor on the device that
  the graph reads; torch's schedulers fill such a tensor in place, so the schedule applies without
  recapture. A scheduler that changes any other setting of the optimizer (momentum, betas) ends the
  graphs for the rest of the run, with a log line: a captured step keeps the values it was captured with.
- **Warm-up.** The first ``WARMUP_STEPS`` steps of each process run eagerly (on a side stream, as CUDA
  requires), so that the optimizer's state exists before it is captured.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional, Protocol

import torch
from torch import nn

from lenet.core.errors import ConfigError
from lenet.training.callbacks import implements

log = logging.getLogger(__name__)

WARMUP_STEPS = 3
# optimizer settings that may change between steps without a recapture: the graph reads lr from its tensor
_LIVE_KEYS = ("params", "lr", "initial_lr")


class Capture(Protocol):
    """How a step is recorded once and run again: a CUDA graph, or a stand-in that runs it eagerly."""

    def warmup(self, body: Callable[[], torch.Tensor]) -> torch.Tensor: ...
    def capture(self, body: Callable[[], torch.Tensor]) -> None: ...
    def replay(self) -> torch.Tensor: ...


class CudaGraph:
    """``torch.cuda.CUDAGraph``: warm-up on a side stream, capture, replay."""

    def __init__(self) -> None:
        self.graph = torch.cuda.CUDAGraph()
        self.output: Optional[torch.Tensor] = None

    def warmup(self, body: Callable[[], torch.Tensor]) -> torch.Tensor:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            output = body()
        torch.cuda.current_stream().wait_stream(side)
        return output

    def capture(self, body: Callable[[], torch.Tensor]) -> None:
        with torch.cuda.graph(self.graph):
            self.output = body()

    def replay(self) -> torch.Tensor:
        self.graph.replay()
        return self.output


class EagerReplay:
    """Runs the captured body again at each replay: the same step structure on any device (tests use it on the CPU)."""

    def __init__(self) -> None:
        self.body: Optional[Callable[[], torch.Tensor]] = None

    def warmup(self, body: Callable[[], torch.Tensor]) -> torch.Tensor:
        return body()

    def capture(self, body: Callable[[], torch.Tensor]) -> None:
        self.body = body

    def replay(self) -> torch.Tensor:
        return self.body()


def why_not_graphed(
    device: torch.device, optimizer: torch.optim.Optimizer, callbacks: Any, compiled: bool
) -> Optional[str]:
    """Why the step of this run cannot be captured as a CUDA graph, or None when it can."""
    if device.type != "cuda":
        return f"the device is {device.type}, not cuda"
    if compiled:
        return "trainer.compile=true compiles the step instead"
    if isinstance(optimizer, torch.optim.LBFGS):
        return "LBFGS evaluates the loss several times per step"
    for group in optimizer.param_groups:
        if not (group.get("fused") or "capturable" in group) or group.get("differentiable"):
            return (
                f"{type(optimizer).__name__} steps on the host here; a captured step needs an optimizer "
                "with fused=True or a capturable option (torch's SGD, Adam, AdamW, ... on CUDA)"
            )
    for name, callback in callbacks.items():
        if implements(callback, "on_before_optimizer_step") and not getattr(callback, "graph_safe", False):
            return (
                f"callback {name} runs in on_before_optimizer_step and does not declare graph_safe = True "
                "(tensor work only, no .item())"
            )
    return None


def use_graphs(setting: str, reason: Optional[str], on_cuda: bool) -> bool:
    """Whether ``trainer.cuda_graphs=setting`` captures the step, given ``why_not_graphed``'s ``reason``.

    ``auto`` captures when it can and, on CUDA, logs why not; ``true`` refuses a run that cannot.
    """
    if setting == "false":
        return False
    if reason is None:
        return True
    if setting == "true":
        raise ConfigError(f"trainer.cuda_graphs=true cannot capture this run's step: {reason}; set it to auto or false")
    if on_cuda:  # elsewhere there is nothing to explain
        log.info("CUDA graphs off: %s", reason)
    return False


class GraphedStep:
    """A run's training step on batches of one size: eager for the warm-up, then one captured graph replayed.

    ``step(x, y)`` is the eager step (it returns the loss, detached); the graph captures one call of it.
    With ``strict``, a step that fails to capture raises; otherwise the run goes on eagerly.
    """

    def __init__(
        self, run: Any, step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], capture: Capture, strict: bool
    ):
        self.run, self.step, self.capture, self.strict = run, step, capture, strict
        self.warmups_left = WARMUP_STEPS
        self.inputs: Optional[tuple[torch.Tensor, torch.Tensor]] = None
        self.params: list[nn.Parameter] = []
        self.grads: list[Optional[torch.Tensor]] = []
        self.fixed: list[dict[str, Any]] = []
        self.lrs: list[torch.Tensor] = []
        self.stopped = False  # graphs ended for the rest of the run

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Train on one full batch; the step's loss as a tensor on the device (valid until the next step)."""
        if self.stopped:
            return self.step(x, y)
        if self.warmups_left > 0:
            self.warmups_left -= 1
            return self.capture.warmup(lambda: self.step(x, y))
        if self.inputs is None:
            if not self._capture(x, y):
                return self.step(x, y)
        elif self._settings_changed():
            return self.step(x, y)
        static_x, static_y = self.inputs
        static_x.copy_(x)
        static_y.copy_(y)
        for param, grad in zip(self.params, self.grads):
            param.grad = grad  # an eager last batch set its own; the graph writes and reads these
        return self.capture.replay()

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> bool:
        self.lrs = tensor_lrs(self.run.optimizer)
        self.fixed = [_fixed_settings(group) for group in self.run.optimizer.param_groups]
        self.inputs = (x.clone(), y.clone())
        try:
            self.capture.capture(lambda: self.step(*self.inputs))
        except Exception as e:  # the model does host work in its forward (.item(), data-dependent shapes)
            if self.strict:
                raise
            self._stop(f"capturing the step failed: {type(e).__name__}: {e}")
            self.run.optimizer.zero_grad(set_to_none=True)  # what the capture left is not a gradient
            return False
        self.params = [param for group in self.run.optimizer.param_groups for param in group["params"]]
        self.grads = [param.grad for param in self.params]
        return True

    def _settings_changed(self) -> bool:
        for group, lr, fixed in zip(self.run.optimizer.param_groups, self.lrs, self.fixed):
            if group["lr"] is not lr:  # a scheduler that assigned a number: the graph reads the tensor
                lr.fill_(float(group["lr"]))
                group["lr"] = lr
            now = _fixed_settings(group)
            if now != fixed:
                changed = ", ".join(sorted(k for k in fixed if now.get(k) != fixed[k]))
                self._stop(f"the scheduler changes {changed} (from step {self.run.step})")
                return True
        return False

    def _stop(self, reason: str) -> None:
        log.info("CUDA graphs off: %s", reason)
        self.run.notes.update(cuda_graphs=False, cuda_graphs_off=reason)
        self.stopped = True


def tensor_lrs(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Make each parameter group's lr a one-element tensor beside its parameters (capturable where it has the option)."""
    lrs = []
    for group in optimizer.param_groups:
        device = group["params"][0].device
        if not isinstance(group["lr"], torch.Tensor):
            group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)
        if "capturable" in group and not group.get("fused"):
            group["capturable"] = True
            for param in group["params"]:  # a capturable optimizer counts its steps on the device
                step = optimizer.state.get(param, {}).get("step")
                if isinstance(step, torch.Tensor):
                    optimizer.state[param]["step"] = step.to(device=device, dtype=torch.float32)
        lrs.append(group["lr"])
    return lrs


def _fixed_settings(group: dict[str, Any]) -> dict[str, Any]:
    # the numbers a captured step holds as constants (a tensor setting is read from its memory, like lr)
    return {k: v for k, v in group.items() if k not in _LIVE_KEYS and not isinstance(v, torch.Tensor)}
