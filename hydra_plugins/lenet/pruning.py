"""Pruning a trial of lenet's Optuna search from its per-epoch accuracy, in the trial's own job.

The job reports each epoch's test accuracy to the study (through its storage, the SQLite file in the
sweep dir) and asks the study's pruner whether to go on; a pruned job ends with ``status: pruned``
and the sweeper tells the study so.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

log = logging.getLogger(__name__)

Reporter = Callable[[int, float], bool]  # (epoch, value) -> whether to stop the trial now
STUDY_FILE = "optuna.db"  # the study's SQLite file in the sweep dir, unless hydra.sweeper.storage names another


def study_storage(storage: Optional[str], sweep_dir: Path) -> str:
    """The Optuna storage URL of a search: the configured one, else the SQLite file in the sweep dir."""
    return storage or f"sqlite:///{(sweep_dir / STUDY_FILE).resolve()}"


def trial_reporter(sweeper: Optional[Mapping[str, Any]], trial_number: int, sweep_dir: Path) -> Optional[Reporter]:
    """For a job of lenet's Optuna search with a pruner: its reporter; otherwise None."""
    if not sweeper or not str(sweeper.get("_target_", "")).endswith("OptunaSweeper") or not sweeper.get("pruner"):
        return None
    import optuna
    from hydra.utils import instantiate

    storage = study_storage(sweeper.get("storage"), sweep_dir)
    try:
        study = optuna.load_study(
            study_name=sweeper["study_name"], storage=storage, pruner=instantiate(sweeper["pruner"])
        )
        trial_ids = [t._trial_id for t in study.get_trials(deepcopy=False) if t.number == trial_number]
    except Exception as e:  # the trial still runs to its end: pruning only saves time
        log.warning("trial %d cannot reach its study (%s: %s): it is not pruned", trial_number, type(e).__name__, e)
        return None
    if not trial_ids:
        log.warning("trial %d is not in study %s: it is not pruned", trial_number, sweeper["study_name"])
        return None
    trial = optuna.trial.Trial(study, trial_ids[0])

    def report(epoch: int, value: float) -> bool:
        trial.report(value, epoch)
        return trial.should_prune()

    return report
