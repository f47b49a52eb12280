"""The one trust rule for configs lenet did not compose itself (a run folder from elsewhere): judged on what would be built.

The config is resolved first (an interpolation is judged by what it resolves to), then every ``_target_``
at any depth, and ``data.loader``, is looked at. A target is accepted only when the object it names is
defined where its name says: in the named module or a submodule of it, under the name given, not reached
through another module's attributes (``lenet.core.losses.torch.fx...`` is torch's, not lenet's). And only
when it is one of:

- a class of ``nn.Module`` defined in ``torch.nn`` or in lenet;
- a registered model or dataset function;
- anything defined in a module the user trusts explicitly (``--trust MODULE``).

Nothing outside lenet, torch and the trusted modules is imported to find out. A refusal is one line, before
anything is built.
"""

from __future__ import annotations

import importlib
from typing import Any, Iterator, Optional, Sequence

from lenet.core.errors import UserError

TRUSTED_PACKAGES = ("lenet", "torch")  # imported to look a target up; what they define is still judged by kind
MODULE_HOMES = ("torch.nn", "lenet")  # where an nn.Module class may come from without --trust


class UntrustedError(UserError):
    """A config would build something lenet does not trust."""


def _within(name: str, modules: Sequence[str]) -> bool:
    return any(name == m or name.startswith(m + ".") for m in modules)


def modules_of(names: Sequence[str]) -> tuple[str, ...]:
    """Module names as given on a command line (``my_nets``, ``pkg.nets.``), cleaned."""
    return tuple(n.strip().rstrip(".") for n in names if n.strip())


def targets(node: Any, key: str) -> Iterator[tuple[str, Any]]:
    """``(key, target)`` of every ``_target_`` in a resolved config node, at any depth, lists included."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "_target_":
                yield f"{key}._target_", v
            else:
                yield from targets(v, f"{key}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from targets(v, f"{key}[{i}]")


def defined_object(target: str) -> tuple[Optional[Any], str]:
    """The object ``target`` names if it is defined where the name says, and why not otherwise.

    Only names under lenet, torch or a trusted module are imported (the caller checks that first).
    """
    parts = target.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module_name, rest = ".".join(parts[:cut]), parts[cut:]
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        except Exception as e:  # a module that fails to import
            return None, f"its module {module_name} does not import ({type(e).__name__})"
        obj: Any = module
        for attribute in rest:
            if not hasattr(obj, attribute):
                return None, f"{module_name} has no {'.'.join(rest)}"
            obj = getattr(obj, attribute)
        home = getattr(obj, "__module__", None)
        if not isinstance(home, str) or not _within(home, (module_name,)) or obj.__qualname__ != ".".join(rest):
            where = f"{home}.{getattr(obj, '__qualname__', '?')}" if isinstance(home, str) else "elsewhere"
            return None, f"it is reached through {module_name}'s attributes but defined as {where}"
        return obj, ""
    return None, "no part of it is a module"


def refusal(target: Any, trusted: Sequence[str]) -> Optional[str]:
    """Why ``target`` must not be built (None when it may be)."""
    from torch import nn

    from lenet.core.data import _DATASETS
    from lenet.core.models import _MODELS

    if not isinstance(target, str) or "." not in target:
        return "it is not a dotted name"
    if not _within(target, (*TRUSTED_PACKAGES, *trusted)):
        return "it lies outside lenet and torch"
    obj, why = defined_object(target)
    if obj is None:
        return why
    if _within(obj.__module__, trusted):
        return None
    if isinstance(obj, type) and issubclass(obj, nn.Module) and _within(obj.__module__, MODULE_HOMES):
        return None
    if any(obj is fn for fn in (*_MODELS.values(), *_DATASETS.values())):
        return None
    return "it is not an nn.Module class of torch.nn or lenet, nor a registered model or dataset"


def check_buildable(config: dict, source: str, trust: Sequence[str] = ()) -> None:
    """Refuse a resolved ``config`` (from ``source``) whose model, loss or data would build what lenet does not trust."""
    trusted = modules_of(trust)
    named = [pair for part in ("model", "loss", "data") for pair in targets(config.get(part), part)]
    loader = (config.get("data") or {}).get("loader") if isinstance(config.get("data"), dict) else None
    if loader is not None:
        named.append(("data.loader", loader))
    for key, target in named:
        why = refusal(target, trusted)
        if why is not None:
            module = str(target).rsplit(".", 1)[0]
            raise UntrustedError(
                f"{source} names {target} ({key}), which lenet does not build unless told to trust it ({why}): "
                f"a run folder from elsewhere could run code through it; if it is yours, pass --trust {module} "
                "(load_run(..., trust=[...]))"
            )
