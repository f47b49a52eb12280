"""What a sweep dir records for its jobs and tools: the keys it sweeps, what defines it, and which folder holds which job.

``sweep.json`` is written by the sweep's process (which holds the sweep dir) before any job runs.
A job's identity is its overrides, in any order: ``jobs`` maps each job's sorted overrides to its
folder, so a sweep run again finds each job in the folder that holds it, and never gives a folder to
another job.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Optional

from lenet.run.files import write_atomic

SWEEP_FILE = "sweep.json"


def split_override(override: str) -> tuple[str, str]:
    """The key or group an override sets and its value: ``+optimizer.lr=0.1`` -> ``("optimizer.lr", "0.1")``."""
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def job_identity(overrides: Iterable[str]) -> list[str]:
    """A job's identity: its task overrides, sorted (their order does not matter), without Hydra's own and
    without those a resumed run may change (``trainer.resume``, the loggers, the device, ...)."""
    from lenet.run.config import RESUME_IGNORES

    def kept(key: str) -> bool:
        return not key.startswith("hydra.") and not any(key == i or key.startswith(i + ".") for i in RESUME_IGNORES)

    return sorted(o for o in overrides if kept(split_override(o)[0]))


def read_sweep_record(sweep_dir: Path) -> dict[str, Any]:
    """What ``sweep.json`` records (``swept``, ``definition``, ``jobs``: folder -> identity); empty without one.

    A file that cannot be read counts as none: the sweep's own folders still say which job each holds.
    """
    path = Path(sweep_dir) / SWEEP_FILE
    try:
        record = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def write_sweep_record(sweep_dir: Path, record: dict[str, Any]) -> None:
    """Replace ``sweep.json`` whole."""
    Path(sweep_dir).mkdir(parents=True, exist_ok=True)
    write_atomic(Path(sweep_dir) / SWEEP_FILE, json.dumps(record, indent=2) + "\n")


def recorded_overrides(job_dir: Path) -> Optional[list[str]]:
    """The task overrides Hydra recorded in a job's ``.hydra/overrides.yaml``, or None."""
    import yaml

    path = Path(job_dir) / ".hydra" / "overrides.yaml"
    try:
        overrides = yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        return None
    return [str(o) for o in overrides] if isinstance(overrides, list) else None


def sweep_jobs(sweep_dir: Path) -> list[Path]:
    """The job dirs of a sweep, in job order: those ``sweep.json`` records, else subfolders holding a job's .hydra/."""
    sweep_dir = Path(sweep_dir)
    recorded = read_sweep_record(sweep_dir).get("jobs")
    if isinstance(recorded, dict):
        jobs = [sweep_dir / folder for folder in recorded if (sweep_dir / folder).is_dir()]
    else:
        jobs = [p.parent.parent for p in sweep_dir.glob("**/.hydra/overrides.yaml")]
    return sorted(
        jobs, key=lambda p: [(0, int(s), "") if s.isdigit() else (1, 0, s) for s in p.relative_to(sweep_dir).parts]
    )


def known_jobs(sweep_dir: Path) -> dict[str, list[str]]:
    """Folder (relative to the sweep dir) -> identity of every job the sweep dir holds."""
    recorded = read_sweep_record(sweep_dir).get("jobs")
    if isinstance(recorded, dict):
        return {str(folder): list(identity) for folder, identity in recorded.items()}
    found = {}
    for job_dir in sweep_jobs(sweep_dir):  # a sweep made before sweep.json recorded its jobs
        overrides = recorded_overrides(job_dir)
        if overrides is not None:
            found[str(job_dir.relative_to(sweep_dir))] = job_identity(overrides)
    return found


def swept_keys(cli_overrides: Iterable[str], sweeper_params: Iterable[str]) -> list[str]:
    """Keys a multirun varies: command-line sweeps (``a=1,2``, ``range(3)``, ...) and the sweeper's params."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(cli_overrides))
    keys = {o.key_or_group for o in parsed if o.is_sweep_override()} | set(sweeper_params)
    return sorted(keys)


def sweep_definition(task_overrides: Iterable[str], sweeper_params: dict[str, str], ignore: Iterable[str]) -> list[str]:
    """The overrides and search space that decide a sweep's jobs, except keys under ``ignore``.

    In any order, and a list of values in any order (``seed=1,0`` is ``seed=0,1``): the same jobs.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep

    ignored = tuple(ignore)
    lines = list(task_overrides) + [f"{k}={v}" for k, v in sweeper_params.items()]
    kept = []
    for override in OverridesParser.create().parse_overrides(lines):
        key = override.key_or_group
        if any(key == i or key.startswith(i + ".") for i in ignored):
            continue
        if isinstance(override.value(), ChoiceSweep) and not override.value().tags:
            values = ",".join(sorted(override.sweep_string_iterator()))
            kept.append(f"{override.input_line.partition('=')[0]}={values}")
        else:
            kept.append(override.input_line)
    return sorted(kept)


def read_sweep_definition(sweep_dir: Path) -> Optional[list[str]]:
    """The definition the sweep recorded, or None for a sweep dir without one."""
    definition = read_sweep_record(sweep_dir).get("definition")
    return list(definition) if isinstance(definition, list) else None


def read_swept_keys(sweep_dir: Path) -> Optional[list[str]]:
    """The keys the sweep recorded as swept, or None for a sweep dir without them."""
    swept = read_sweep_record(sweep_dir).get("swept")
    return list(swept) if isinstance(swept, list) else None


def job_label(overrides: list[str], swept: Optional[list[str]]) -> str:
    """What sets a job apart in its sweep, by key, e.g. ``pooling=avg,seed=1``; without the swept keys, every
    override that makes the run (not ``data.root``, the loggers, the device, ...). Numbers in 4 digits."""
    chosen = [o for o in overrides if split_override(o)[0] in swept] if swept is not None else job_identity(overrides)
    return ",".join(_short(o) for o in sorted(chosen, key=lambda o: split_override(o)[0]))


def _short(override: str) -> str:
    key, _, value = override.partition("=")
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
