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

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.lenet import verdict
from hydra_plugins.lenet.optuna_study import open_storage, open_study, retrying, sampler, study_storage, write_results
from hydra_plugins.lenet.sweeping import assign_folders, composed_subdirs, runs_jobs, start_sweep
from lenet.core.errors import ConfigError, UserError
from lenet.run.outcome import Status, outcome_of
from lenet.run.sweep_dir import override_value

log = logging.getLogger(__name__)
ROW_FIGURES = ("epoch", "lr", "seconds")  # row keys that are not results: no objective
BEST = ("best_value", "best_val_acc", "best_test_acc")  # the summary's figures of the best epoch


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.lenet.optuna_sweeper.OptunaSweeper"
    objective: str = (
        "final_val_acc"  # a summary.json key the run records: final_<row key> (final_val_loss, ...), best_*
    )
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
    """The metrics.jsonl key whose per-epoch values lead to ``objective`` (``final_val_acc`` -> ``val_acc``)."""
    return "val_acc" if objective == "best_value" else objective.split("_", 1)[1]


def objectives(row_keys: List[str]) -> List[str]:
    """The summary keys a run with these metrics rows records as numbers: what a search can optimise."""
    return [f"final_{k}" for k in row_keys if k not in ROW_FIGURES] + list(BEST)


def check_settings(settings: "OptunaSweeperConf", row_keys: List[str]) -> None:
    """Refuse settings that cannot run a search, in one line, before any trial; say it when it selects on the test
    set. ``row_keys`` are those of the runs' metrics rows (what they will record)."""
    known = objectives(row_keys)
    problems = [
        (settings.n_trials >= 1, f"hydra.sweeper.n_trials must be >= 1, got {settings.n_trials}"),
        (settings.n_jobs >= 1, f"hydra.sweeper.n_jobs must be >= 1 (trials launched at once), got {settings.n_jobs}"),
        (
            settings.direction in ("maximize", "minimize"),
            f"hydra.sweeper.direction must be maximize or minimize, got {settings.direction!r}",
        ),
        (
            0 <= settings.max_failure_rate <= 1,
            f"hydra.sweeper.max_failure_rate must be in [0, 1], got {settings.max_failure_rate}",
        ),
        (
            settings.objective in known,
            f"hydra.sweeper.objective must be a number these runs record in summary.json: one of {', '.join(known)}; "
            f"got {settings.objective!r}",
        ),
    ]
    for ok, message in problems:
        if not ok:
            raise ConfigError(message)
    if "test" in settings.objective:
        from lenet.run.assemble import warn_test_selection

        warn_test_selection("hydra.sweeper.objective", settings.objective)


