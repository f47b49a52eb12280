"""Model registry (timm-style) and the LeNet-5 networks.

A model is added by one function decorated with ``@register_model``: the function's name is the
registry name and the name of its YAML file in ``conf/model/``. Pooling layers are looked up the
same way through ``@register_pooling``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from lenet.core.errors import ConfigError
from lenet.core.factory import accepted_arguments, bind, call, target_name
from lenet.core.registry import register

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_POOLINGS: dict[str, Callable[[int, nn.Module], nn.Module]] = {}


def _lookup(registry: dict, kind: str, name: str) -> Callable:
    if name not in registry:
        known = ", ".join(sorted(registry))
        raise ConfigError(f"unknown {kind} {name!r}; known {kind}s: {known}")
    return registry[name]


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a model-building function under its own name; a duplicate name raises."""
    return register(_MODELS, "model", fn.__name__, fn)


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_MODELS)


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the registered model ``name``; an unknown name raises listing the known ones."""
    return _lookup(_MODELS, "model", name)(**kwargs)


DATA_ARGUMENTS = ("in_channels", "num_classes")  # every model takes them (timm's convention); the data decides them


def build_model(cfg: Mapping[str, Any], in_channels: int, num_classes: int) -> nn.Module:
    """The model that ``cfg`` names, by registry ``name`` or by ``_target_``, for the data's channels and classes.

    The config's other keys go to the factory. Every factory takes ``in_channels`` and ``num_classes``;
    one that does not, a config that sets them otherwise than the data, a key the factory does not take,
    or a model that cannot serve the data (raising ConfigError) end in one ConfigError line.
    """
    if ("name" in cfg) == ("_target_" in cfg):
        raise ConfigError("model needs either name (a registered model: " + ", ".join(list_models()) + ") or _target_")
    data = {"in_channels": in_channels, "num_classes": num_classes}
    for key, value in data.items():
        if key in cfg and cfg[key] != value:
            raise ConfigError(
                f"model.{key}={cfg[key]} disagrees with the data ({value}): the data decides it; "
                f"drop '~model.{key}'" + (" or set data.num_classes" if key == "num_classes" else "")
            )
    if "_target_" in cfg:
        bound = bind(cfg, "model")
    else:
        settings = {k: v for k, v in cfg.items() if k != "name"}
        bound = functools.partial(_lookup(_MODELS, "model", cfg["name"]), **settings)
    accepted, any_keyword = accepted_arguments(bound.func)
    missing = [key for key in DATA_ARGUMENTS if key not in accepted and not any_keyword]
    if missing:
        raise ConfigError(
            f"model {target_name(bound)} takes no {' or '.join(missing)}: every model takes in_channels and "
            "num_classes (the data's), so that it fits any dataset or refuses it"
        )
    return call(bound, "model", offered=data)


def register_pooling(fn: Callable[[int, nn.Module], nn.Module]) -> Callable:
    """Register a pooling builder ``fn(channels, activation)`` under its name.

    One trailing underscore is dropped, so ``max_`` (which must not shadow the builtin) is "max".
    """
    return register(_POOLINGS, "pooling", fn.__name__.removesuffix("_"), fn)


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

    def __init__(self, pooling: str = "max", num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, 5)
        self.pool1 = create_pooling(pooling, 6, nn.ReLU())
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.pool2 = create_pooling(pooling, 16, nn.ReLU())
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._relu_pool(self.pool1, self.conv1(x))  # (N, 1, 32, 32) -> (N, 6, 28, 28) -> (N, 6, 14, 14)
        x = self._relu_pool(self.pool2, self.conv2(x))  # -> (N, 16, 10, 10) -> (N, 16, 5, 5)
        x = F.relu(self.fc1(x.flatten(1)))  # -> (N, 120)
        x = F.relu(self.fc2(x))  # -> (N, 84)
        return self.fc3(x)  # -> (N, num_classes) logits

    @staticmethod
    def _relu_pool(pool: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if isinstance(pool, nn.MaxPool2d):
            # max pooling commutes with ReLU, values and gradients alike (tests check it bit for bit); pooling
            # first runs the ReLU on a quarter of the values (docs/performance.md)
            return F.relu(pool(x))
        return pool(F.relu(x))


@register_model
def lenet5(pooling: str = "max", num_classes: int = 10, in_channels: int = 1) -> LeNet5:
    """LeNet-5, modern reading: 6-16-120-84-10, 5x5 convolutions, 61,706 parameters."""
    return LeNet5(pooling=pooling, num_classes=num_classes, in_channels=in_channels)


# ----------------------------------------------------------------------------- LeNet-5 as in 1998

# LeCun et al. (1998), Table I: the S2 maps each C3 map takes as input
C3_TABLE: tuple[tuple[int, ...], ...] = (
    *((i, (i + 1) % 6, (i + 2) % 6) for i in range(6)),  # maps 0-5: 3 contiguous
    *((i, (i + 1) % 6, (i + 2) % 6, (i + 3) % 6) for i in range(6)),  # maps 6-11: 4 contiguous
    (0, 1, 3, 4),
    (1, 2, 4, 5),
    (0, 2, 3, 5),  # maps 12-14: 4 non-contiguous
    (0, 1, 2, 3, 4, 5),  # map 15: all
)

# the RBF centres: stylised 7x12 bitmaps of the digits, '#' = +1, '.' = -1 (after the paper's Fig. 3)
DIGIT_BITMAPS = (
    ".......|..###..|.#...#.|#.....#|#.....#|#.....#|#.....#|#.....#|.#...#.|..###..|.......|.......",
    ".......|...#...|..##...|.#.#...|...#...|...#...|...#...|...#...|...#...|.#####.|.......|.......",
    ".......|.#####.|#.....#|......#|.....#.|....#..|...#...|..#....|.#.....|#######|.......|.......",
    ".......|.#####.|#.....#|......#|......#|..####.|......#|......#|#.....#|.#####.|.......|.......",
    ".......|....##.|...#.#.|..#..#.|.#...#.|#....#.|#######|.....#.|.....#.|.....#.|.......|.......",
    ".......|#######|#......|#......|######.|......#|......#|......#|#.....#|.#####.|.......|.......",
    ".......|..####.|.#.....|#......|#......|######.|#.....#|#.....#|#.....#|.#####.|.......|.......",
    ".......|#######|......#|.....#.|....#..|...#...|...#...|..#....|..#....|..#....|.......|.......",
    ".......|.#####.|#.....#|#.....#|#.....#|.#####.|#.....#|#.....#|#.....#|.#####.|.......|.......",
    ".......|.#####.|#.....#|#.....#|#.....#|.######|......#|......#|.....#.|.####..|.......|.......",
)


def digit_centres() -> torch.Tensor:
    """The (10, 84) RBF centres: each digit's 7x12 bitmap as +1/-1, row by row."""
    rows = [bitmap.replace("|", "") for bitmap in DIGIT_BITMAPS]
    return torch.tensor([[1.0 if c == "#" else -1.0 for c in row] for row in rows])


