"""Model registry (timm-style) and the LeNet-5 networks.

A model is added by one function decorated with ``@register_model``: the function's name is the
registry name and the name of its YAML file in ``conf/model/``. Pooling layers are looked up the
same way through ``@register_pooling``.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lenet.errors import ConfigError

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_POOLINGS: dict[str, Callable[[int, nn.Module], nn.Module]] = {}


def _register(registry: dict, kind: str, name: str, fn: Callable) -> Callable:
    if name in registry:
        raise ValueError(f"{kind} {name!r} is already registered (by {registry[name].__module__})")
    registry[name] = fn
    return fn


def _lookup(registry: dict, kind: str, name: str) -> Callable:
    if name not in registry:
        known = ", ".join(sorted(registry))
        raise ConfigError(f"unknown {kind} {name!r}; known {kind}s: {known}")
    return registry[name]


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a model-building function under its own name; a duplicate name raises."""
    return _register(_MODELS, "model", fn.__name__, fn)


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_MODELS)


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the registered model ``name``; an unknown name raises listing the known ones."""
    return _lookup(_MODELS, "model", name)(**kwargs)


def register_pooling(fn: Callable[[int, nn.Module], nn.Module]) -> Callable:
    """Register a pooling builder ``fn(channels, activation)`` under its name.

    One trailing underscore is dropped, so ``max_`` (which must not shadow the builtin) is "max".
    """
    return _register(_POOLINGS, "pooling", fn.__name__.removesuffix("_"), fn)


def list_poolings() -> list[str]:
    """Names of all registered pooling layers, sorted."""
    return sorted(_POOLINGS)


def create_pooling(name: str, channels: int, activation: nn.Module) -> nn.Module:
    """Build a 2x2 pooling layer for ``channels`` maps; trainable ones apply ``activation`` after."""
    return _lookup(_POOLINGS, "pooling", name)(channels, activation)


def num_params(model: nn.Module) -> int:
    """Number of trainable parameters (buffers such as fixed RBF centres are not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------- pooling layers


class Subsample(nn.Module):
    """LeCun et al. (1998) S-layer: per map, the 2x2 sum times a trainable coefficient plus a bias."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        window_sum = F.avg_pool2d(x, 2, divisor_override=1)  # (N, C, H/2, W/2)
        return window_sum * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


@register_pooling
def avg(channels: int, activation: nn.Module) -> nn.Module:
    return nn.AvgPool2d(2)


@register_pooling
def max_(channels: int, activation: nn.Module) -> nn.Module:
    return nn.MaxPool2d(2)


@register_pooling
def subsample(channels: int, activation: nn.Module) -> nn.Module:
    # the paper squashes each S-unit's output, as it does every other unit's
    return nn.Sequential(Subsample(channels), activation)


# ----------------------------------------------------------------------------- modern LeNet-5


class LeNet5(nn.Module):
    """LeNet-5 as most code reads it today: ReLU, full C3 connections, a linear 10-way output."""

    def __init__(self, pooling: str = "max", num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.pool1 = create_pooling(pooling, 6, nn.ReLU())
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.pool2 = create_pooling(pooling, 16, nn.ReLU())
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(F.relu(self.conv1(x)))  # (N, 1, 32, 32) -> (N, 6, 28, 28) -> (N, 6, 14, 14)
        x = self.pool2(F.relu(self.conv2(x)))  # -> (N, 16, 10, 10) -> (N, 16, 5, 5)
        x = F.relu(self.fc1(x.flatten(1)))  # -> (N, 120)
        x = F.relu(self.fc2(x))  # -> (N, 84)
        return self.fc3(x)  # -> (N, num_classes) logits

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Cross-entropy on the logits."""
        return F.cross_entropy(logits, targets, reduction=reduction)


@register_model
def lenet5(pooling: str = "max", num_classes: int = 10) -> LeNet5:
    """LeNet-5, modern reading: 6-16-120-84-10, 5x5 convolutions, 61,706 parameters."""
    return LeNet5(pooling=pooling, num_classes=num_classes)
