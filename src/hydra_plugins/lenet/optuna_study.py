"""The Optuna study of lenet's search: opened safely, held by one search at a time, written out after each batch.

A storage that cannot be opened (a missing folder, a file that is not a database) is one line; a
SQLite database that another process is writing waits (SQLite's own timeout, then bounded retries)
and says so when it stays locked; a study file is held by one search at a time (``lenet.run.folders``);
a study holding trials of another search space is refused, and one holding trials at all is continued
only with ``trainer.resume=true``.
"""

import csv
import io
import logging
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, TypeVar

from omegaconf import OmegaConf

from lenet.core.errors import ConfigError, UserError
from lenet.run.files import save_yaml, write_text
from lenet.run.folders import hold

log = logging.getLogger(__name__)
T = TypeVar("T")
STUDY_FILE = "optuna.db"  # the study's SQLite file in the sweep dir, unless hydra.sweeper.storage names another
RESULTS_FILE = "optimization_results.yaml"
TRIALS_FILE = "trials.csv"
SQLITE_TIMEOUT = 30  # seconds SQLite waits for a lock held by another connection
PATIENCE = 120  # seconds a locked storage is retried before the search gives up, saying why


def study_storage(storage: Optional[str], sweep_dir: Path) -> str:
    """The Optuna storage URL of a search: the configured one, else the SQLite file in the sweep dir."""
    return storage or f"sqlite:///{(sweep_dir / STUDY_FILE).resolve()}"


def sqlite_path(url: str) -> Optional[Path]:
    """The database file a ``sqlite:///`` URL names, resolved (its options aside); None for other storages."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # not a URL sqlalchemy reads: opening it says why
        return None
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database).expanduser().resolve()


def _locked(error: BaseException) -> bool:
    """Whether ``error``, or one it was raised from (Optuna wraps sqlalchemy's), says the database is locked."""
    seen = set()
    while error is not None and id(error) not in seen:
        if "database is locked" in str(error) or "database table is locked" in str(error):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def retrying(storage: str, action: Callable[[], T]) -> T:
    """``action()``, retried while the storage is locked by another process, for up to PATIENCE seconds."""
    deadline, pause = time.monotonic() + PATIENCE, 0.5
    while True:
        try:
            return action()
        except Exception as e:  # sqlalchemy's OperationalError, wrapped in various ways by Optuna
            if not _locked(e):
                raise
            if time.monotonic() > deadline:
                raise UserError(
                    f"the study's storage {storage} stayed locked for {PATIENCE} s: another process is writing to it; "
                    "run the search again when it is free"
                ) from None
            log.warning(f"the study's storage {storage} is locked by another process; waiting")
            time.sleep(pause)
            pause = min(pause * 2, 10.0)


def open_storage(url: str) -> Any:
    """The Optuna storage at ``url``; a SQLite one waits for other connections' locks; one that cannot open is one line."""
    import optuna

    path = sqlite_path(url)
    if path is not None:
        if not path.parent.is_dir():
            raise ConfigError(
                f"hydra.sweeper.storage={url}: the folder {path.parent} does not exist; create it or "
                "choose another storage"
            )
        hold(path, "hydra.sweeper.storage (or hydra.sweep.dir)", is_file=True)  # one search per study file
    try:
        engine = {"connect_args": {"timeout": SQLITE_TIMEOUT}} if path is not None else None
        return retrying(url, lambda: optuna.storages.RDBStorage(url, engine_kwargs=engine))
    except UserError:
        raise
    except Exception as e:  # not a database, a foreign schema, an unreachable server, ...
        reason = " ".join(str(e).split())[:200]
        raise ConfigError(
            f"hydra.sweeper.storage={url} cannot be opened as an Optuna storage "
            f"({type(e).__name__}: {reason}); move it away or choose another storage"
        ) from None


def open_study(storage: Any, url: str, name: str, direction: str, space: Dict[str, Any], resume: bool) -> Any:
    """The study ``name`` in ``storage``: new, or continued (only with resume, and only with the same space)."""
    import optuna

    existing = retrying(url, lambda: [s for s in optuna.get_all_study_summaries(storage) if s.study_name == name])
    if existing and existing[0].n_trials:
        if not resume:
            raise ConfigError(
                f"the study {name} in {url} already holds {existing[0].n_trials} trials; continue it with "
                "trainer.resume=true (and the same hydra.sweep.dir), or choose another hydra.sweeper.study_name"
            )
        study = retrying(url, lambda: optuna.load_study(study_name=name, storage=storage))
        recorded = {k: d for t in study.get_trials(deepcopy=False) for k, d in t.distributions.items()}
        differ = sorted(k for k in set(recorded) | set(space) if recorded.get(k) != space.get(k))
        if differ:
            raise ConfigError(
                f"the study {name} in {url} was searched over another space ({', '.join(differ)} "
                "differ); search it with the same space, or choose another hydra.sweeper.study_name"
            )
        if study.direction.name.lower() != direction:
            raise ConfigError(f"the study {name} in {url} was made to {study.direction.name.lower()}, not {direction}")
        return study
    return retrying(
        url, lambda: optuna.create_study(study_name=name, storage=storage, direction=direction, load_if_exists=True)
    )


def sampler(node: Any, trials_made: int) -> Any:
    """The sampler of ``node`` (a ``_target_`` node), its ``seed`` advanced by the trials the study holds."""
    from hydra.utils import instantiate

    seed = OmegaConf.select(node, "seed", default=None)
    return instantiate(node, seed=seed + trials_made) if seed is not None and trials_made else instantiate(node)


def write_results(study: Any, sweep_dir: Path, objective: str, direction: str) -> None:
    """``optimization_results.yaml`` (the best trial, once one completed) and ``trials.csv`` (all of them)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.COMPLETE for t in trials):
        best = study.best_trial
        results = {
            "name": "optuna",
            "objective": objective,
            "direction": direction,
            "best_trial": best.number,
            "best_params": best.params,
            "best_value": best.value,
            "trials": {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState},
        }
        save_yaml(results, sweep_dir / RESULTS_FILE)
    keys = sorted({k for t in trials for k in t.params})
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["number", "state", "value", *keys])
    for t in trials:
        writer.writerow([t.number, t.state.name.lower(), t.value, *(t.params.get(k) for k in keys)])
    write_text(sweep_dir / TRIALS_FILE, table.getvalue())
