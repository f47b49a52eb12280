"""Build a pluggable component from its config node: Hydra's ``instantiate`` on ``_target_``, then a call.

A node names its callable with ``_target_`` and holds that callable's own arguments; the harness
adds what only it knows at run time (the model's parameters, the run's length). A target that
cannot be found, an argument it does not take or a value it refuses (a ``ValueError``, as torch's
and lenet's own checks raise) ends in one ``ConfigError`` line naming the key. Any other exception
raised inside the callable once its arguments were accepted is a bug, and stays one: its traceback
is kept.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Mapping

from lenet.core.errors import ConfigError


def bind(node: Mapping[str, Any], key: str, reserved: tuple[str, ...] = ()) -> functools.partial:
    """The callable that ``node['_target_']`` names, with the node's arguments bound (``reserved`` keys left out)."""
    from hydra.errors import InstantiationException
    from hydra.utils import get_object, instantiate

    if "_target_" not in node:
        raise ConfigError(f"{key} has no _target_: set {key}._target_ to an importable class or function")
    try:
        get_object(str(node["_target_"]))
    except Exception as e:  # a module not on the path, a name not in it, an import that fails
        cause = e.__cause__ or e
        reason = " ".join(str(cause).split("\n")[0].split())[:200] or type(cause).__name__
        raise ConfigError(
            f"{key}._target_={node['_target_']} cannot be imported ({reason}); is its module on PYTHONPATH?"
        ) from None
    arguments = {k: v for k, v in node.items() if k not in reserved}
    try:
        bound = instantiate({**arguments, "_partial_": True}, _convert_="all")
    except InstantiationException as e:
        raise ConfigError(f"{key}._target_={node['_target_']}: {str(e).splitlines()[0]}") from None
    if not isinstance(bound, functools.partial):  # only a partial's arguments can be checked before the call
        raise ConfigError(f"{key}._target_={node['_target_']} is not a class or function")
    return bound


def accepted_arguments(fn: Callable) -> tuple[list[str], bool]:
    """Names of the keyword arguments ``fn`` takes (a class: its ``__init__``), and whether it takes ``**kwargs``."""
    signature = _signature(fn)
    if signature is None:  # some builtins have no signature
        return [], True
    parameters = list(signature.parameters.values())
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    any_keyword = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in parameters)
    return [p.name for p in parameters if p.kind in kinds], any_keyword


def _signature(fn: Callable) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


def target_name(fn: Callable) -> str:
    """The dotted name a config would give ``fn``'s ``_target_``."""
    fn = fn.func if isinstance(fn, functools.partial) else fn
    return f"{fn.__module__}.{fn.__qualname__}"


def call(bound: functools.partial, key: str, *args: Any, offered: Mapping[str, Any] | None = None) -> Any:
    """``bound(*args, **offered)``, offering only what it accepts and its config does not set.

    The arguments are checked against the callable's signature first (``bind_partial``): one it does not
    take, or a required one missing, is a ConfigError naming ``key``'s keys. A ``ValueError`` raised by the
    call itself (a value it refuses) is one too; any other exception is raised as it is (a bug).
    """
    accepted, any_keyword = accepted_arguments(bound.func)
    name = target_name(bound)
    extra = {k: v for k, v in (offered or {}).items() if (k in accepted or any_keyword) and k not in bound.keywords}
    signature = _signature(bound.func)
    if signature is not None:
        try:
            arguments = signature.bind_partial(*bound.args, *args, **bound.keywords, **extra).arguments
        except TypeError as e:
            unknown = [k for k in bound.keywords if k not in accepted]
            if not unknown:  # too many positional arguments: not the config's doing
                raise ConfigError(f"{key}._target_={name} cannot be called as a {key} ({e})") from None
            drop = " ".join(f"'~{key}.{k}'" for k in unknown)
            raise ConfigError(
                f"{name} takes no argument {', '.join(f'{key}.{k}={bound.keywords[k]!r}' for k in unknown)} "
                f"(it takes {', '.join(accepted[len(args) :])}); "
                f"drop it with {drop} or choose an option whose keys fit"
            ) from None
        missing = [
            p.name
            for p in signature.parameters.values()
            if p.default is inspect.Parameter.empty
            and p.name not in arguments
            and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        ]
        if missing:
            raise ConfigError(
                f"{name} needs {' and '.join(f'{key}.{n}' for n in missing)}: add it with +{key}.{missing[0]}=VALUE"
            )
    try:
        return bound(*args, **extra)
    except ValueError as e:
        settings = ", ".join(f"{k}={v!r}" for k, v in bound.keywords.items())
        raise ConfigError(
            f"{key} {name} refused its arguments ({settings}): {e}; fix it with {key}.KEY=VALUE"
        ) from None
