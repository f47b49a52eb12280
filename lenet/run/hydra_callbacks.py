"""The Hydra callback of every single run: a run dir of its own, claimed before Hydra writes into it."""

from __future__ import annotations

import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from lenet.run.folders import FolderError, claim_run_dir


class JobReport(Callback):
    """Claims a single run's dir before Hydra writes into it (a sweep's dir is its sweeper's: hydra_plugins.lenet)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            claim_run_dir(config)
        except FolderError as e:  # Hydra turns an exception of a callback into a warning: exit here
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(1) from None
