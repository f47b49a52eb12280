"""Per-epoch metrics of the validation and test sets: functions of all their scores and targets (``trainer.metrics``).

A metric is one function ``(scores (N, C), targets (N,)) -> float`` or ``-> dict[str, float]`` (several
values, e.g. one per class), registered with ``@register_metric`` or named by its dotted import path
(``my_pkg.metrics.f1``). Its values land in ``metrics.jsonl`` as ``<split>_<name>`` (``val_<name>`` and
``test_<name>``; ``<split>_<name>_<key>`` for a dict), in ``summary.json`` as ``final_<split>_<name>...``
and in every logger. ``accuracy`` is always computed (as ``val_acc`` and ``test_acc``); ``trainer.metrics``
lists the others.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Union

import torch

from lenet.core.errors import ConfigError
from lenet.core.registry import import_function, register

Metric = Callable[[torch.Tensor, torch.Tensor], Union[float, dict[str, float]]]
_METRICS: dict[str, Metric] = {}


def register_metric(fn: Metric) -> Metric:
    """Register a metric under its function's name; a duplicate name raises."""
    return register(_METRICS, "metric", fn.__name__, fn)


def list_metrics() -> list[str]:
    """Names of the registered metrics, sorted."""
    return sorted(_METRICS)


def get_metric(name: str) -> Metric:
    """The registered metric ``name``, or the function a dotted ``name`` imports; else ConfigError."""
    if name in _METRICS:
        return _METRICS[name]
    if "." in name:
        return import_function(name, "trainer.metrics")
    raise ConfigError(
        f"trainer.metrics: unknown metric {name!r}; known: {', '.join(list_metrics())}, or a dotted path to a function"
    )


ALWAYS = "accuracy"  # every run records it, as val_acc and test_acc
_KEYS = {ALWAYS: "acc"}


def metric_key(name: str, split: str = "test") -> str:
    """The metrics.jsonl key of metric ``name`` (a dotted path's last part) on ``split``: ``test_<name>``, ``val_acc``."""
    return f"{split}_{_KEYS.get(name) or name.rsplit('.', 1)[-1]}"


def build_metrics(names: list[str]) -> dict[str, Metric]:
    """Accuracy and the metrics ``names`` lists, in that order; listing accuracy itself is a ConfigError."""
    if ALWAYS in names:
        raise ConfigError(
            f"trainer.metrics lists {ALWAYS}, which every run records as val_acc and test_acc: list only the others, "
            "e.g. [top5]"
        )
    return {ALWAYS: get_metric(ALWAYS), **{name: get_metric(name) for name in names}}


def minimised(key: str) -> bool:
    """Whether a smaller value of metrics.jsonl key ``key`` is the better one (losses, times)."""
    return "loss" in key or key == "seconds"


def best_row(rows: list[dict[str, Any]], key: str) -> Optional[dict[str, Any]]:
    """The row with the best value of ``key`` (the lowest for a loss, else the highest; the earliest of equals)."""
    scored = [row for row in rows if isinstance(row.get(key), (int, float)) and math.isfinite(row[key])]
    if not scored:
        return None
    sign = 1 if minimised(key) else -1
    return min(scored, key=lambda row: sign * row[key])


def compute(
    metrics: dict[str, Metric], scores: torch.Tensor, targets: torch.Tensor, split: str = "test"
) -> dict[str, float]:
    """Every metric's values on ``scores``, keyed ``<split>_<name>`` (``<split>_<name>_<key>`` for several)."""
    row: dict[str, float] = {}
    for name, fn in metrics.items():
        value = fn(scores, targets)
        if isinstance(value, dict):
            row.update({f"{metric_key(name, split)}_{key}": float(v) for key, v in value.items()})
        else:
            row[metric_key(name, split)] = float(value)
    return row


@register_metric
def accuracy(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of the images whose highest score is their class (``val_acc``, ``test_acc``: always recorded)."""
    return (scores.argmax(dim=1) == targets).sum().item() / len(targets)  # exact: a count over the count


@register_metric
def top5(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of the images whose class is among their five highest scores."""
    top = scores.topk(min(5, scores.shape[1]), dim=1).indices
    return (top == targets[:, None]).any(dim=1).float().mean().item()


@register_metric
def per_class_accuracy(scores: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Accuracy over the images of each class that the test set holds, keyed by the class."""
    correct = scores.argmax(dim=1) == targets
    return {str(c): correct[targets == c].float().mean().item() for c in targets.unique().tolist()}
