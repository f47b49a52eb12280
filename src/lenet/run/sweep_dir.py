"""What a sweep dir records for its jobs and tools: the keys it sweeps, what defines it, and which folder holds which job.

``sweep.json`` is an index, written by the sweep's process (which holds the sweep dir) before any job
runs: ``jobs`` maps each job's folder to its identity (``lenet.run.identity``), so a sweep run again
finds each job in the folder that holds it and never gives a folder to another job. Everything in it
can be rebuilt from the sweep's own records (Hydra's ``multirun.yaml`` and each job's
``.hydra/overrides.yaml``): a damaged ``sweep.json`` is rebuilt from them, or refused in one line when
they cannot say what it said. It is never taken for "no sweep".
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from lenet.core.errors import UserError
from lenet.run.identity import job_identity, key_of, normalised

SWEEP_FILE = "sweep.json"
MULTIRUN_FILE = "multirun.yaml"  # Hydra's record of the sweep's config, which lenet's sweepers write first
SEARCH_SWEEPER = "hydra_plugins.lenet.optuna_sweeper.OptunaSweeper"  # a sweep whose jobs are a search's trials


class SweepRecordError(UserError):
    """A sweep.json that can neither be read nor rebuilt from the sweep's own records."""


@dataclass
class SweepRecord:
    """What a sweep dir says of its sweep."""

    kind: str = "grid"  # grid: every combination of its values; search: trials a sampler chose
    swept: list[str] = field(default_factory=list)  # the keys its jobs differ in
    definition: list[str] = field(default_factory=list)  # its overrides (swept ones with their values), normalised
    command: Optional[str] = None  # the command that continues it
    jobs: dict[str, list[str]] = field(default_factory=dict)  # folder (relative) -> identity

    @property
    def fixed(self) -> list[str]:
        """The overrides every job of the sweep shares: its definition without the swept keys."""
        return [o for o in self.definition if key_of(o) not in self.swept]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _parsed(text: str) -> SweepRecord:
    """The record ``text`` holds; ValueError naming what is wrong with its shape."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"it holds a {type(data).__name__}, not an object")
    jobs = data.get("jobs", {})
    checks = {
        "kind": data.get("kind", "grid") in ("grid", "search"),
        "swept": _strings(data.get("swept", [])),
        "definition": _strings(data.get("definition", [])),
        "command": isinstance(data.get("command"), (str, type(None))),
        "jobs": isinstance(jobs, dict) and all(isinstance(k, str) and _strings(v) for k, v in jobs.items()),
    }
    wrong = [key for key, ok in checks.items() if not ok]
    if wrong:
        raise ValueError(f"its {', '.join(wrong)} {'is' if len(wrong) == 1 else 'are'} not what lenet writes")
    return SweepRecord(
        kind=data.get("kind", "grid"),
        swept=list(data.get("swept", [])),
        definition=list(data.get("definition", [])),
        command=data.get("command"),
        jobs={k: list(v) for k, v in jobs.items()},
    )


def read_sweep_record(sweep_dir: Path) -> Optional[SweepRecord]:
    """The sweep's record: ``sweep.json``, rebuilt from the sweep's own records when it is damaged; None without one.

    A damaged record that cannot be rebuilt raises SweepRecordError (one line saying what to do).
    """
    path = Path(sweep_dir) / SWEEP_FILE
    if not path.exists() and not path.is_symlink():
        return None
    try:
        if not path.is_file() or path.is_symlink():
            raise ValueError("it is not a plain file")
        return _parsed(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        why = (
            e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0] if str(e) else "unreadable"
        )
        rebuilt = rebuild_sweep_record(sweep_dir)
        if rebuilt is None:
            raise SweepRecordError(
                f"{path} is damaged ({why}) and the sweep's own records ({MULTIRUN_FILE}) cannot rebuild it: restore it, "
                "or choose another hydra.sweep.dir"
            ) from None
        return rebuilt


def rebuild_sweep_record(sweep_dir: Path) -> Optional[SweepRecord]:
    """The record rebuilt from Hydra's ``multirun.yaml`` and each job's ``.hydra/overrides.yaml``; None without them."""
    from omegaconf import OmegaConf

    try:
        config = OmegaConf.load(Path(sweep_dir) / MULTIRUN_FILE)
        task = [str(o) for o in OmegaConf.select(config, "hydra.overrides.task", default=[])]
        params = OmegaConf.select(config, "hydra.sweeper.params", default=None)
        space = {str(k): str(v) for k, v in (OmegaConf.to_container(params) if params is not None else {}).items()}
        target = str(OmegaConf.select(config, "hydra.sweeper._target_", default=""))
    except Exception:  # missing, unreadable, not YAML, not a Hydra config: nothing to rebuild from
        return None
    jobs = {}
    for job_dir in _job_folders(sweep_dir):
        overrides = recorded_overrides(job_dir)
        if overrides is not None:
            jobs[str(job_dir.relative_to(sweep_dir))] = list(job_identity(overrides))
    return SweepRecord(
        kind="search" if target == SEARCH_SWEEPER else "grid",
        swept=swept_keys(task, space),
        definition=sweep_definition(task, space),
        jobs=jobs,
    )


def write_sweep_record(sweep_dir: Path, record: SweepRecord) -> None:
    """Replace ``sweep.json`` whole (through lenet's one writer)."""
    from lenet.run.files import write_text

    write_text(Path(sweep_dir) / SWEEP_FILE, record.to_json())


def recorded_overrides(job_dir: Path) -> Optional[list[str]]:
    """The task overrides Hydra recorded in a job's ``.hydra/overrides.yaml``, or None."""
    import yaml

    path = Path(job_dir) / ".hydra" / "overrides.yaml"
    try:
        overrides = yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return [str(o) for o in overrides] if isinstance(overrides, list) else None


def _job_folders(sweep_dir: Path) -> list[Path]:
    """Subfolders holding a sweep job's .hydra/ (a single run put inside the sweep's folder is not one of its jobs)."""
    return [p.parent.parent for p in Path(sweep_dir).glob("**/.hydra/overrides.yaml") if not _single_run(p.parent)]


def _single_run(hydra_dir: Path) -> bool:
    try:
        return "\n  mode: RUN\n" in (hydra_dir / "hydra.yaml").read_text()
    except (OSError, UnicodeDecodeError):
        return False


def _job_order(sweep_dir: Path, job: Path) -> list[tuple[int, int, str]]:
    return [(0, int(s), "") if s.isdigit() else (1, 0, s) for s in job.relative_to(sweep_dir).parts]


def sweep_jobs(sweep_dir: Path) -> list[Path]:
    """The job dirs of a sweep, in job order: those its record names, else subfolders holding a sweep job's .hydra/."""
    sweep_dir = Path(sweep_dir)
    record = read_sweep_record(sweep_dir)
    if record is not None:
        jobs = [sweep_dir / folder for folder in record.jobs if (sweep_dir / folder).is_dir()]
    else:
        jobs = _job_folders(sweep_dir)
    return sorted(jobs, key=lambda p: _job_order(sweep_dir, p))


def known_jobs(sweep_dir: Path) -> dict[str, list[str]]:
    """Folder (relative to the sweep dir) -> identity of every job the sweep dir holds."""
    record = read_sweep_record(sweep_dir)
    if record is not None:
        return {folder: list(identity) for folder, identity in record.jobs.items()}
    found = {}
    for job_dir in _job_folders(sweep_dir):  # a sweep made by another sweeper: its jobs' own records
        overrides = recorded_overrides(job_dir)
        if overrides is not None:
            found[str(job_dir.relative_to(sweep_dir))] = list(job_identity(overrides))
    return found


def swept_keys(cli_overrides: Iterable[str], sweeper_params: dict[str, str]) -> list[str]:
    """Keys a multirun varies: command-line sweeps (``a=1,2``, ``range(3)``, ...) and the sweeper's params."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(cli_overrides))
    keys = {o.key_or_group for o in parsed if o.is_sweep_override()} | {key_of(f"{k}=x") for k in sweeper_params}
    return sorted(keys)


def sweep_definition(task_overrides: Iterable[str], sweeper_params: dict[str, str]) -> list[str]:
    """The overrides and search space that decide a sweep's jobs, normalised and sorted.

    In any order, and a list of values in any order (``seed=1,0`` is ``seed=0,1``): the same jobs.
    """
    lines = list(task_overrides) + [f"{k}={v}" for k, v in sweeper_params.items()]
    return sorted(normalised(line) for line in lines if not key_of(line).startswith(("hydra.", "hydra/")))


def read_swept_keys(sweep_dir: Path) -> Optional[list[str]]:
    """The keys the sweep recorded as swept, or None for a sweep dir without a record."""
    record = read_sweep_record(sweep_dir)
    return list(record.swept) if record is not None else None


def job_label(overrides: list[str], swept: Optional[list[str]]) -> str:
    """What sets a job apart in its sweep, by key, e.g. ``pooling=avg,seed=1``: its swept keys (without a sweep's
    record, every override that makes the run but the settings a resume may change). Numbers in 4 digits."""
    from lenet.run.identity import RESUME_MAY_CHANGE, under

    def shown(o: str) -> bool:
        key = key_of(o)
        return key in swept if swept is not None else not key.startswith("hydra") and not under(key, RESUME_MAY_CHANGE)

    chosen = [o for o in overrides if shown(o)]
    return ",".join(_short(o) for o in sorted(chosen, key=key_of))


def split_override(override: str) -> tuple[str, str]:
    """The key or group an override sets and its value as typed: ``+optimizer.lr=0.1`` -> ``("optimizer.lr", "0.1")``."""
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def _short(override: str) -> str:
    key, value = split_override(override)
    short = short_value(value)
    if short == value and len(value) > 8 and "." in value:  # a name, not a record: 4 digits are enough
        try:
            short = f"{float(value):.4g}"
        except ValueError:
            pass
    return f"{key}={short}"


def short_value(value: str) -> str:
    """A float as briefly as it reads back the same (``1000000000.0`` -> ``1e9``), in at most 4 digits; else as it is.

    Hydra hands a job its swept numbers as Python writes them, not as they were typed.
    """
    import math

    try:
        number = float(value)
    except ValueError:
        return value
    if not any(c in value for c in ".eE") or not math.isfinite(number):
        return value
    mantissa, e, exponent = f"{number:.4g}".partition("e")
    short = f"{mantissa}e{int(exponent)}" if e else mantissa
    return short if float(short) == number and len(short) < len(value) else value


def override_value(value: Any) -> str:
    """``value`` (a string, number, bool, None, list or dict) written in Hydra's override grammar."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{override_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    text = str(value)
    plain = text and all(c.isalnum() or c in "/._-" for c in text) and not text[0].isdigit()
    if plain and text.lower() not in ("null", "true", "false", "nan", "inf"):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
