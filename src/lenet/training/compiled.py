"""``trainer.compile``: the model compiled once per run, for the two shapes it is called with, before the first step.

``torch.compile`` specialises on shapes and on the model's mode, and compiles again (with slower
dynamic-shape kernels) when it meets a new one: an epoch's last, smaller batch, evaluation's batches.
Here the compiled model sees only full batches: a training batch of ``trainer.batch_size`` and an
evaluation batch of ``trainer.eval_batch_size``; a smaller last batch goes through the model itself,
with the same weights. Both shapes are compiled before training, so that the time it takes is reported
on its own (``compile_seconds`` in summary.json) and no epoch's time includes it.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Callable

import torch
from torch import nn

from lenet.core.data import Split
from lenet.training.state import global_rng_state, set_global_rng_state


def compile_model(model: nn.Module) -> nn.Module:
    """``torch.compile(model)`` with static shapes: a new shape is a new compilation, never a dynamic kernel."""
    return torch.compile(model, dynamic=False)


def precompile(
    forward: nn.Module,
    model: nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    train: Split,
    test: Split,
    batch_sizes: tuple[int, int],
    autocast: Callable[[], Any],
) -> float:
    """Compile ``forward`` for a training step and an evaluation batch now; the seconds it took.

    A forward and backward pass in training mode and a forward pass in evaluation mode on the first
    examples, under ``autocast()``; the model's weights and buffers, its gradients and the random-number
    states are then put back as they were: nothing is trained.
    """
    train_batch, eval_batch = batch_sizes
    device = train.images.device
    kept, rng = copy.deepcopy(model.state_dict()), global_rng_state()
    grads = [p.grad for p in model.parameters()]
    _synchronize(device)
    started = time.perf_counter()
    was_training = model.training
    if len(train) >= train_batch:
        model.train()
        with autocast():
            loss = loss_fn(forward(train.images[:train_batch]), train.labels[:train_batch])
        loss.backward()
    if len(test) >= eval_batch:
        model.eval()
        with torch.inference_mode(), autocast():
            forward(test.images[:eval_batch])
    _synchronize(device)
    seconds = time.perf_counter() - started
    model.train(was_training)
    model.load_state_dict(kept)
    for param, grad in zip(model.parameters(), grads):
        param.grad = grad
    set_global_rng_state(rng)
    return seconds


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
