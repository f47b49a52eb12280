"""The training loop: epochs of shuffled batches over tensors already on the device, then evaluation.

Plain code in the style of nanoGPT: ``fit`` reads top to bottom and knows nothing of checkpoints,
files, loggers or sweeps; they, and every variation of the loop (clipping, EMA, early stopping), are
callbacks. No per-step host synchronisation: losses are summed on the device and read once per epoch.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn

from lenet.core.data import Split
from lenet.core.errors import DivergedError
from lenet.core.metrics import Metric, compute
from lenet.train.callbacks import Callbacks
from lenet.train.state import TrainState

Augmentation = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass
class FitSettings:
    """How the loop runs: what it trains on and with which settings of the trainer."""

    train: Split
    test: Split
    epochs: int
    batch_size: int
    eval_batch_size: int = 1000
    bf16: bool = False  # autocast forward and loss to bfloat16
    augment: Optional[Augmentation] = None  # of each training batch, with the run's generator
    metrics: Optional[dict[str, Metric]] = None  # test_acc and these, per epoch
    forward: Optional[nn.Module] = None  # the model as called in training (torch.compile'd); None: run.model


def fit(run: TrainState, settings: FitSettings, callbacks: Callbacks) -> TrainState:
    """Train ``run`` to ``settings.epochs`` epochs in all, or until a callback asks it to stop.

    A NaN or infinite loss raises DivergedError before the epoch is recorded.
    """
    callbacks.on_fit_start(run)
    while run.epoch < settings.epochs and run.stop_reason is None:
        callbacks.on_epoch_start(run)
        started, lr = time.perf_counter(), run.lr  # the lr of the epoch's first step
        train_loss = train_epoch(run, settings, callbacks)
        evaluation = evaluate(
            _model_to_evaluate(run, settings),
            run.loss_fn,
            settings.test,
            settings.eval_batch_size,
            settings.bf16,
            settings.metrics,
        )
        if not (math.isfinite(train_loss) and math.isfinite(evaluation["test_loss"])):
            bad = train_loss if not math.isfinite(train_loss) else evaluation["test_loss"]
            raise DivergedError(f"the loss became {bad} in epoch {run.epoch + 1}")
        run.epoch += 1
        row = {
            "epoch": run.epoch,
            "train_loss": train_loss,
            "test_loss": evaluation.pop("test_loss"),
            "test_acc": evaluation.pop("test_acc"),
            "lr": lr,
            "seconds": time.perf_counter() - started,
            **evaluation,
        }
        run.history.append(row)
        run.scheduler.step_epoch(row)
        callbacks.on_epoch_end(run, row)
    return run


def train_epoch(run: TrainState, settings: FitSettings, callbacks: Callbacks) -> float:
    """One pass over the training set in an order drawn from the run's generator; the mean loss.

    Each step goes through a closure, so optimizers that evaluate the loss several times per step
    (LBFGS) work as well; a per-step scheduler steps after every optimizer step.
    """
    model = run.model
    forward = settings.forward if settings.forward is not None else model
    images, labels = settings.train.images, settings.train.labels
    model.train()
    n = len(labels)
    order = torch.randperm(n, generator=run.generator).to(images.device)
    loss_sum = torch.zeros((), device=images.device)
    for start in range(0, n, settings.batch_size):
        index = order[start : start + settings.batch_size]
        x, y = images.index_select(0, index), labels.index_select(0, index)  # faster than images[index]
        if settings.augment is not None:
            x = settings.augment(x, run.generator)

        def closure() -> torch.Tensor:
            run.optimizer.zero_grad()
            with autocast(images.device, settings.bf16):
                loss = run.loss_fn(forward(x), y)
            loss.backward()
            callbacks.on_before_optimizer_step(run)
            return loss

        loss = run.optimizer.step(closure)
        run.scheduler.step_batch()
        run.step += 1
        loss_sum += loss.detach().float() * len(index)
        callbacks.on_step_end(run, loss)
    return loss_sum.item() / n


def _model_to_evaluate(run: TrainState, settings: FitSettings) -> nn.Module:
    # the compiled form of the model when it is what is evaluated (no callback set another)
    compiled = settings.forward is not None and run.eval_model is run.model
    return settings.forward if compiled else run.eval_model


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on ``device`` when ``bf16``, else a no-op."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    split: Split,
    batch_size: int,
    bf16: bool = False,
    metrics: Optional[dict[str, Metric]] = None,
) -> dict[str, Any]:
    """``test_loss`` (the mean loss), ``test_acc`` and every metric's values of ``model`` on ``split``, in order."""
    model.eval()
    images, labels = split.images, split.labels
    loss_sum = torch.zeros((), device=images.device)
    scores = []
    for start in range(0, len(labels), batch_size):
        x, y = images[start : start + batch_size], labels[start : start + batch_size]
        with autocast(images.device, bf16):
            logits = model(x)
            loss_sum += loss_fn(logits, y).float() * len(y)  # a loss is a mean: any callable (scores, targets)
        scores.append(logits.float())
    all_scores = torch.cat(scores)
    return {"test_loss": loss_sum.item() / len(labels), **compute(metrics or {}, all_scores, labels)}
