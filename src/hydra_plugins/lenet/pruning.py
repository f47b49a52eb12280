"""Pruning a trial of lenet's Optuna search: a callback the sweeper hands to each trial's job.

The sweeper adds ``+callbacks.optuna_pruning={_target_: hydra_plugins.lenet.pruning.OptunaPruning, ...}`` to
a trial's overrides, naming its study, storage and trial. After each epoch the callback reports the
watched value to the study and asks the study's pruner whether to go on; a pruned trial ends after
that epoch (recorded and checkpointed) with ``status: pruned``, which the sweeper tells the study.
"""

import logging
from typing import Any, Dict, Optional

from lenet.core.errors import Pruned
from lenet.training.callbacks import Callback

log = logging.getLogger(__name__)


class OptunaPruning(Callback):
    """Reports ``monitor`` of each epoch's row to trial ``trial`` of the study; stops the run when it is pruned."""

    def __init__(self, study_name: str, storage: str, trial: int, pruner: Any, monitor: str = "val_acc"):
        # pruner: an optuna pruner, which Hydra builds from the node the sweeper passes
        self.study_name, self.storage, self.number, self.pruner = study_name, storage, trial, pruner
        self.monitor = monitor
        self.trial: Any = None
        self.pruned: Optional[str] = None

    def on_fit_start(self, run: Any) -> None:
        import optuna

        try:
            study = optuna.load_study(study_name=self.study_name, storage=self.storage, pruner=self.pruner)
            storage = optuna.storages.get_storage(self.storage)
            study_id = storage.get_study_id_from_name(self.study_name)
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, self.number)
        except KeyError:
            log.warning("trial %d is not in study %s: it is not pruned", self.number, self.study_name)
            return
        except Exception as e:  # the trial still runs to its end: pruning only saves time
            log.warning("trial %d cannot reach its study (%s: %s): it is not pruned", self.number, type(e).__name__, e)
            return
        self.trial = optuna.trial.Trial(study, trial_id)

    def on_epoch_end(self, run: Any, row: Dict[str, Any]) -> None:
        if self.trial is None or row["epoch"] >= run.config["trainer"]["epochs"]:  # the last epoch: it completed
            return
        self.trial.report(float(row[self.monitor]), row["epoch"])
        if self.trial.should_prune():
            self.pruned = (
                f"pruned by the Optuna search after epoch {row['epoch']} ({self.monitor} {row[self.monitor]:.4g})"
            )
            run.request_stop(self.pruned)

    def on_fit_end(self, run: Any, summary: Dict[str, Any]) -> None:
        if self.pruned is not None:
            raise Pruned(self.pruned)
