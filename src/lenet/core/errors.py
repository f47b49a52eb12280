"""Exceptions for problems a user can cause and fix; the entry point prints them as one line."""


class UserError(Exception):
    """A problem with the user's input; the message says what to do about it."""


class ConfigError(UserError):
    """A config value is out of its allowed range."""


class DataError(UserError):
    """The dataset is missing, truncated or corrupt."""


class CheckpointError(UserError):
    """A checkpoint to resume from is unusable (empty, corrupt, foreign, made for another model)."""


class DeviceError(UserError):
    """The requested device is not available on this machine."""


class DivergedError(UserError):
    """The loss became NaN or infinite."""


class Pruned(Exception):
    """The Optuna search's pruner stopped this trial after an epoch: it is not promising."""


class Interrupted(Exception):
    """Training was stopped by SIGINT or SIGTERM at a step boundary."""

    def __init__(self, signal_name: str):
        super().__init__(f"interrupted by {signal_name}")
        self.signal_name = signal_name


def one_line(message: str) -> str:
    """Hydra's multi-line message as one line: indented lists joined by commas, its search path left out."""
    parts: list[str] = []
    for line in message.split("Config search path:")[0].splitlines():
        if not line.strip():
            continue
        if line.startswith("\t") and parts:
            parts[-1] += (" " if parts[-1].endswith(":") else ", ") + line.strip()
        else:
            parts.append(line.strip())
    return "; ".join(parts)
