"""How train.py reports what Hydra itself refuses (an unknown option, a bad override): one ``error:`` line."""

from __future__ import annotations

from lenet.core.errors import UserError, one_line


def shorten_hydra_errors() -> None:
    """Make Hydra report a composition error (unknown option, bad override) as one ``error:`` line.

    Hydra prints such errors over 4-13 lines (the options, its config search path, a hint). Errors of
    the job itself keep Hydra's reporting (a traceback for a bug); HYDRA_FULL_ERROR=1 keeps it all.
    """
    import os
    import sys

    # Hydra has no public seam for how it reports a composition error: its private run_and_report is wrapped
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
