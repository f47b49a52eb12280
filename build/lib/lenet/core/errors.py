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


def shorten_hydra_errors() -> None:
    """Make Hydra report a composition error (unknown option, bad override) as one ``error:`` line.

    Hydra prints such errors over 4-13 lines (the options, its config search path, a hint). Errors of
    the job itself keep Hydra's reporting (a traceback for a bug); HYDRA_FULL_ERROR=1 keeps it all.
    """
    import os
    import sys

    import hydra._internal.utils as hydra_utils
    from hydra.errors import CompactHydraException, OverrideParseException

    report = hydra_utils.run_and_report

    def run_and_report(func):  # type: ignore[no-untyped-def]
        try:
            return func()
        except (CompactHydraException, OverrideParseException, UserError) as e:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            if isinstance(e.__cause__, UserError):  # raised by one of ours that Hydra instantiated
                e = e.__cause__
            if isinstance(e, UserError):
                print(f"error: {e}", file=sys.stderr)
                sys.exit(1)
            cause = f"; {str(e.__cause__).splitlines()[0]}" if e.__cause__ is not None and str(e.__cause__) else ""
            print(f"error: {one_line(str(e))}{cause}", file=sys.stderr)
            sys.exit(1)
        except Exception as e:  # Hydra's own reporting, as if it had caught it
            error = e

            def raise_again() -> None:
                raise error

            return report(raise_again)

    hydra_utils.run_and_report = run_and_report


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
