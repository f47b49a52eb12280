"""The training loop: epochs of shuffled batches over tensors already on the device, then evaluation.

Plain code in the style of nanoGPT: ``fit`` reads top to bottom and knows nothing of checkpoints,
files, loggers or sweeps; they, and every variation of the loop (clipping, EMA, early stopping), are
callbacks. No per-step host synchronisation: losses are summed on the device and read once per epoch.

``fit`` trains one run, or several runs of one recipe together (a fused group: each its own model,
optimizer, schedule, random numbers and callbacks): only how a step is taken for them (``Steps``) differs.
A run whose loss diverges, or whose own code raises, ends alone with ``run.error``; the others go on.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol, Sequence

import torch
from torch import nn

from lenet.core.data import Split
from lenet.core.errors import DivergedError
from lenet.core.metrics import Metric, build_metrics, compute
from lenet.training.callbacks import Callbacks
from lenet.training.compiled import precompile
from lenet.training.graphed_step import Capture, CudaGraph, GraphedStep, use_graphs, why_not_graphed
from lenet.training.state import TrainState

Augmentation = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
SPLITS = ("val", "test")  # evaluated after every epoch, in this order


@dataclass
class FitSettings:
    """How the loop runs: what it trains and evaluates on, and the trainer's settings."""

    train: Split
    test: Split
    epochs: int
    batch_size: int
    eval_batch_size: int = 1000
    bf16: bool = False  # autocast forward and loss to bfloat16
    augment: Optional[Augmentation] = None  # of each training batch, with the run's generator
    metrics: Optional[dict[str, Metric]] = None  # accuracy and these, per epoch, on each split
    cuda_graphs: str = "false"  # auto | true | false: capture the step of full batches (lenet.training.graphed_step)
    capture: Optional[Callable[[], Capture]] = None  # how a step is captured; None: a CUDA graph
    val: Optional[Split] = None  # the validation split (None: data.val_size=0)


class Steps(Protocol):
    """How the runs of a ``fit`` take their steps and are evaluated: each alone (``EagerSteps``) or as one program."""

    def prepare(self, runs: Sequence[TrainState], settings: FitSettings, callbacks: Sequence[Callbacks]) -> None: ...

    def train_step(
        self,
        runs: Sequence[TrainState],
        batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
        callbacks: Sequence[Callbacks],
    ) -> list[Optional[torch.Tensor]]: ...

    def evaluate(self, runs: Sequence[TrainState], split: Split, name: str) -> list[Optional[dict[str, Any]]]: ...


def fit(run: TrainState, settings: FitSettings, callbacks: Callbacks) -> TrainState:
    """Train ``run`` to ``settings.epochs`` epochs in all, or until a callback asks it to stop (``fit_group`` of one).

    A NaN or infinite loss raises DivergedError; an exception of a callback is raised as it was.
    """
    fit_group([run], settings, [callbacks])
    if run.error is not None:
        raise run.error
    return run


def fit_group(
    runs: Sequence[TrainState], settings: FitSettings, callbacks: Sequence[Callbacks], steps: Optional[Steps] = None
) -> None:
    """Train each run of ``runs`` to ``settings.epochs`` epochs in all, or until a callback asks it to stop.

    A NaN or infinite loss ends the run with a DivergedError in ``run.error`` before its epoch is recorded; an
    exception of its own code (a callback, its loss) ends it the same way. The other runs go on.
    """
    steps = steps or EagerSteps(settings)
    for run, hooks in zip(runs, callbacks):
        guarded(run, hooks.on_fit_start, run)
    steps.prepare([r for r in runs if r.error is None], settings, callbacks)
    while True:
        active = [i for i, run in enumerate(runs) if run.error is None and not finished(run, settings)]
        if not active:
            return
        group, hooks = [runs[i] for i in active], [callbacks[i] for i in active]
        for run, hook in zip(group, hooks):
            guarded(run, hook.on_epoch_start, run)
        started, lrs = time.perf_counter(), [run.lr for run in group]  # the lr of the epoch's first step
        train_losses = train_epochs(group, settings, hooks, steps)
        evaluations = {name: steps.evaluate(group, split, name) for name, split in _splits(settings)}
        seconds = time.perf_counter() - started
        for k, (run, hook) in enumerate(zip(group, hooks)):
            if run.error is not None:
                continue
            row = _row(run, train_losses[k], {name: values[k] for name, values in evaluations.items()}, lrs[k], seconds)
            if row is None:
                continue
            run.history.append(row)
            guarded(run, run.scheduler.step_epoch, row)
            guarded(run, hook.on_epoch_end, run, row)


