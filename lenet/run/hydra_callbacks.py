"""The Hydra callback of every run: a run dir of its own, and a clear error for an unusable output dir."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from lenet.run.folders import claim_run_dir


def ensure_writable(folder: Path, key: str) -> None:
    """Exit with one line naming ``key`` when ``folder`` cannot be written to."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        print(
            f"error: cannot write the output dir {folder} ({e.strerror}); choose another with {key}=PATH",
            file=sys.stderr,
        )
        raise SystemExit(1) from None


class JobReport(Callback):
    """Claims a single run's dir before Hydra writes into it (a sweep's dir is its sweeper's: hydra_plugins.lenet)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        claim_run_dir(config)
        ensure_writable(Path(config.hydra.run.dir), "hydra.run.dir")
