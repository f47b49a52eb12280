"""``hparams_search=optuna``: a Hydra sweeper on current Optuna (>= 4), through its ask-and-tell interface.

The study lives in a SQLite file in the sweep dir (``optuna.db``) unless ``storage`` names another,
so a search that stops (Ctrl-C, a time limit, a crash) continues toward ``n_trials`` in all when run
again with the same ``hydra.sweep.dir`` and ``trainer.resume=true``: trials it had finished are kept,
trials it had started continue from their checkpoints in their own folders. Each trial is told its
job's outcome: the summary's ``objective`` key when it completed, PRUNED when its pruner stopped it,
FAIL otherwise, and the search goes on (unless more than ``max_failure_rate`` of its trials failed).
Job folders are numbered by trial, so a continued search never reuses one. After every batch the
sweep dir holds ``optimization_results.yaml`` (the best trial) and ``trials.csv`` (all of them).

Search space (``hydra.sweeper.params``, or sweep overrides on the command line), in Hydra's syntax:
``choice(a, b)``, ``range(start, stop[, step])``, ``interval(low, high)``, and ``tag(log, interval(...))``
for a log scale. The sampler and pruner are any Optuna classes, by ``_target_``.
"""

import csv
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.lenet import verdict
from hydra_plugins.lenet.sweeping import runs_jobs, start_sweep
from hydra_plugins.lenet.pruning import study_storage
from lenet.core.errors import ConfigError
from lenet.run.outcome import Status, outcome_of
from lenet.run.sweep_dir import override_value

log = logging.getLogger(__name__)
RESULTS_FILE = "optimization_results.yaml"
TRIALS_FILE = "trials.csv"
OBJECTIVES = ("final_test_acc", "best_test_acc", "final_test_loss", "best_test_loss", "final_train_loss")


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.lenet.optuna_sweeper.OptunaSweeper"
    objective: str = "final_test_acc"  # a summary.json key: final_test_acc, best_test_acc, final_test_loss, ...
    direction: str = "maximize"  # of the objective: maximize | minimize
    max_failure_rate: float = 1.0  # stop the search once more than this fraction of its finished trials failed
    study_name: str = "lenet"
    storage: Optional[str] = None  # an Optuna storage URL; null: sqlite:///SWEEP_DIR/optuna.db
    n_trials: int = 20  # in all, counting those of an earlier run of the same search
    n_jobs: int = 1  # trials launched at once (run in parallel by a parallel launcher)
    sampler: Dict[str, Any] = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": 1234})
    params: Dict[str, str] = field(default_factory=dict)  # key -> choice(...), range(...), interval(...)
    pruner: Optional[Dict[str, Any]] = None  # an optuna.pruners class by _target_; jobs report each epoch's value
    # (Hydra instantiates the nested sampler and pruner nodes: the sweeper reads them from its config)


ConfigStore.instance().store(group="hydra/sweeper", name="lenet_optuna", node=OptunaSweeperConf, provider="lenet")


