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
from lenet.train.compiled import precompile
from lenet.train.graphed_step import Capture, CudaGraph, GraphedStep, use_graphs, why_not_graphed
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
    cuda_graphs: str = "false"  # auto | true | false: capture the step of full batches (lenet.train.graphed_step)
    capture: Optional[Callable[[], Capture]] = None  # how a step is captured; None: a CUDA graph


def fit(run: TrainState, settings: FitSettings, callbacks: Callbacks) -> TrainState:
    """Train ``run`` to ``settings.epochs`` epochs in all, or until a callback asks it to stop.

    A NaN or infinite loss raises DivergedError before the epoch is recorded.
    """
    callbacks.on_fit_start(run)
    if settings.forward is not None:
        run.notes["compile_seconds"] = precompile(
            settings.forward,
            run.model,
            run.loss_fn,
            settings.train,
            settings.test,
            (settings.batch_size, settings.eval_batch_size),
            lambda: autocast(settings.train.images.device, settings.bf16),
        )
    graphed = graphed_step(run, settings, callbacks)
    while run.epoch < settings.epochs and run.stop_reason is None:
        callbacks.on_epoch_start(run)
        started, lr = time.perf_counter(), run.lr  # the lr of the epoch's first step
        train_loss = train_epoch(run, settings, callbacks, graphed)
        evaluation = evaluate(
            _model_to_evaluate(run, settings),
            run.loss_fn,
            settings.test,
            settings.eval_batch_size,
            settings.bf16,
            settings.metrics,
            eager=run.eval_model,
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


def train_epoch(
    run: TrainState, settings: FitSettings, callbacks: Callbacks, graphed: Optional[GraphedStep] = None
) -> float:
    """One pass over the training set in an order drawn from the run's generator; the mean loss.

    Full batches go through ``graphed`` when given (a captured step), the rest through ``train_step``;
    a per-step scheduler steps after every optimizer step.
    """
    images, labels = settings.train.images, settings.train.labels
    run.model.train()
    n = len(labels)
    order = torch.randperm(n, generator=run.generator).to(images.device)
    loss_sum = torch.zeros((), device=images.device)
    for start in range(0, n, settings.batch_size):
        index = order[start : start + settings.batch_size]
        x, y = images.index_select(0, index), labels.index_select(0, index)  # faster than images[index]
        if settings.augment is not None:
            x = settings.augment(x, run.generator)
        if graphed is not None and len(index) == settings.batch_size:
            loss = graphed(x, y)
        else:
            loss = train_step(run, settings, callbacks, x, y)
        run.scheduler.step_batch()
        run.step += 1
        loss_sum += loss.float() * len(index)
        callbacks.on_step_end(run, loss)
    return loss_sum.item() / n


def train_step(
    run: TrainState, settings: FitSettings, callbacks: Callbacks, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """One optimizer step on the batch ``(x, y)``; its loss, detached, on the device.

    The loss goes through a closure, so optimizers that evaluate it several times per step (LBFGS)
    work as well. The same code is what a CUDA graph captures. A compiled model takes full batches only
    (lenet.train.compiled): a smaller last batch goes through the model itself.
    """
    compiled = settings.forward is not None and len(x) == settings.batch_size
    forward = settings.forward if compiled else run.model

    def closure() -> torch.Tensor:
        run.optimizer.zero_grad()
        with autocast(x.device, settings.bf16):
            loss = run.loss_fn(forward(x), y)
        loss.backward()
        callbacks.on_before_optimizer_step(run)
        return loss

    return run.optimizer.step(closure).detach()


def graphed_step(run: TrainState, settings: FitSettings, callbacks: Callbacks) -> Optional[GraphedStep]:
    """The captured step ``settings.cuda_graphs`` asks for and this run allows, or None (one log line says why)."""
    device = settings.train.images.device
    if settings.capture is not None:  # a stand-in capture runs on any device
        device = torch.device("cuda")
    reason = why_not_graphed(device, run.optimizer, callbacks, settings.forward is not None)
    used = use_graphs(settings.cuda_graphs, reason, on_cuda=device.type == "cuda")
    if device.type == "cuda":
        run.notes.update(cuda_graphs=used, cuda_graphs_off=None if used else reason or "trainer.cuda_graphs=false")
    if not used:
        return None
    capture = settings.capture() if settings.capture is not None else CudaGraph()
    return GraphedStep(
        run, lambda x, y: train_step(run, settings, callbacks, x, y), capture, strict=settings.cuda_graphs == "true"
    )


def _model_to_evaluate(run: TrainState, settings: FitSettings) -> nn.Module:
    # the compiled form of the model when it is what is evaluated (no callback set another)
    compiled = settings.forward is not None and run.eval_model is run.model
    return settings.forward if compiled else run.eval_model


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on ``device`` when ``bf16``, else a no-op.

    Its cache of cast weights is off: a forward uses each weight once, and a CUDA graph cannot hold it.
    """
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=False)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    split: Split,
    batch_size: int,
    bf16: bool = False,
    metrics: Optional[dict[str, Metric]] = None,
    eager: Optional[nn.Module] = None,
) -> dict[str, Any]:
    """``test_loss`` (the mean loss), ``test_acc`` and every metric's values of ``model`` on ``split``, in order.

    ``eager``, when given, evaluates a last batch smaller than ``batch_size`` (``model`` is then a compiled
    form of it, which takes one shape).
    """
    model.eval()
    images, labels = split.images, split.labels
    loss_sum = torch.zeros((), device=images.device)
    scores = []
    for start in range(0, len(labels), batch_size):
        x, y = images[start : start + batch_size], labels[start : start + batch_size]
        forward = model if eager is None or len(y) == batch_size else eager
        with autocast(images.device, bf16):
            logits = forward(x)
            loss_sum += loss_fn(logits, y).float() * len(y)  # a loss is a mean: any callable (scores, targets)
        scores.append(logits.float())
    all_scores = torch.cat(scores)
    return {"test_loss": loss_sum.item() / len(labels), **compute(metrics or {}, all_scores, labels)}
