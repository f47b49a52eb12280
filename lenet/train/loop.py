"""The training loop: one epoch over tensors already on the device, and evaluation.

Plain code in the style of pytorch/examples: the functions take a model, tensors and numbers.
No per-step host synchronisation: losses are summed on the device and read once per epoch.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch
from torch import nn

from lenet.core.errors import Interrupted
from lenet.core.metrics import Metric, compute


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on ``device`` when ``bf16``, else a no-op."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def train_one_epoch(
    model: nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    scheduler: Optional[torch.optim.lr_scheduler.LRScheduler] = None,
    augment: Optional[Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = None,
    bf16: bool = False,
    progress: bool = False,
    stop_requested: Callable[[], Optional[str]] = lambda: None,
    desc: str = "train",
) -> float:
    """Train for one pass over ``images`` in a shuffled order drawn from ``generator``; mean loss.

    ``augment``, if given, transforms each batch with random numbers from ``generator``.
    ``scheduler``, if given, steps after every optimizer step. The step goes through a closure, so
    optimizers that evaluate the loss several times per step (LBFGS) work as well.
    """
    model.train()
    n = len(labels)
    order = torch.randperm(n, generator=generator).to(images.device)
    loss_sum = torch.zeros((), device=images.device)
    starts = range(0, n, batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=desc, unit="batch", leave=False, dynamic_ncols=True)
    for start in starts:
        signal_name = stop_requested()
        if signal_name:
            raise Interrupted(signal_name)
        index = order[start : start + batch_size]
        x, y = images.index_select(0, index), labels.index_select(0, index)  # faster than images[index]
        if augment is not None:
            x = augment(x, generator)

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            with autocast(images.device, bf16):
                loss = loss_fn(model(x), y)
            loss.backward()
            return loss

        loss = optimizer.step(closure)
        if scheduler is not None:
            scheduler.step()
        loss_sum += loss.detach().float() * len(index)
    return loss_sum.item() / n


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    bf16: bool = False,
    metrics: Optional[dict[str, Metric]] = None,
) -> dict[str, float]:
    """``test_loss`` (the mean loss), ``test_acc`` and every metric's values of ``model`` on ``images``, in fixed order."""
    model.eval()
    loss_sum = torch.zeros((), device=images.device)
    scores = []
    for start in range(0, len(labels), batch_size):
        x, y = images[start : start + batch_size], labels[start : start + batch_size]
        with autocast(images.device, bf16):
            logits = model(x)
            loss_sum += loss_fn(logits, y).float() * len(y)  # a loss is a mean: any callable (scores, targets)
        scores.append(logits.float())
    all_scores = torch.cat(scores)
    correct = (all_scores.argmax(dim=1) == labels).sum()
    n = len(labels)
    return {
        "test_loss": loss_sum.item() / n,
        "test_acc": correct.item() / n,
        **compute(metrics or {}, all_scores, labels),
    }
