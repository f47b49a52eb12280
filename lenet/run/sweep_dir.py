"""What a sweep varies: the keys it sweeps, recorded in its dir for its jobs and for the report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Optional

SWEEP_FILE = "sweep.json"


def sweep_jobs(sweep_dir: Path) -> list[Path]:
    """The job dirs of a sweep, in job order: subfolders holding Hydra's .hydra/overrides.yaml."""
    jobs = [p.parent.parent for p in sweep_dir.glob("**/.hydra/overrides.yaml")]
    return sorted(
        jobs, key=lambda p: [(0, int(s), "") if s.isdigit() else (1, 0, s) for s in p.relative_to(sweep_dir).parts]
    )


def split_override(override: str) -> tuple[str, str]:
    """The key or group an override sets and its value: ``+optimizer.lr=0.1`` -> ``("optimizer.lr", "0.1")``."""
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def swept_keys(cli_overrides: Iterable[str], sweeper_params: Iterable[str]) -> list[str]:
    """Keys a multirun varies: command-line sweeps (``a=1,2``, ``range(3)``, ...) and the sweeper's params."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(cli_overrides))
    keys = {o.key_or_group for o in parsed if o.is_sweep_override()} | set(sweeper_params)
    return sorted(keys)


def write_sweep_file(sweep_dir: Path, keys: list[str], definition: Optional[list[str]] = None) -> None:
    """Record the swept keys, and what defines the sweep, in the sweep dir, where every job can read them."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    record = {"swept": keys, "definition": definition or []}
    (sweep_dir / SWEEP_FILE).write_text(json.dumps(record, indent=2) + "\n")


def sweep_definition(task_overrides: Iterable[str], sweeper_params: dict[str, str], ignore: Iterable[str]) -> list[str]:
    """The overrides and search space that decide a sweep's jobs, except keys under ``ignore``."""
    ignored = tuple(ignore)
    lines = list(task_overrides) + [f"{k}={v}" for k, v in sweeper_params.items()]
    kept = [o for o in lines if not any(split_override(o)[0] == i or split_override(o)[0].startswith(i + ".")
                                        for i in ignored)]  # fmt: skip
    return sorted(kept)


def read_sweep_definition(sweep_dir: Path) -> Optional[list[str]]:
    """The definition ``write_sweep_file`` recorded, or None for a sweep dir without one."""
    path = sweep_dir / SWEEP_FILE
    return json.loads(path.read_text()).get("definition") if path.is_file() else None


def read_swept_keys(sweep_dir: Path) -> Optional[list[str]]:
    """The keys recorded by ``write_sweep_file``, or None for a sweep dir without the file."""
    path = sweep_dir / SWEEP_FILE
    return json.loads(path.read_text())["swept"] if path.is_file() else None


def job_label(overrides: list[str], swept: Optional[list[str]]) -> str:
    """What sets a job apart in its sweep, e.g. ``pooling=avg,seed=1``; all overrides when unknown."""
    chosen = [o for o in overrides if swept is None or split_override(o)[0] in swept]
    return ",".join(chosen)


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