class OptunaSweeper(Sweeper):
    """Asks Optuna for ``n_jobs`` trials at a time, launches them as jobs, tells it their outcomes."""

    def __init__(self, **settings: Any) -> None:
        self.settings = OptunaSweeperConf(**{k: v for k, v in settings.items() if k != "_target_"})
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def _search_space(self, arguments: List[str]) -> tuple[Dict[str, Any], List[str]]:
        parser = OverridesParser.create()
        space, fixed = {}, []
        lines = [f"{k}={v}" for k, v in (self.settings.params or {}).items()] + list(arguments)
        for override in parser.parse_overrides(lines):
            if not override.is_sweep_override():
                fixed.append(override.input_line)
                continue
            try:
                space[override.get_key_element()] = distribution(override)
            except (ValueError, TypeError) as e:
                raise ConfigError(f"{override.input_line} is not a search space Optuna takes: {e}") from None
        return space, fixed

    def _trial_overrides(self, fixed: List[str], trial: Any, storage: str) -> List[str]:
        overrides = fixed + [f"{k}={_override_value(v)}" for k, v in trial.params.items()]
        if self.settings.pruner:  # the pruning callback, handed to the trial's job like any other callback
            node = {
                "_target_": "hydra_plugins.lenet.pruning.OptunaPruning",
                "study_name": self.settings.study_name,
                "storage": storage,
                "trial": trial.number,
                "monitor": watched(self.settings.objective),
                "pruner": OmegaConf.to_container(self.config.hydra.sweeper.pruner, resolve=True),
            }
            overrides.append(f"+callbacks.optuna_pruning={override_value(node)}")
        return overrides

    def sweep(self, arguments: List[str]) -> None:
        """Run the search to ``n_trials`` trials in all; print the verdict of the trials this run launched."""
        import optuna
        from optuna.trial import TrialState

        assert self.config is not None
        space, fixed = self._search_space(arguments)
        check_settings(self.settings, self._row_keys(fixed))
        if not runs_jobs(self.launcher):
            return self._preview(space, fixed)
        sweep_dir = start_sweep(self.config, self.launcher, kind="search")
        url = study_storage(self.settings.storage, sweep_dir)
        resume = bool(OmegaConf.select(self.config, "trainer.resume", default=False))
        study = open_study(open_storage(url), url, self.settings.study_name, self.settings.direction, space, resume)
        trials = retrying(url, lambda: study.get_trials(deepcopy=False))
        # a continued search must not draw its first trials' values again: the seed moves on by the trials made
        study.sampler = sampler(self.config.hydra.sweeper.sampler, len(trials))
        # trials an earlier run started and never told: run them again (their jobs resume from checkpoints)
        unfinished = [t for t in trials if t.state == TrialState.RUNNING]
        finished = sum(t.state.is_finished() for t in trials)
        log.info(
            f"Optuna {optuna.__version__}: study {self.settings.study_name} in {url}, {finished} of "
            f"{self.settings.n_trials} trials done, {len(unfinished)} to continue; space {', '.join(space) or 'empty'}"
        )
        returns: List[Any] = []
        unlaunched: List[str] = []
        while not self._failing(study):
            finished = sum(t.state.is_finished() for t in retrying(url, lambda: study.get_trials(deepcopy=False)))
            budget = self.settings.n_trials - finished - len(unfinished)
            batch, unfinished = unfinished[: self.settings.n_jobs], unfinished[self.settings.n_jobs :]
            while len(batch) < self.settings.n_jobs and budget > 0:
                batch.append(retrying(url, lambda: study.ask(space)))
                budget -= 1
            if not batch:
                break
            launchable = self._composing(study, url, batch, fixed, unlaunched)
            if launchable:  # each trial's folder is its number: a continued search never reuses one
                assigned = assign_folders(
                    sweep_dir, [o for _, o in launchable], [str(t.number) for t, _ in launchable], resume
                )
                try:
                    results = self.launcher.launch(assigned, launchable[0][0].number)
                except (SystemExit, KeyboardInterrupt):  # a signal stopped the search
                    verdict.interrupted(sweep_dir, assigned)
                    raise
                for (trial, _), result in zip(launchable, results):
                    retrying(url, lambda: self._tell(study, trial, result))
                    returns.append(result)
            write_results(study, sweep_dir, self.settings.objective, self.settings.direction)
        self._print_best(study)
        nothing = (
            [] if self._completed(study) else [f"no trial of the search completed: it has no {self.settings.objective}"]
        )
        verdict.report(sweep_dir, returns, unlaunched + self._stopped_early(study) + nothing)

    def _row_keys(self, fixed: List[str]) -> List[str]:
        """The metrics keys of the search's runs: those of its fixed settings, as the one assembler builds them."""
        from hydra_plugins.lenet.sweeping import composed_job
        from lenet.run.preflight import preflight

        try:
            return preflight(composed_job(self.hydra_context, self.config, fixed, 0))[1].row_keys
        except UserError:
            raise
        except Exception as e:  # Hydra's composition errors come in several kinds
            raise ConfigError(f"the search's settings ({' '.join(fixed) or 'none'}) do not compose: {e}") from None

    def _print_best(self, study: Any) -> None:
        from optuna.trial import TrialState

        if any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
            best = study.best_trial
            params = ", ".join(f"{k}={_override_value(v)}" for k, v in best.params.items())
            print(f"best trial: #{best.number} ({params}): {self.settings.objective} {best.value:.6g}")

    def _composing(self, study: Any, url: str, batch: List[Any], fixed: List[str], failures: List[str]) -> List[Any]:
        """The (trial, overrides) of ``batch`` whose config composes; the others are told FAIL, saying why."""
        from optuna.trial import TrialState

        launchable = []
        for trial in batch:
            overrides = self._trial_overrides(fixed, trial, url)
            try:
                composed_subdirs(self.hydra_context, self.config, [overrides])
            except UserError as e:
                retrying(url, lambda: study.tell(trial.number, state=TrialState.FAIL))
                log.warning(f"trial {trial.number} failed: {e}; the search goes on")
                failures.append(f"trial {trial.number}: {e}")
                continue
            launchable.append((trial, overrides))
        return launchable

    def _preview(self, space: Dict[str, Any], fixed: List[str]) -> None:
        """What the search would run: its space, and the first trials drawn from it, each config checked."""
        import optuna

        print(
            f"an Optuna search of {self.settings.n_trials} trials, {self.settings.n_jobs} at a time, "
            f"{self.settings.direction} {self.settings.objective}; space: "
            f"{', '.join(f'{k} {v}' for k, v in space.items()) or 'empty'}"
        )
        study = optuna.create_study(
            direction=self.settings.direction, sampler=sampler(self.config.hydra.sweeper.sampler, 0)
        )
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

    @staticmethod
    def _completed(study: Any) -> bool:
        from optuna.trial import TrialState

        return any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False))

    def _failure_rate(self, study: Any) -> float:
        from optuna.trial import TrialState

        finished = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
        return sum(t.state == TrialState.FAIL for t in finished) / len(finished) if finished else 0.0

    def _failing(self, study: Any) -> bool:
        return self._failure_rate(study) > self.settings.max_failure_rate

    def _stopped_early(self, study: Any) -> List[str]:
        if not self._failing(study):
            return []
        return [
            f"the search stopped: {self._failure_rate(study):.0%} of its finished trials failed, more than "
            f"hydra.sweeper.max_failure_rate={self.settings.max_failure_rate}"
        ]


def _override_value(value: Any) -> str:
    """A sampled value as a Hydra override value."""
    return repr(value) if isinstance(value, float) else str(value)