def finished(run: TrainState, settings: FitSettings) -> bool:
    """Whether ``run`` has trained all its epochs, or was asked to stop."""
    return run.epoch >= settings.epochs or run.stop_reason is not None


def guarded(run: TrainState, hook: Callable[..., Any], *args: Any) -> None:
    """Call ``hook``; an exception ends ``run`` alone (``run.error``), unless it is a BaseException such as Ctrl-C."""
    if run.error is not None:
        return
    try:
        hook(*args)
    except Exception as e:
        run.error = e


def _splits(settings: FitSettings) -> list[tuple[str, Split]]:
    return [(name, split) for name, split in (("val", settings.val), ("test", settings.test)) if split is not None]


def _row(
    run: TrainState, train_loss: float, evaluation: dict[str, Optional[dict[str, Any]]], lr: float, seconds: float
) -> Optional[dict[str, Any]]:
    """The epoch's metrics.jsonl row of ``run``; None (and ``run.error``) when its loss diverged or it ended."""
    if run.error is not None or any(values is None for values in evaluation.values()):
        return None
    losses = [train_loss] + [values[f"{name}_loss"] for name, values in evaluation.items()]
    bad = next((x for x in losses if not math.isfinite(x)), None)
    if bad is not None:
        run.error = DivergedError(f"the loss became {bad} in epoch {run.epoch + 1}")
        return None
    run.epoch += 1
    row: dict[str, Any] = {"epoch": run.epoch, "train_loss": train_loss}
    for name, values in evaluation.items():
        row[f"{name}_loss"], row[f"{name}_acc"] = values.pop(f"{name}_loss"), values.pop(f"{name}_acc")
    row.update(lr=lr, seconds=seconds)
    for values in evaluation.values():
        row.update(values)  # the other metrics of each split
    return row


def train_epoch(run: TrainState, settings: FitSettings, callbacks: Callbacks) -> float:
    """One pass over the training set in an order drawn from the run's generator; the mean loss."""
    (loss,) = train_epochs([run], settings, [callbacks], EagerSteps(settings))
    if run.error is not None:
        raise run.error
    return loss


def train_epochs(
    runs: Sequence[TrainState], settings: FitSettings, callbacks: Sequence[Callbacks], steps: Steps
) -> list[float]:
    """One pass over the training set for each run, each in an order drawn from its own generator; the mean losses.

    A per-step scheduler steps after every optimizer step.
    """
    images, labels = settings.train.images, settings.train.labels
    n = len(labels)
    for run in runs:
        run.model.train()
    orders = [torch.randperm(n, generator=run.generator).to(images.device) for run in runs]
    sums = [torch.zeros((), device=images.device) for _ in runs]
    for start in range(0, n, settings.batch_size):
        live = [k for k, run in enumerate(runs) if run.error is None]
        if not live:
            break
        batches = []
        for k in live:
            index = orders[k][start : start + settings.batch_size]
            x, y = images.index_select(0, index), labels.index_select(0, index)  # faster than images[index]
            if settings.augment is not None:
                x = settings.augment(x, runs[k].generator)
            batches.append((x, y))
        losses = steps.train_step([runs[k] for k in live], batches, [callbacks[k] for k in live])
        for k, loss, (x, _) in zip(live, losses, batches):
            run = runs[k]
            if loss is None:  # its step raised: run.error says what
                continue
            run.scheduler.step_batch()
            run.step += 1
            sums[k] += loss.float() * len(x)
            guarded(run, callbacks[k].on_step_end, run, loss)
    return [s.item() / n for s in sums]


