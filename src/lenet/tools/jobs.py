"""Sweeps as the comparison sees them: their jobs (read through the run's owners), grouped into variants.

A variant is the jobs that share every swept setting but the seed. The swept keys come from each sweep's
own record (``sweep.json``); for jobs without one, the keys whose values differ, except the seed, the
settings a resume may change (``trainer.resume``, the loggers, the device, ...) and nodes such as a
search's pruning callback, which never make a variant. Jobs of several sweeps are pooled only when they
share their resolved config but for the swept keys (``check_poolable``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from lenet.core.errors import UserError
from lenet.core.metrics import minimised
from lenet.run.identity import RESUME_MAY_CHANGE, under
from lenet.run.outcome import Outcome, Status, read_outcome
from lenet.run.sweep_dir import read_sweep_record, recorded_overrides, short_value, split_override, sweep_jobs
from lenet.run.tracking import METRICS_FILE

SEED_KEY = "seed"
SEARCH_FILES = ("optimization_results.yaml", "trials.csv")  # an Optuna search wrote its sweep dir
NEVER_VARIANTS = ("callbacks.optuna_pruning",)  # what a search hands each trial: its study, storage and number


@dataclass
class Job:
    """One job of a sweep as its files describe it."""

    path: Path
    sweep: Path
    overrides: dict[str, str]
    outcome: Outcome
    metrics: list[dict[str, Any]]
    problems: list[str] = field(default_factory=list)  # files of the job that could not be read

    @property
    def summary(self) -> dict[str, Any]:
        return dict(self.outcome.summary)

    @property
    def status(self) -> str:
        return self.outcome.status.value

    @property
    def completed(self) -> bool:
        return self.outcome.status == Status.completed

    @property
    def pruned(self) -> bool:
        return self.outcome.status == Status.pruned

    def final(self, key: str) -> Optional[float]:
        """The last epoch's value of metrics.jsonl key ``key`` (the summary's ``final_<key>`` without metrics)."""
        if self.metrics and isinstance(self.metrics[-1].get(key), (int, float)):
            return float(self.metrics[-1][key])
        return self.outcome.value(f"final_{key}")

    def at_best(self, key: str) -> Optional[float]:
        """``key``'s value in the job's best epoch, the one its run selected (``best_epoch``, on ``selected_on``)."""
        epoch = self.summary.get("best_epoch")
        row = next((r for r in self.metrics if r.get("epoch") == epoch), None) if epoch is not None else None
        return float(row[key]) if row is not None and isinstance(row.get(key), (int, float)) else None

    @property
    def seed(self) -> Optional[str]:
        seed = self.overrides.get(SEED_KEY)
        return seed if seed is not None else (str(self.summary["seed"]) if "seed" in self.summary else None)

    def config(self) -> Optional[dict[str, Any]]:
        """The job's resolved config as its run recorded it (``.hydra/config.yaml``), or None."""
        from omegaconf import OmegaConf

        try:
            config = OmegaConf.to_container(OmegaConf.load(self.path / ".hydra" / "config.yaml"), resolve=True)
        except Exception:  # missing, unreadable or not Hydra's: nothing to compare
            return None
        return config if isinstance(config, dict) else None


@dataclass
class Variant:
    """The jobs that differ only in their seed (and, pooled, in their sweep)."""

    label: str
    settings: dict[str, str]
    jobs: list[Job] = field(default_factory=list)

    @property
    def done(self) -> list[Job]:
        return [j for j in self.jobs if j.completed]

    @property
    def pruned(self) -> list[Job]:
        return [j for j in self.jobs if j.pruned]

    @property
    def not_done(self) -> list[Job]:
        return [j for j in self.jobs if not j.completed and not j.pruned]

    def values(self, key: str) -> list[float]:
        return [v for j in self.done if (v := j.outcome.value(key)) is not None]

    def finals(self, key: str) -> list[float]:
        return [v for j in self.done if (v := j.final(key)) is not None]

    def at_best(self, key: str) -> list[float]:
        return [v for j in self.done if (v := j.at_best(key)) is not None]


def is_fraction(key: str) -> bool:
    """Whether ``key`` holds a fraction shown in percent (accuracies and the like)."""
    return not minimised(key) and key != "lr"


