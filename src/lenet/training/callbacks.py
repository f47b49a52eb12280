"""Callbacks: how a run's loop is varied without editing it.

A callback is any object with any of these methods (``lenet.training.callbacks.Callback`` lists them,
doing nothing, for those who like a base class):

- ``on_fit_start(run)``: before the first step (also of a resumed run, after its state is restored);
- ``on_epoch_start(run)``: before each epoch's first step;
- ``on_before_optimizer_step(run)``: the gradients are ready (clip or inspect them here). On CUDA it is
  captured with the step as a graph (``trainer.cuda_graphs``) when the callback says ``graph_safe = True``:
  tensor work only, no ``.item()``; without it the step runs eagerly;
- ``on_step_end(run, loss)``: after each optimizer step; ``loss`` is the step's loss as a tensor on the
  device (reading it with ``.item()`` costs a host sync);
- ``on_epoch_end(run, row)``: the epoch is evaluated; ``row`` is its metrics.jsonl row, to which the
  callback may add keys (declare them in a ``row_keys`` attribute so that others can watch them);
- ``on_fit_end(run, summary)``: the run completed; keys added to ``summary`` land in summary.json;
- ``state_dict()`` / ``load_state_dict(state)``: its state, saved in every checkpoint and restored on
  resume (tensors, numbers, strings and containers of them).

``run`` is the ``lenet.training.state.TrainState``: ``model``, ``optimizer``, ``step``, ``epoch``,
``history``, ``run_dir``, ``config``, ``request_stop(reason)``, ... The ``callbacks`` config group
holds them as a dict of ``_target_`` nodes, as ``logger`` does: ``callbacks=[ema,early_stopping]``.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

from lenet.core.errors import ConfigError
from lenet.core.factory import bind, call

HOOKS = ("on_fit_start", "on_epoch_start", "on_before_optimizer_step", "on_step_end", "on_epoch_end", "on_fit_end")


class Callback:
    """A callback that does nothing: subclass it and override the hooks you need (the others cost nothing)."""

    def on_fit_start(self, run: Any) -> None:
        """Before the first step."""

    def on_epoch_start(self, run: Any) -> None:
        """Before each epoch's first step."""

    def on_before_optimizer_step(self, run: Any) -> None:
        """After the backward pass, before the optimizer steps."""

    def on_step_end(self, run: Any, loss: Any) -> None:
        """After each optimizer step."""

    def on_epoch_end(self, run: Any, row: dict[str, Any]) -> None:
        """After each epoch's evaluation."""

    def on_fit_end(self, run: Any, summary: dict[str, Any]) -> None:
        """After the last epoch of a run that completed."""


def implements(callback: Any, hook: str) -> bool:
    """Whether ``callback`` has its own ``hook`` (not the do-nothing one of ``Callback``)."""
    method = getattr(callback, hook, None)
    if not callable(method):
        return False
    # a hook inherited unchanged from the do-nothing base class is not called at all
    return getattr(type(callback), hook, None) is not getattr(Callback, hook)


class Callbacks(Mapping[str, Any]):
    """Named callbacks called in order; each hook calls only the callbacks that implement it."""

    def __init__(self, callbacks: Mapping[str, Any] | None = None):
        self._callbacks = dict(callbacks or {})
        self._hooks = {
            hook: [getattr(cb, hook) for cb in self._callbacks.values() if implements(cb, hook)] for hook in HOOKS
        }

    def __getitem__(self, name: str) -> Any:
        return self._callbacks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._callbacks)

    def __len__(self) -> int:
        return len(self._callbacks)

    def then(self, more: Mapping[str, Any]) -> "Callbacks":
        """These callbacks followed by ``more``."""
        return Callbacks({**self._callbacks, **more})

    def on_fit_start(self, run: Any) -> None:
        for hook in self._hooks["on_fit_start"]:
            hook(run)

    def on_epoch_start(self, run: Any) -> None:
        for hook in self._hooks["on_epoch_start"]:
            hook(run)

    def on_before_optimizer_step(self, run: Any) -> None:
        for hook in self._hooks["on_before_optimizer_step"]:
            hook(run)

    def on_step_end(self, run: Any, loss: Any) -> None:
        for hook in self._hooks["on_step_end"]:
            hook(run, loss)

    def on_epoch_end(self, run: Any, row: dict[str, Any]) -> None:
        for hook in self._hooks["on_epoch_end"]:
            hook(run, row)

    def on_fit_end(self, run: Any, summary: dict[str, Any]) -> None:
        for hook in self._hooks["on_fit_end"]:
            hook(run, summary)

    def row_keys(self) -> list[str]:
        """The keys the callbacks say they add to each epoch's row."""
        return [key for cb in self._callbacks.values() for key in getattr(cb, "row_keys", ())]


def build_callbacks(nodes: Mapping[str, Any]) -> Callbacks:
    """The callbacks that ``nodes`` (the ``callbacks`` config: name -> node with ``_target_``) describe."""
    built = {}
    for name, node in nodes.items():
        key = f"callbacks.{name}"
        if not isinstance(node, Mapping):
            raise ConfigError(f"{key} must be a node with a _target_, got {node!r}")
        callback = call(bind(node, key), key)  # a value it refuses is one line; a bug in it keeps its traceback
        methods = [m for m in dir(callback) if m.startswith("on_") and callable(getattr(callback, m))]
        unknown = [m for m in methods if m not in HOOKS]
        if unknown:
            raise ConfigError(
                f"{key}._target_={node['_target_']} defines {', '.join(unknown)}, which no run calls; "
                f"the hooks are {', '.join(HOOKS)}"
            )
        if not methods and not callable(getattr(callback, "state_dict", None)):
            raise ConfigError(
                f"{key}._target_={node['_target_']} is not a callback: it has none of the hooks {', '.join(HOOKS)}"
            )
        built[name] = callback
    return Callbacks(built)
