"""Every run and sweep folder has one owner at a time, and holds only what its own runs wrote.

A process that uses a folder holds a lock in it (``.lenet.lock``, through ``filelock``: the OS
releases it when the process dies, even by SIGKILL) and says who it is in ``.lenet.lock.json``;
another process that wants the folder is refused in one line naming the holder. A single run
claims its folder from the Hydra callback, before Hydra writes its ``.hydra/`` there; a sweep's
process claims the sweep dir; lenet's launchers claim each job's folder before Hydra runs the job.
"""

from __future__ import annotations

import atexit
import datetime
import json
import os
import socket
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

from filelock import FileLock, Timeout
from omegaconf import DictConfig, OmegaConf, read_write

from lenet.core.errors import UserError
from lenet.run.files import check_writable_name, write_text

if TYPE_CHECKING:
    from lenet.run.sweep_dir import SweepRecord

LOCK_FILE = ".lenet.lock"
OWNER_FILE = ".lenet.lock.json"
OURS = {LOCK_FILE, OWNER_FILE}  # files in a folder that say who uses it, not what it holds
RUN_MARKS = (".hydra", "summary.json", "checkpoint.pt")  # a folder holding any of these holds a run

_held: dict[Path, tuple[FileLock, Path]] = {}  # what this process holds: its lock, its owner file


class FolderError(UserError):
    """A folder is in use by another process, holds another run, or holds files no run of ours wrote."""


def _holder(owner_file: Path) -> str:
    try:
        owner = json.loads(owner_file.read_text())
        return f"process {owner['pid']} on {owner['host']} ({owner['command']}, since {owner['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def hold(target: Path, key: str, is_file: bool = False) -> bool:
    """Hold a folder (or, ``is_file``, a file such as a study's database) for this process; False if it held it already.

    The lock lives in the folder (beside the file). Held until ``release`` or the process's exit. One that
    another process holds raises FolderError naming that process and ``key``, the setting to change.
    """
    given, target = Path(target), Path(target).resolve()
    if target in _held:
        return False
    if is_file:
        lock_file, owner_file = target.with_name(f".{target.name}.lock"), target.with_name(f".{target.name}.lock.json")
    else:
        lock_file, owner_file = target / LOCK_FILE, target / OWNER_FILE
    lock = FileLock(str(lock_file), timeout=0)
    check_writable_name(lock_file)  # filelock opens its file with O_TRUNC: never through a link
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except Timeout:
        raise FolderError(
            f"{target} is in use by {_holder(owner_file)}: wait for it to end, or choose another {key}"
        ) from None
    except OSError as e:
        raise FolderError(
            f"cannot write the output dir {given} ({e.strerror}); choose another with {key}=PATH"
        ) from None
    _held[target] = (lock, owner_file)
    owner = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": " ".join(sys.argv)[:300],
        "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    write_text(owner_file, json.dumps(owner) + "\n")
    return True


def release(target: Path) -> None:
    """Let ``target`` go (one this process does not hold is left alone)."""
    held = _held.pop(Path(target).resolve(), None)
    if held is not None:
        lock, owner_file = held
        owner_file.unlink(missing_ok=True)
        lock.release()


@atexit.register
def _release_all() -> None:  # the OS frees the locks of a process that dies; this also removes the owner files
    for target in list(_held):
        release(target)


@contextmanager
def holding(folder: Path, key: str) -> Iterator[None]:
    """Hold ``folder`` while the block runs (if this process held it already, it keeps holding it after)."""
    acquired = hold(folder, key)
    try:
        yield
    finally:
        if acquired:
            release(folder)


def _contents(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in OURS) if folder.is_dir() else []


def holds_a_run(folder: Path) -> bool:
    """Whether ``folder`` holds a run's files (its .hydra/, summary.json or checkpoint)."""
    return any((folder / name).exists() for name in RUN_MARKS)


def check_fresh(folder: Path, key: str) -> None:
    """Refuse a folder that holds files (a run's or anything else) for a run that starts afresh."""
    contents = _contents(folder)
    if holds_a_run(folder):
        raise FolderError(
            f"{folder} already holds a run; continue it with trainer.resume=true, or choose another {key} "
            "(or delete that folder to start over there)"
        )
    if contents:
        shown = ", ".join(contents[:5]) + (", ..." if len(contents) > 5 else "")
        raise FolderError(
            f"{folder} holds files that no run of lenet wrote ({shown}); choose an empty or new folder for {key}"
        )


def check_job_folder(folder: Path, overrides: list[str], resuming: bool, swept: Optional[list[str]]) -> None:
    """Refuse a sweep job's folder unless it is new, empty, or holds this very job (``lenet.run.identity.same_job``:
    by its overrides; a resumed job may differ in what a resume may change that its sweep, ``swept``, does not vary)."""
    from lenet.run.identity import job_identity, same_job
    from lenet.run.sweep_dir import recorded_overrides

    if not _contents(folder):
        return
    recorded = recorded_overrides(folder)
    if recorded is None:
        check_fresh(folder, "hydra.sweep.subdir")
    elif not same_job(recorded, overrides, resuming, swept):
        raise FolderError(
            f"{folder} holds another job ({' '.join(job_identity(recorded)) or 'no overrides'}), not this one "
            f"({' '.join(job_identity(overrides)) or 'no overrides'}); it is left as it is"
        )