def is_search(sweep_dir: Path) -> bool:
    """Whether the sweep is an Optuna search (each trial one configuration), not a grid of variants."""
    record = read_sweep_record(sweep_dir)
    return (record is not None and record.kind == "search") or any((sweep_dir / f).is_file() for f in SEARCH_FILES)


def find_sweeps(folder: Path) -> list[Path]:
    """The sweep dirs in ``folder``: itself when it is one (Hydra's multirun.yaml), else each one inside it."""
    markers = ("multirun.yaml", "sweep.json")
    if any((folder / m).is_file() for m in markers):
        return [folder]
    inside = sorted({p.parent for m in markers for p in folder.glob(f"**/{m}")})
    return inside or [folder]  # no marker: jobs alone (copied out of their sweep) are one sweep


def _metrics(path: Path, problems: list[str]) -> list[dict[str, Any]]:
    rows = []
    try:
        lines = (path / METRICS_FILE).read_text().splitlines() if (path / METRICS_FILE).is_file() else []
    except (OSError, UnicodeDecodeError) as e:
        problems.append(f"{METRICS_FILE} cannot be read ({getattr(e, 'strerror', None) or e})")
        return rows
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line) if line.strip() else None
        except ValueError:
            row = "bad"
        if isinstance(row, dict):
            rows.append(row)
        elif row is not None:
            problems.append(f"{METRICS_FILE} line {number} is not a row")
    return rows


def load_jobs(sweep_dir: Path) -> list[Job]:
    """Every job of ``sweep_dir`` with its overrides, outcome and per-epoch metrics; unreadable files are noted."""
    jobs = []
    for path in sweep_jobs(sweep_dir):
        problems: list[str] = []
        overrides = recorded_overrides(path)
        outcome = read_outcome(path)
        if overrides is None:
            problems.append(".hydra/overrides.yaml cannot be read")
            overrides = [str(o) for o in outcome.summary.get("overrides") or []]
        jobs.append(
            Job(
                path, Path(sweep_dir), dict(map(split_override, overrides)), outcome, _metrics(path, problems), problems
            )
        )
    return jobs


def _counts(key: str) -> bool:
    return key != SEED_KEY and not under(key, RESUME_MAY_CHANGE) and not under(key, NEVER_VARIANTS)


def varied_keys(jobs: list[Job], sweep_dirs: list[Path]) -> list[str]:
    """The keys that make variants: the sweeps' recorded swept keys, else those whose values differ; never the seed,
    what a resume may change, nor what a search hands its trials."""
    records = [read_sweep_record(d) for d in sweep_dirs]
    if records and all(r is not None for r in records):
        return list(dict.fromkeys(k for r in records for k in r.swept if _counts(k)))
    keys: list[str] = []
    for job in jobs:
        keys += [k for k in job.overrides if k not in keys]
    return [k for k in keys if _counts(k) and len({job.overrides.get(k) for job in jobs}) > 1]


def check_poolable(jobs: list[Job], swept: list[str]) -> None:
    """Refuse to pool jobs of several sweeps whose resolved configs differ beyond the swept keys (UserError)."""
    from lenet.run.config import changed_keys

    ignore = (*swept, SEED_KEY, *RESUME_MAY_CHANGE, *NEVER_VARIANTS)
    first: dict[Path, tuple[Job, dict[str, Any]]] = {}
    for job in jobs:
        config = job.config()
        if config is not None and job.sweep not in first:
            first[job.sweep] = (job, config)
    (base_job, base), *others = list(first.values()) or [(None, None)]
    for job, config in others:
        differ = changed_keys(base, config, ignore)
        if differ:
            raise UserError(
                f"{base_job.sweep} and {job.sweep} differ in {', '.join(differ[:5])}"
                f"{', ...' if len(differ) > 5 else ''}, which neither sweeps: their jobs are not variants of one "
                "study; compare them one by one"
            )


def group_variants(jobs: list[Job], keys: list[str]) -> list[Variant]:
    """Group jobs by their values of ``keys``."""
    variants: dict[tuple, Variant] = {}
    for job in jobs:
        settings = {k: job.overrides.get(k, "(default)") for k in keys}
        label = ",".join(f"{k}={short_value(v)}" for k, v in settings.items()) or "all jobs"
        variants.setdefault(tuple(settings.items()), Variant(label, settings)).jobs.append(job)
    return list(variants.values())
