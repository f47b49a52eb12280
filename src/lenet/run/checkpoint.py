"""Per-epoch checkpoints: the run's whole ``TrainState``, written atomically, read back without running code."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any, Optional

import torch

from lenet.core.errors import CheckpointError, ConfigError
from lenet.core.metrics import best_row
from lenet.run.config import changed_keys
from lenet.run.files import save_torch
from lenet.training.callbacks import Callback
from lenet.training.state import TrainState

CHECKPOINT_FILE = "checkpoint.pt"
# the state's own keys (step, epoch, callbacks, stop_reason: read with defaults from older checkpoints) and ours
CHECKPOINT_KEYS = {
    "model": dict,
    "optimizer": dict,
    "scheduler": dict,
    "rng": dict,
    "history": list,
    "config": dict,
    "wall_seconds": (int, float),
}


class Checkpointing(Callback):
    """After every epoch, the state of the run (and the config and thread count it depends on) in one file.

    At its first save it checks that every callback's state loads back as a checkpoint is loaded (tensors,
    numbers, strings and containers of them): one that would not is refused then, naming the callback and the
    type, rather than at a resume that could no longer read the checkpoint.
    """

    def __init__(
        self,
        path: Path,
        config: dict[str, Any],
        num_threads: int,
        wall_seconds_before: float = 0.0,
        epochs_saved: int = 0,
    ):
        self.path, self.config, self.num_threads = path, config, num_threads
        self.wall_seconds_before = wall_seconds_before
        self.started = time.perf_counter()
        self.epochs_saved = epochs_saved  # the epochs the checkpoint on disk holds (a resume does not train them again)
        self.checked = False

    def on_epoch_end(self, run: TrainState, row: dict[str, Any]) -> None:
        if not self.checked:
            check_callback_states(run.callbacks)
            self.checked = True
        state = {
            **run.state_dict(),
            "config": self.config,
            "wall_seconds": self.wall_seconds_before + time.perf_counter() - self.started,
            "num_threads": self.num_threads,  # CPU results depend on it: a resumed run takes it again
        }
        save_torch(state, self.path)  # a crash leaves the previous checkpoint
        self.epochs_saved = run.epoch


PLAIN = (torch.Tensor, int, float, bool, str, type(None), torch.Size, torch.dtype)


def _odd_value(value: Any) -> Optional[Any]:
    """The first value in ``value`` (containers walked) that is not a tensor, number, string or None."""
    if isinstance(value, dict):
        return next((odd for k, v in value.items() for odd in (_odd_value(k), _odd_value(v)) if odd is not None), None)
    if isinstance(value, (list, tuple)):
        return next((odd for v in value if (odd := _odd_value(v)) is not None), None)
    return None if type(value) in PLAIN or isinstance(value, torch.Tensor) else value


def check_callback_states(callbacks: Any) -> None:
    """Refuse (CheckpointError, one line) a callback whose state a checkpoint could not load back."""
    for name, callback in callbacks.items():
        if not callable(getattr(callback, "state_dict", None)):
            continue
        state = callback.state_dict()
        odd = _odd_value(state)
        if odd is None:
            buffer = io.BytesIO()
            torch.save(state, buffer)
            buffer.seek(0)
            try:
                torch.load(buffer, weights_only=True)
                continue
            except Exception as e:  # torch's safe unpickler names what it refused
                why = " ".join(str(e).split())[:200]
        else:
            why = f"a {type(odd).__module__}.{type(odd).__qualname__} ({odd!r:.60})"
        raise CheckpointError(
            f"callbacks.{name} ({type(callback).__name__}) keeps {why} in its state_dict(), which a checkpoint "
            "cannot load back: keep tensors, Python numbers, strings and lists or dicts of them (e.g. float(x) "
            "for a numpy number)"
        )


class BestWeights(Callback):
    """After every epoch that is the best so far by ``key``, its weights (those evaluated) in ``path`` (best.pth)."""

    def __init__(self, path: Path, key: str):
        self.path, self.key = path, key

    def on_epoch_end(self, run: TrainState, row: dict[str, Any]) -> None:
        if best_row(run.history, self.key) is row:
            save_torch(run.eval_model.state_dict(), self.path)


def _unusable(path: Path, why: str) -> CheckpointError:
    return CheckpointError(
        f"cannot resume from {path}: {why}; delete it to start this run over, or start a new run dir "
        "(another hydra.run.dir)"
    )


def load_checkpoint(path: Path) -> Optional[dict[str, Any]]:
    """The state saved at ``path``, or None when there is none; a file that is not one of ours raises CheckpointError."""
    if not path.exists():
        return None
    if not path.is_file():
        raise _unusable(path, "it is not a file")
    try:
        # tensors, numbers, strings and containers only: a crafted file cannot run code when it is read
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for empty, truncated, corrupt or foreign files
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise _unusable(path, f"it is empty, truncated, corrupt or not a checkpoint ({type(e).__name__}: {reason})")
    missing = [
        k for k, kind in CHECKPOINT_KEYS.items() if not isinstance(state, dict) or not isinstance(state.get(k), kind)
    ]
    if missing:
        raise _unusable(path, f"it is not a checkpoint of this harness (no valid {', '.join(missing)})")
    return state


def check_config(checkpoint: dict[str, Any], path: Path, config: dict[str, Any], ignore: tuple[str, ...]) -> None:
    """Raise ConfigError naming the keys (those under ``ignore`` aside) whose values differ from the checkpoint's."""
    changed = changed_keys(checkpoint["config"], config, ignore)
    if changed:
        raise ConfigError(
            f"cannot resume from {path}: it was made with different values of {', '.join(changed)}; "
            "resume with the same config or start a new run dir"
        )


def restore(
    run: TrainState, checkpoint: dict[str, Any], path: Path, config: dict[str, Any], ignore: tuple[str, ...]
) -> None:
    """Continue ``run`` from ``checkpoint``; one made with another config (keys under ``ignore`` aside) is refused."""
    check_config(checkpoint, path, config, ignore)
    try:
        run.load_state_dict(checkpoint)
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        reason = " ".join(str(e).split())[:300]
        raise _unusable(path, f"its saved state does not fit this model and optimizer ({type(e).__name__}: {reason})")
