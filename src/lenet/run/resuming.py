"""Resuming a run needs nothing retyped: ``train.py trainer.resume=true hydra.run.dir=DIR`` takes DIR's own overrides.

Called by ``train.py`` on its command line before Hydra composes the config (Hydra composes from the
command line only, so the run's recorded overrides are put there, before the ones typed): the run's
overrides come first, and an override typed on top for the same key replaces its value, which the
resume then refuses, naming each key that would change (``lenet.run.folders``).
"""

from __future__ import annotations

from pathlib import Path

from lenet.run.sweep_dir import recorded_overrides, split_override

RESUME = ("trainer.resume=true", "trainer.resume=True")


def _value(arg: str) -> str:
    value = arg.partition("=")[2]
    return value[1:-1] if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"" else value


def with_own_overrides(argv: list[str]) -> list[str]:
    """``argv`` with the run's own recorded overrides put first, when it resumes a single run in a named dir."""
    args = argv[1:]
    if any(a in ("-m", "--multirun") or a.startswith("-") and not a.startswith("--") and "m" in a[1:] for a in args):
        return argv
    run_dirs = [_value(a) for a in args if a.startswith("hydra.run.dir=")]
    if not any(a in RESUME for a in args) or len(run_dirs) != 1:
        return argv
    saved = recorded_overrides(Path(run_dirs[0]))
    if not saved:
        return argv
    typed = {split_override(a)[0] for a in args if "=" in a and not a.startswith("-")}
    return [argv[0], *[o for o in saved if split_override(o)[0] not in typed], *args]
