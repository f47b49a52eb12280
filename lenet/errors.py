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


class Interrupted(Exception):
    """Training was stopped by SIGINT or SIGTERM at a step boundary."""

    def __init__(self, signal_name: str):
        super().__init__(f"interrupted by {signal_name}")
        self.signal_name = signal_name