def claim_run_dir(config: DictConfig) -> None:
    """Give this run a folder no other run or process writes to, before Hydra writes its .hydra/ files there.

    Hydra's dated default (``outputs/DATE/TIME``) is made unique with a suffix when another run took it in
    the same second; a folder named with hydra.run.dir that holds a run, or files of someone else's, is
    refused unless the run continues it (trainer.resume=true) with the config it was made with. The
    folder is held until the process exits.
    """
    run_dir = Path(config.hydra.run.dir)
    if OmegaConf.select(config, "trainer.resume", default=False):
        hold(run_dir, "hydra.run.dir")
        _check_resumable(config, run_dir)
        return
    if _dated(config.hydra.run):
        run_dir = _move_if_taken(config.hydra.run) or run_dir
    hold(run_dir, "hydra.run.dir")
    check_fresh(run_dir, "hydra.run.dir")


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
            return folder  # unwritable: the caller says so in one line
    return folder


def _check_resumable(config: DictConfig, run_dir: Path) -> None:
    """Refuse to resume with another config before Hydra overwrites the run's own .hydra/config.yaml."""
    from lenet.run.config import RESUME_IGNORES, changed_keys

    saved_file = run_dir / ".hydra" / "config.yaml"
    if not saved_file.is_file():
        if _contents(run_dir) and not holds_a_run(run_dir):
            check_fresh(run_dir, "hydra.run.dir")
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
        raise FolderError(
            f"cannot resume {run_dir}: it was made with {describe_changes(saved, current, changed)}; resume it "
            "as it was made (trainer.resume=true hydra.run.dir=... takes its own overrides), or start a new run dir"
        )


def describe_changes(saved: dict, current: dict, keys: list[str]) -> str:
    """``key=then (now now)`` for each changed key."""

    def value(tree: dict, key: str) -> object:
        for part in key.split("."):
            tree = tree.get(part, "not set") if isinstance(tree, dict) else "not set"
        return tree

    return ", ".join(f"{k}={value(saved, k)} (now {value(current, k)})" for k in keys)


def claim_sweep_dir(config: DictConfig, record: "SweepRecord") -> Path:
    """As ``claim_run_dir``, for a sweep: a dated sweep dir of its own, a named one holding a sweep refused.

    With trainer.resume=true the sweep continues the one in its dir, job by job, if ``record`` (what this
    command sweeps) is that sweep's: the same swept keys and the same settings for everything else (but
    what a resume may change); a swept key may take other values, and the sweep grows by the new jobs.
    Another sweep is refused, naming what differs. The sweep dir is held until the process exits. Returns it.
    """
    from lenet.run.sweep_dir import known_jobs, override_value, read_sweep_record

    sweep_dir = Path(config.hydra.sweep.dir)
    if OmegaConf.select(config, "trainer.resume", default=False):
        hold(sweep_dir, "hydra.sweep.dir")
        recorded = read_sweep_record(sweep_dir)
        if recorded is not None:
            _check_same_sweep(sweep_dir, recorded, record)
        return sweep_dir
    if _dated(config.hydra.sweep):
        claimed = _move_if_taken(config.hydra.sweep)
        if claimed is not None:  # the launcher composes each job's config again from these overrides
            sweep_dir = claimed
            with read_write(config.hydra.overrides):
                config.hydra.overrides.hydra.append(f"hydra.sweep.dir={override_value(str(claimed))}")
    hold(sweep_dir, "hydra.sweep.dir")
    jobs = known_jobs(sweep_dir)
    if jobs:
        raise FolderError(
            f"{sweep_dir} already holds a sweep ({len(jobs)} jobs); choose another hydra.sweep.dir, continue it "
            "with trainer.resume=true, or delete that folder to start over there"
        )
    return sweep_dir


def _check_same_sweep(sweep_dir: Path, recorded: "SweepRecord", now: "SweepRecord") -> None:
    """Refuse to continue the sweep ``recorded`` with a sweep ``now`` that is another one (naming what differs)."""
    from lenet.run.identity import RESUME_MAY_CHANGE, identity_key, under

    if recorded.kind != now.kind:
        raise FolderError(
            f"cannot continue the sweep in {sweep_dir}: it is a {recorded.kind}, this command runs a {now.kind}; "
            "choose another hydra.sweep.dir"
        )
    if set(recorded.swept) != set(now.swept):
        raise FolderError(
            f"cannot continue the sweep in {sweep_dir}: it sweeps {', '.join(sorted(recorded.swept)) or 'nothing'}, "
            f"this command sweeps {', '.join(sorted(now.swept)) or 'nothing'}; a sweep grows by more values of its "
            "own keys: choose another hydra.sweep.dir for another sweep"
        )

    def settings(record: "SweepRecord") -> dict[str, str]:
        kept = (o for o in record.fixed if not under(identity_key(o), RESUME_MAY_CHANGE))
        return {identity_key(o): o.partition("=")[2] if not o.startswith("~") else "(deleted)" for o in kept}

    before, after = settings(recorded), settings(now)
    differ = [
        f"{k}={before.get(k, 'not set')} (now {after.get(k, 'not set')})"
        for k in sorted(set(before) | set(after))
        if before.get(k) != after.get(k)
    ]
    if differ:
        raise FolderError(
            f"cannot continue the sweep in {sweep_dir}: it was started with {', '.join(differ)}; run it with the "
            "same settings (more values of its swept keys are welcome), or choose another hydra.sweep.dir"
        )
