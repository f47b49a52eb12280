"""The Hydra callback of every single run: a run dir of its own, claimed before Hydra writes into it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from lenet.core.errors import UserError
from lenet.run.folders import claim_run_dir
from lenet.run.preflight import check_data, preflight


class JobReport(Callback):
    """Checks a single run's config as the run would, then claims its dir, before Hydra writes anything (a sweep's
    dir is its sweeper's: hydra_plugins.lenet)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig

        try:
            HydraConfig.instance().set_config(config)  # the config's ${hydra:...} resolve as in the job
            try:
                cfg, _ = preflight(config)  # a value the run would refuse: refused before its folder is made
                check_data(cfg, Path(str(config.hydra.runtime.cwd)))  # and data it could not find or download
            except UserError:
                raise
            except Exception:  # a bug: the run meets it again, where its traceback is recorded (lenet.run.entry)
                pass
            claim_run_dir(config)
        except UserError as e:  # Hydra turns an exception of a callback into a warning: exit here
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(1) from None
