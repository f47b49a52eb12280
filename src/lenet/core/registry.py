"""Name -> function registries (models, poolings, datasets, metrics) and dotted-path imports for user code."""

from __future__ import annotations

from typing import Callable, TypeVar

from lenet.core.errors import ConfigError

F = TypeVar("F", bound=Callable)


def register(registry: dict[str, Callable], kind: str, name: str, fn: F) -> F:
    """Put ``fn`` into ``registry`` under ``name``; a name already taken raises, naming who took it."""
    if name in registry:
        raise ValueError(f"{kind} {name!r} is already registered (by {registry[name].__module__})")
    registry[name] = fn
    return fn


def import_function(path: str, key: str) -> Callable:
    """The function a dotted ``path`` names (a user's own module); a failed import is a ConfigError naming ``key``."""
    from hydra.utils import get_method

    try:
        return get_method(path)
    except Exception as e:  # Hydra wraps import errors of every kind
        raise ConfigError(f"{key}: cannot import {path}: {str(e).splitlines()[0]}") from None
