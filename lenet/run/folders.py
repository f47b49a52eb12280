"""A run's folder is its own: never shared with another run, never rewritten by a refused resume.

Called from the Hydra callback before Hydra writes a run's ``.hydra/`` files, so a refusal touches nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf, read_write


def _refuse(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(1)


def _holds_a_run(folder: Path) -> bool:
    return any((folder / name).exists() for name in (".hydra", "summary.json", "checkpoint.pt"))


def claim_run_dir(config: DictConfig) -> None:
    """Give this run a folder no other run writes to, before Hydra writes its .hydra/ files there.

    Hydra's dated default (``outputs/DATE/TIME``) is made unique with a suffix when another run took it in
    the same second; a folder named with hydra.run.dir that already holds a run is refused, unless the
    run continues it (trainer.resume=true) with the config it was made with.
    """
    run_dir = Path(config.hydra.run.dir)
    if OmegaConf.select(config, "trainer.resume", default=False):
        _check_resumable(config, run_dir)
        return
    if _dated(config.hydra.run):
        _move_if_taken(config.hydra.run)
    elif _holds_a_run(run_dir):
        _refuse(
            f"{run_dir} already holds a run; continue it with trainer.resume=true, or choose another "
            "hydra.run.dir (or delete that folder to start over there)"
        )


def _dated(node: DictConfig) -> bool:
    """Whether ``node.dir`` is a pattern of the start time (Hydra's default), rather than a name given."""
    return "${now:" in str(OmegaConf.to_container(node, resolve=False).get("dir"))


def _move_if_taken(node: DictConfig) -> Optional[Path]:
    """Point ``node.dir`` at a fresh sibling when another run took it; return the new folder, if any."""
    folder = Path(node.dir)
    claimed = _unique_folder(folder)
    if claimed == folder:
        return None
    with read_write(node):
        node.dir = str(claimed)
    return claimed


def _unique_folder(folder: Path) -> Path:
    """``folder``, or ``folder-1``, ``folder-2``, ...: the first that this process creates itself."""
    for n in range(1000):
        candidate = folder if n == 0 else folder.with_name(f"{folder.name}-{n}")
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            continue
        except OSError:
            return folder  # unwritable: _ensure_writable says so in one line
    return folder


def _check_resumable(config: DictConfig, run_dir: Path) -> None:
    """Refuse to resume with another config before Hydra overwrites the run's own .hydra/config.yaml."""
    from lenet.run.config import RESUME_IGNORES, changed_keys

    saved_file = run_dir / ".hydra" / "config.yaml"
    if not saved_file.is_file():
        return
    try:
        saved = OmegaConf.to_container(OmegaConf.load(saved_file), resolve=True, enum_to_str=True)
    except Exception:  # unreadable: the checkpoint decides, and says what is wrong with it
        return
    current = {}
    for key in config:
        if key != "hydra":  # Hydra's own node resolves only inside a job
            node = config[key]
            current[key] = (
                OmegaConf.to_container(node, resolve=True, enum_to_str=True) if OmegaConf.is_config(node) else node
            )
    changed = changed_keys(saved, current, RESUME_IGNORES)
    if changed:
        _refuse(
            f"cannot resume {run_dir}: it was made with different values of {', '.join(changed)}; "
            "resume with the same config or start a new run dir"
        )


def claim_sweep_dir(config: DictConfig, definition: list[str]) -> None:
    """As ``claim_run_dir``, for a sweep: a dated sweep dir of its own, a named one holding a sweep refused.

    With trainer.resume=true the sweep continues the one in its dir, job by job, if ``definition`` (its
    overrides and search space) is that sweep's; another one is refused, naming what differs.
    """
    from lenet.run.sweep_dir import override_value, read_sweep_definition, split_override, sweep_jobs

    sweep_dir = Path(config.hydra.sweep.dir)
    if OmegaConf.select(config, "trainer.resume", default=False):
        recorded = read_sweep_definition(sweep_dir)
        if recorded is not None and recorded != definition:
            before, now = dict(map(split_override, recorded)), dict(map(split_override, definition))
            differ = [f"{k} ({before.get(k, 'not set')}, now {now.get(k, 'not set')})"
                      for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]  # fmt: skip
            _refuse(
                f"cannot resume the sweep in {sweep_dir}: it was started with other values of {', '.join(differ)}; "
                "run it with the same overrides, or choose another hydra.sweep.dir"
            )
        return
    if _dated(config.hydra.sweep):
        claimed = _move_if_taken(config.hydra.sweep)
        if claimed is not None:  # the launcher composes each job's config again from these overrides
            with read_write(config.hydra.overrides):
                config.hydra.overrides.hydra.append(f"hydra.sweep.dir={override_value(str(claimed))}")
    elif sweep_dir.is_dir() and sweep_jobs(sweep_dir):
        _refuse(
            f"{sweep_dir} already holds a sweep ({len(sweep_jobs(sweep_dir))} jobs); choose another "
            "hydra.sweep.dir, or delete that folder to start over there"
        )
