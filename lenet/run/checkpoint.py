"""Atomic per-epoch checkpoints: everything needed to continue a run bit for bit."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from lenet.run.config import changed_keys
from lenet.core.errors import CheckpointError, ConfigError
from lenet.run.tracking import atomic_file

CHECKPOINT_FILE = "checkpoint.pt"


def save_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    generator: torch.Generator,
    history: list[dict[str, Any]],
    config: dict[str, Any],
    wall_seconds: float,
    num_threads: int,
) -> None:
    """Write the training state to ``path`` through a temporary file and a rename, so a crash leaves the old one."""
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(generator),
        "history": history,
        "config": config,
        "wall_seconds": wall_seconds,
        "num_threads": num_threads,  # CPU results depend on it: a resumed run takes it again
    }
    with atomic_file(path) as tmp:
        torch.save(state, tmp)


CHECKPOINT_KEYS = {"model": dict, "optimizer": dict, "scheduler": dict, "rng": dict, "history": list, "config": dict,
                   "wall_seconds": (int, float)}  # fmt: skip


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


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """The random-number states that decide what happens next in training."""
    state = {"torch": torch.get_rng_state(), "shuffle": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    """Restore what ``rng_state`` saved."""
    torch.set_rng_state(state["torch"])
    generator.set_state(state["shuffle"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_config(checkpoint: dict[str, Any], path: Path, config: dict[str, Any], ignore: tuple[str, ...]) -> None:
    """Raise ConfigError naming the keys (those under ``ignore`` aside) whose values differ from the checkpoint's."""
    changed = changed_keys(checkpoint["config"], config, ignore)
    if changed:
        raise ConfigError(
            f"cannot resume from {path}: it was made with different values of {', '.join(changed)}; "
            "resume with the same config or start a new run dir"
        )


def restore(
    checkpoint: dict[str, Any],
    path: Path,
    config: dict[str, Any],
    ignore: tuple[str, ...],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    generator: torch.Generator,
) -> tuple[list[dict[str, Any]], float]:
    """Load a checkpoint's states into the training objects; return its history and wall seconds.

    A checkpoint made with another config (keys under ``ignore`` aside) is refused with ConfigError.
    """
    check_config(checkpoint, path, config, ignore)
    try:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])  # its step count places the lr schedule
        set_rng_state(checkpoint["rng"], generator)
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        reason = " ".join(str(e).split())[:300]
        raise _unusable(path, f"its saved state does not fit this model and optimizer ({type(e).__name__}: {reason})")
    return checkpoint["history"], checkpoint["wall_seconds"]