def train_step(
    run: TrainState, settings: FitSettings, callbacks: Callbacks, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """One optimizer step on the batch ``(x, y)``; its loss, detached, on the device.

    The loss goes through a closure, so optimizers that evaluate it several times per step (LBFGS)
    work as well. The same code is what a CUDA graph captures. A compiled model takes full batches only
    (lenet.training.compiled): a smaller last batch goes through the model itself.
    """
    compiled = run.compiled is not None and len(x) == settings.batch_size
    forward = run.compiled if compiled else run.model

    def closure() -> torch.Tensor:
        run.optimizer.zero_grad()
        with autocast(x.device, settings.bf16):
            loss = run.loss_fn(forward(x), y)
        loss.backward()
        callbacks.on_before_optimizer_step(run)
        return loss

    return run.optimizer.step(closure).detach()


class EagerSteps:
    """Each run takes its own steps: eagerly, through its compiled model, or as a captured CUDA graph."""

    def __init__(self, settings: FitSettings):
        self.settings = settings
        self.graphed: dict[int, GraphedStep] = {}

    def prepare(self, runs: Sequence[TrainState], settings: FitSettings, callbacks: Sequence[Callbacks]) -> None:
        """Compile the compiled runs' shapes, and capture the steps ``trainer.cuda_graphs`` asks for."""
        for run, hooks in zip(runs, callbacks):
            if run.compiled is not None:
                run.notes["compile_seconds"] = precompile(
                    run.compiled,
                    run.model,
                    run.loss_fn,
                    settings.train,
                    settings.test,
                    (settings.batch_size, settings.eval_batch_size),
                    lambda: autocast(settings.train.images.device, settings.bf16),
                )
            graphed = graphed_step(run, settings, hooks)
            if graphed is not None:
                self.graphed[id(run)] = graphed

    def train_step(
        self,
        runs: Sequence[TrainState],
        batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
        callbacks: Sequence[Callbacks],
    ) -> list[Optional[torch.Tensor]]:
        losses: list[Optional[torch.Tensor]] = []
        for run, (x, y), hooks in zip(runs, batches, callbacks):
            graphed = self.graphed.get(id(run))
            try:
                if graphed is not None and len(x) == self.settings.batch_size:
                    losses.append(graphed(x, y))
                else:
                    losses.append(train_step(run, self.settings, hooks, x, y))
            except Exception as e:  # its own code raised (a callback, its loss): it ends alone
                run.error = e
                losses.append(None)
        return losses

    def evaluate(self, runs: Sequence[TrainState], split: Split, name: str) -> list[Optional[dict[str, Any]]]:
        results: list[Optional[dict[str, Any]]] = []
        for run in runs:
            try:
                results.append(
                    evaluate(
                        _model_to_evaluate(run),
                        run.loss_fn,
                        split,
                        self.settings.eval_batch_size,
                        self.settings.bf16,
                        self.settings.metrics,
                        eager=run.eval_model,
                        name=name,
                    )
                )
            except Exception as e:
                run.error = e
                results.append(None)
        return results


def graphed_step(run: TrainState, settings: FitSettings, callbacks: Callbacks) -> Optional[GraphedStep]:
    """The captured step ``settings.cuda_graphs`` asks for and this run allows, or None (one log line says why)."""
    device = settings.train.images.device
    if settings.capture is not None:  # a stand-in capture runs on any device
        device = torch.device("cuda")
    reason = why_not_graphed(device, run.optimizer, callbacks, run.compiled is not None)
    used = use_graphs(settings.cuda_graphs, reason, on_cuda=device.type == "cuda")
    if device.type == "cuda":
        run.notes.update(cuda_graphs=used, cuda_graphs_off=None if used else reason or "trainer.cuda_graphs=false")
    if not used:
        return None
    capture = settings.capture() if settings.capture is not None else CudaGraph()
    return GraphedStep(
        run, lambda x, y: train_step(run, settings, callbacks, x, y), capture, strict=settings.cuda_graphs == "true"
    )


def _model_to_evaluate(run: TrainState) -> nn.Module:
    # the compiled form of the model when it is what is evaluated (no callback set another)
    return run.compiled if run.compiled is not None and run.eval_model is run.model else run.eval_model


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on ``device`` when ``bf16``, else a no-op.

    Its cache of cast weights is off: a forward uses each weight once, and a CUDA graph cannot hold it.
    """
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=False)


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    split: Split,
    batch_size: int,
    bf16: bool = False,
    metrics: Optional[dict[str, Metric]] = None,
    eager: Optional[nn.Module] = None,
    name: str = "test",
) -> dict[str, Any]:
    """``<name>_loss`` (the mean loss), ``<name>_acc`` and every metric's values of ``model`` on ``split``, in order.

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
    metrics = metrics if metrics is not None else build_metrics([])
    return {f"{name}_loss": loss_sum.item() / len(labels), **compute(metrics, all_scores, labels, name)}