def distribution(override: Override) -> Any:
    """The Optuna distribution of one sweep override (``choice``, ``range``, ``interval``, ``tag(log, ...)``)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    value = override.value()
    if isinstance(value, ChoiceSweep):
        return CategoricalDistribution(list(value.list))
    if isinstance(value, RangeSweep):
        start, stop, step = value.start, value.stop, value.step
        if all(isinstance(x, int) for x in (start, stop, step)):  # range's stop is excluded, Optuna's high is not
            return IntDistribution(int(start), int(stop) - 1, step=int(step))
        return CategoricalDistribution(list(override.sweep_iterator()))
    if isinstance(value, IntervalSweep):
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log_scale)
        return FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise ValueError(f"{override.input_line}: not a search space (use choice, range or interval)")


def watched(objective: str) -> str:
    """The metrics.jsonl key whose per-epoch values lead to ``objective`` (``final_test_acc`` -> ``test_acc``)."""
    return objective.split("_", 1)[1]


def check_settings(settings: OptunaSweeperConf) -> None:
    """Refuse settings that cannot run a search, in one line, before any trial."""
    objective_ok = settings.objective in OBJECTIVES or settings.objective.startswith("final_test_")
    problems = [
        (settings.n_trials >= 1, f"hydra.sweeper.n_trials must be >= 1, got {settings.n_trials}"),
        (settings.n_jobs >= 1, f"hydra.sweeper.n_jobs must be >= 1 (trials launched at once), got {settings.n_jobs}"),
        (settings.direction in ("maximize", "minimize"),
         f"hydra.sweeper.direction must be maximize or minimize, got {settings.direction!r}"),
        (0 <= settings.max_failure_rate <= 1,
         f"hydra.sweeper.max_failure_rate must be in [0, 1], got {settings.max_failure_rate}"),
        (objective_ok, f"hydra.sweeper.objective must be a summary.json key: one of {', '.join(OBJECTIVES)} or "
                       f"final_test_<metric>, got {settings.objective!r}"),
    ]  # fmt: skip
    for ok, message in problems:
        if not ok:
            raise ConfigError(message)


class OptunaSweeper(Sweeper):
    """Asks Optuna for ``n_jobs`` trials at a time, launches them as jobs, tells it their outcomes."""

    def __init__(self, **settings: Any) -> None:
        self.settings = OptunaSweeperConf(**{k: v for k, v in settings.items() if k != "_target_"})
        self.config: Optional[DictConfig] = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def _search_space(self, arguments: List[str]) -> tuple[Dict[str, Any], List[str]]:
        parser = OverridesParser.create()
        space, fixed = {}, []
        lines = [f"{k}={v}" for k, v in (self.settings.params or {}).items()] + list(arguments)
        for override in parser.parse_overrides(lines):
            if override.is_sweep_override():
                space[override.get_key_element()] = distribution(override)
            else:
                fixed.append(override.input_line)
        return space, fixed

    def _trial_overrides(self, fixed: List[str], trial: Any, storage: str) -> List[str]:
        overrides = fixed + [f"{k}={_override_value(v)}" for k, v in trial.params.items()]
        if self.settings.pruner:  # the pruning callback, handed to the trial's job like any other callback
            node = {"_target_": "hydra_plugins.lenet.pruning.OptunaPruning", "study_name": self.settings.study_name,
                    "storage": storage, "trial": trial.number, "monitor": watched(self.settings.objective),
                    "pruner": OmegaConf.to_container(self.config.hydra.sweeper.pruner, resolve=True)}  # fmt: skip
            overrides.append(f"+callbacks.optuna_pruning={override_value(node)}")
        return overrides

    def sweep(self, arguments: List[str]) -> None:
        """Run the search to ``n_trials`` trials in all; print the verdict of the trials this run launched."""
        import optuna
        from optuna.trial import TrialState

        assert self.config is not None
        check_settings(self.settings)
        space, fixed = self._search_space(arguments)
        if not runs_jobs(self.launcher):
            return self._preview(space, fixed)
        sweep_dir = start_sweep(self.config, self.launcher)
        storage = study_storage(self.settings.storage, sweep_dir)
        study = optuna.create_study(
            study_name=self.settings.study_name, storage=storage, direction=self.settings.direction,
            load_if_exists=True,
        )  # fmt: skip
        # a continued search must not draw its first trials' values again: the seed moves on by the trials made
        study.sampler = _sampler(self.config.hydra.sweeper.sampler, len(study.get_trials(deepcopy=False)))
        # trials an earlier run started and never told: run them again (their jobs resume from checkpoints)
        unfinished = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
        if unfinished:
            log.info(f"continuing {len(unfinished)} unfinished trials of {self.settings.study_name} in {storage}")
        finished = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))
        log.info(f"Optuna {optuna.__version__}: study {self.settings.study_name} in {storage}, "
                 f"{finished} of {self.settings.n_trials} trials done; space {', '.join(space) or 'empty'}")  # fmt: skip
        returns: List[Any] = []
        while not self._failing(study):
            finished = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))
            budget = self.settings.n_trials - finished - len(unfinished)
            batch = unfinished[: self.settings.n_jobs]
            unfinished = unfinished[len(batch) :]
            while len(batch) < self.settings.n_jobs and budget > 0:
                batch.append(study.ask(space))
                budget -= 1
            if not batch:
                break
            # a job's folder is its trial's number, so a continued search never reuses one; the launcher
            # numbers jobs from initial_job_idx on, hence one launch per run of consecutive trial numbers
            for run in _consecutive(batch):
                overrides = [self._trial_overrides(fixed, t, storage) for t in run]
                for trial, result in zip(run, self.launcher.launch(overrides, initial_job_idx=run[0].number)):
                    self._tell(study, trial, result)
                    returns.append(result)
            self._write_results(study, sweep_dir)
        verdict.report(sweep_dir, returns, self._stopped_early(study))

    def _preview(self, space: Dict[str, Any], fixed: List[str]) -> None:
        """What the search would run: its space, and the first trials drawn from it, each config checked."""
        import optuna

        print(f"an Optuna search of {self.settings.n_trials} trials, {self.settings.n_jobs} at a time, "
              f"{self.settings.direction} {self.settings.objective}; space: "
              f"{', '.join(f'{k} {v}' for k, v in space.items()) or 'empty'}")  # fmt: skip
        study = optuna.create_study(direction=self.settings.direction, sampler=_sampler(self.config.hydra.sweeper.sampler, 0))
        first = [study.ask(space) for _ in range(min(self.settings.n_jobs, self.settings.n_trials))]
        self.launcher.launch([self._trial_overrides(fixed, t, "sqlite:///PREVIEW") for t in first], initial_job_idx=0)

    def _tell(self, study: Any, trial: Any, result: Any) -> None:
        from optuna.trial import TrialState

        outcome = outcome_of(result)
        value = outcome.value(self.settings.objective)
        if outcome.status == Status.pruned:  # the job stopped itself, asked by the pruner
            study.tell(trial.number, state=TrialState.PRUNED)
        elif outcome.status == Status.completed and value is not None and math.isfinite(value):
            study.tell(trial.number, value)
        else:  # the search goes on without it
            why = outcome.error or f"its summary holds no finite {self.settings.objective}"
            study.tell(trial.number, state=TrialState.FAIL)
            log.warning(f"trial {trial.number} failed ({outcome.status.value}: {why}); the search goes on")

    def _failure_rate(self, study: Any) -> float:
        from optuna.trial import TrialState

        finished = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
        return sum(t.state == TrialState.FAIL for t in finished) / len(finished) if finished else 0.0

    def _failing(self, study: Any) -> bool:
        return self._failure_rate(study) > self.settings.max_failure_rate

    def _stopped_early(self, study: Any) -> List[str]:
        if not self._failing(study):
            return []
        return [f"the search stopped: {self._failure_rate(study):.0%} of its finished trials failed, more than "
                f"hydra.sweeper.max_failure_rate={self.settings.max_failure_rate}"]  # fmt: skip

    def _write_results(self, study: Any, sweep_dir: Path) -> None:
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        if any(t.state == TrialState.COMPLETE for t in trials):
            best = study.best_trial
            results = {"name": "optuna", "objective": self.settings.objective, "direction": self.settings.direction,
                       "best_trial": best.number, "best_params": best.params, "best_value": best.value,
                       "trials": {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}}  # fmt: skip
            OmegaConf.save(OmegaConf.create(results), sweep_dir / RESULTS_FILE)
        keys = sorted({k for t in trials for k in t.params})
        with open(sweep_dir / TRIALS_FILE, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["number", "state", "value", *keys])
            for t in trials:
                writer.writerow([t.number, t.state.name.lower(), t.value, *(t.params.get(k) for k in keys)])


def _sampler(node: Any, trials_made: int) -> Any:
    """The sampler of ``node`` (a ``_target_`` node), its ``seed`` advanced by the trials the study holds."""
    from hydra.utils import instantiate

    seed = OmegaConf.select(node, "seed", default=None)
    return instantiate(node, seed=seed + trials_made) if seed is not None and trials_made else instantiate(node)


def _consecutive(trials: List[Any]) -> List[List[Any]]:
    runs: List[List[Any]] = []
    for trial in sorted(trials, key=lambda t: t.number):
        if runs and trial.number == runs[-1][-1].number + 1:
            runs[-1].append(trial)
        else:
            runs.append([trial])
    return runs


def _override_value(value: Any) -> str:
    """A sampled value as a Hydra override value."""
    return repr(value) if isinstance(value, float) else str(value)