class ScaledTanh(nn.Module):
    """The paper's squashing function f(a) = 1.7159 tanh(2a/3): f(1) = 1, f(-1) = -1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1.7159 * torch.tanh(x * (2.0 / 3.0))


class PartialConv2d(nn.Module):
    """A convolution whose output map j sees only the input maps ``table[j]`` (the paper's C3).

    Only the connections in the table are parameters; the dense kernel is assembled each forward.
    """

    def __init__(self, table: tuple[tuple[int, ...], ...], in_channels: int, kernel_size: int):
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, len(table), kernel_size
        flat = [out * in_channels + inp for out, inputs in enumerate(table) for inp in inputs]
        self.register_buffer("connection_index", torch.tensor(flat), persistent=False)
        self.weight = nn.Parameter(torch.empty(len(flat), kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(len(table)))
        # each output map's fan-in, and the same per connection (kernel) of that map
        self.fan_in = torch.tensor([len(inputs) * kernel_size**2 for inputs in table], dtype=torch.float32)
        self.connection_fan_in = torch.tensor([self.fan_in[out] for out, inputs in enumerate(table) for _ in inputs])

    def connections(self) -> torch.Tensor:
        """(out_channels, in_channels) bool: which input maps each output map sees."""
        mask = torch.zeros(self.out_channels * self.in_channels, dtype=torch.bool)
        mask[self.connection_index.cpu()] = True
        return mask.view(self.out_channels, self.in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size
        dense = self.weight.new_zeros(self.out_channels * self.in_channels, k, k)
        dense = dense.index_copy(0, self.connection_index, self.weight)
        return F.conv2d(x, dense.view(self.out_channels, self.in_channels, k, k), self.bias)


class EuclideanRBF(nn.Module):
    """Output units y_i = sum_j (x_j - w_ij)^2 with fixed centres w (a buffer, not trained)."""

    def __init__(self, centres: torch.Tensor):
        super().__init__()
        self.register_buffer("centres", centres)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (N, 84), (10, 84) -> (N, 10) penalties; the expanded square keeps it one matmul
        return x.pow(2).sum(1, keepdim=True) - 2 * x @ self.centres.t() + self.centres.pow(2).sum(1)


class LeNet5Classic(nn.Module):
    """LeNet-5 as LeCun et al. (1998) describe it: scaled tanh, trainable subsampling, the partial
    C3 table, and Euclidean RBF outputs with fixed digit-bitmap centres, trained by the paper's loss
    (``lenet.core.losses.LeCunRBFLoss``, the ``lecun_rbf`` option of the loss group)."""

    def __init__(self, pooling: str = "subsample"):
        super().__init__()
        self.act = ScaledTanh()
        self.c1 = nn.Conv2d(1, 6, 5)
        self.s2 = create_pooling(pooling, 6, self.act)
        self.c3 = PartialConv2d(C3_TABLE, 6, 5)
        self.s4 = create_pooling(pooling, 16, self.act)
        self.c5 = nn.Conv2d(16, 120, 5)
        self.f6 = nn.Linear(120, 84)
        self.output = EuclideanRBF(digit_centres())
        self._init_weights()

    def _init_weights(self) -> None:
        # the paper: uniform in +-2.4 / fan-in, which keeps the sums in tanh's responsive range
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, (nn.Conv2d, nn.Linear)):
                    bound = 2.4 / module.weight[0].numel()
                    module.weight.uniform_(-bound, bound)
                    module.bias.uniform_(-bound, bound)
                elif isinstance(module, PartialConv2d):
                    module.weight.uniform_(-1, 1).mul_((2.4 / module.connection_fan_in).view(-1, 1, 1))
                    module.bias.uniform_(-1, 1).mul_(2.4 / module.fan_in)
                elif isinstance(module, Subsample):
                    module.weight.uniform_(-2.4 / 4, 2.4 / 4)
                    module.bias.uniform_(-2.4 / 4, 2.4 / 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.s2(self.act(self.c1(x)))  # (N, 1, 32, 32) -> C1 (N, 6, 28, 28) -> S2 (N, 6, 14, 14)
        x = self.s4(self.act(self.c3(x)))  # -> C3 (N, 16, 10, 10) -> S4 (N, 16, 5, 5)
        x = self.act(self.c5(x)).flatten(1)  # -> C5 (N, 120, 1, 1) -> (N, 120)
        x = self.act(self.f6(x))  # -> F6 (N, 84)
        return -self.output(x)  # -> (N, 10) negated penalties: the best class has the largest score


@register_model
def lenet5_classic(pooling: str = "subsample", in_channels: int = 1, num_classes: int = 10) -> LeNet5Classic:
    """LeNet-5 of LeCun et al. (1998): 60,000 trainable parameters with trainable subsampling.

    It reads grayscale images into ten classes (its RBF outputs are the ten digits' bitmaps): other data is refused.
    """
    if (in_channels, num_classes) != (1, 10):
        raise ConfigError(
            f"model=lenet5_classic takes 1-channel images in 10 classes (its outputs are the ten digits' bitmaps); "
            f"this data has {in_channels} channel{'s' * (in_channels != 1)} and {num_classes} classes: "
            "use model=lenet5"
        )
    return LeNet5Classic(pooling=pooling)
