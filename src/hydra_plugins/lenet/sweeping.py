"""What lenet's sweepers and launchers do around the jobs: one owner for every folder, one folder for every job.

A sweeper claims the sweep dir and records what it sweeps before any job runs (a launcher that runs
nothing, ``runs_jobs = False``: the preview, leaves it alone), and gives each job its folder by the job's
identity (``assign_folders``). A launcher holds each job's folder while the job runs (``run_claimed``).
"""

import logging
from pathlib import Path
from typing import Any, List, Optional, Sequence

from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from lenet.run.files import save_yaml
from lenet.run.folders import OURS, FolderError, check_job_folder, claim_sweep_dir, holding
from lenet.run.identity import job_identity, relaxed
from lenet.run.outcome import JobFailed, Outcome, Status
from lenet.run.sweep_dir import (
    MULTIRUN_FILE,
    SweepRecord,
    known_jobs,
    override_value,
    read_sweep_record,
    read_swept_keys,
    sweep_definition,
    swept_keys,
    write_sweep_record,
)

log = logging.getLogger(__name__)


class SetUpLauncher(Launcher):
    """A launcher that keeps what Hydra's ``setup`` hands it: the config, the Hydra context, the task function."""

    def __init__(self) -> None:
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.task_function: Optional[TaskFunction] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function


def runs_jobs(launcher: Any) -> bool:
    """Whether ``launcher`` runs the jobs it is given (the preview launcher says it does not)."""
    return bool(getattr(launcher, "runs_jobs", True))


def start_sweep(config: DictConfig, launcher: Any, kind: str = "grid") -> Path:
    """Claim the sweep dir (a dated one of its own, a named one only to continue its sweep) and record the sweep:
    its ``kind`` (``grid``: every combination; ``search``: trials a sampler chose), its swept keys and definition,
    in ``sweep.json`` and Hydra's ``multirun.yaml`` (from which a damaged sweep.json is rebuilt)."""
    params_node = OmegaConf.select(config, "hydra.sweeper.params", default=None)
    space = {
        str(k): str(v) for k, v in (OmegaConf.to_container(params_node) if params_node is not None else {}).items()
    }
    if runs_jobs(launcher):
        task = list(config.hydra.overrides.task)
        record = SweepRecord(kind=kind, swept=swept_keys(task, space), definition=sweep_definition(task, space))
        sweep_dir = claim_sweep_dir(config, record)
        record.jobs = known_jobs(sweep_dir)  # a continued sweep keeps the jobs it has
        record.command = resume_command(sweep_dir)
        save_yaml(config, sweep_dir / MULTIRUN_FILE)
        write_sweep_record(sweep_dir, record)
    return Path(str(config.hydra.sweep.dir))


def resume_command(sweep_dir: Path) -> str:
    """The command that continues this sweep: the one typed, in its own sweep dir, with trainer.resume=true."""
    import shlex
    import sys

    args = [a for a in sys.argv[1:] if not a.startswith(("hydra.sweep.dir=", "trainer.resume="))]
    args += [f"hydra.sweep.dir={sweep_dir}", "trainer.resume=true"]
    return " ".join(shlex.quote(a) for a in ["python", "train.py", *args])


def job_dir(job_config: DictConfig) -> Path:
    """The folder a job's composed config gives it (its sweep dir / its subdir)."""
    return Path(str(job_config.hydra.sweep.dir)) / str(OmegaConf.select(job_config, "hydra.sweep.subdir"))


def composed_job(hydra_context: Any, config: DictConfig, overrides: Sequence[str], num: int) -> DictConfig:
    """Job ``num``'s config composed from the sweep's, as a launcher composes it."""
    job_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(job_config):
        job_config.hydra.job.id = num
        job_config.hydra.job.num = num
    return job_config


def composed_subdirs(hydra_context: Any, config: DictConfig, jobs: Sequence[Sequence[str]]) -> List[str]:
    """Each job's default subdir, composing every job first: one that does not compose is one ConfigError line."""
    from lenet.core.errors import ConfigError, one_line

    subdirs = []
    for num, overrides in enumerate(jobs):
        try:
            subdirs.append(default_subdir(composed_job(hydra_context, config, overrides, num)))
        except Exception as e:  # Hydra's composition errors come in several kinds
            cause = f"; {one_line(str(e.__cause__))}" if e.__cause__ is not None and str(e.__cause__) else ""
            raise ConfigError(
                f"job #{num} ({' '.join(overrides)}) does not compose: {one_line(str(e))}{cause}"
            ) from None
    return subdirs


def default_subdir(job_config: DictConfig) -> str:
    """The subdir ``hydra.sweep.subdir`` gives a job (resolved as inside the job, ``${hydra:...}`` included)."""
    from hydra.core.hydra_config import HydraConfig

    previous = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(job_config)
    try:
        return str(OmegaConf.select(job_config, "hydra.sweep.subdir"))
    finally:
        HydraConfig.instance().cfg = previous


def _occupied(folder: Path) -> bool:
    return folder.is_dir() and any(p.name not in OURS for p in folder.iterdir())


def assign_folders(
    sweep_dir: Path, jobs: Sequence[Sequence[str]], wanted: Sequence[str], resuming: bool = False
) -> List[List[str]]:
    """Each job's overrides with ``hydra.sweep.subdir`` naming its folder, recorded in sweep.json before any job runs.

    A job that the sweep dir holds already (the same identity: ``lenet.run.identity``; resumed, but for what a
    resume may change and the sweep does not vary) gets its folder back; a new one gets its ``wanted`` subdir when
    no other job has it and it is empty, else the next free one (the next number, or ``-1``, ``-2``, ...). No
    folder is ever given to two jobs.
    """
    record = read_sweep_record(sweep_dir) or SweepRecord()
    folders = known_jobs(sweep_dir)  # folder -> identity
    swept = record.swept

    def match(identity: Sequence[str]) -> tuple:
        return relaxed(tuple(identity), swept) if resuming else tuple(identity)

    by_identity = {match(identity): folder for folder, identity in folders.items()}
    given: set = set()
    assigned = []
    for overrides, subdir in zip(jobs, wanted):
        identity = job_identity(overrides)
        folder = by_identity.get(match(identity))
        if folder is None or folder in given:
            folder, n = subdir, 0
            while folder in folders or folder in given or _occupied(sweep_dir / folder):
                n += 1
                folder = str(int(subdir) + n) if subdir.isdigit() else f"{subdir}-{n}"
            folders[folder] = list(identity)
            by_identity[match(identity)] = folder
        given.add(folder)
        assigned.append([*overrides, f"hydra.sweep.subdir={override_value(folder)}"])
    record.jobs = folders
    write_sweep_record(sweep_dir, record)
    return assigned


def claim_job_folder(job_config: DictConfig) -> None:
    """Check that a job's folder is new, empty, or holds this very job (held by the caller already)."""
    from lenet.run.context import job_context

    resuming = bool(OmegaConf.select(job_config, "trainer.resume", default=False)) or job_context().requeueable
    sweep_dir = Path(str(job_config.hydra.sweep.dir))
    check_job_folder(job_dir(job_config), list(job_config.hydra.overrides.task), resuming, read_swept_keys(sweep_dir))


def refused_job(overrides: Sequence[str], folder: Path, error: Exception) -> JobReturn:
    """The JobReturn of a job whose folder could not be claimed: FAILED, its folder left untouched."""
    ret = JobReturn(overrides=list(overrides), working_dir=str(folder), task_name="train", status=JobStatus.FAILED)
    ret.return_value = JobFailed(Outcome(Status.failed, folder, str(error)))
    return ret


def run_claimed(hydra_context: Any, task_function: Any, job_config: DictConfig) -> JobReturn:
    """Run a job as Hydra's launchers do, holding its folder (checked to be new or its own) while it runs."""
    from hydra.core.utils import run_job

    folder = job_dir(job_config)
    overrides = list(job_config.hydra.overrides.task)
    try:
        with holding(folder, "hydra.sweep.subdir"):
            claim_job_folder(job_config)
            return run_job(
                hydra_context=hydra_context,
                task_function=task_function,
                config=job_config,
                job_dir_key="hydra.sweep.dir",
                job_subdir_key="hydra.sweep.subdir",
            )
    except FolderError as e:
        log.error(f"job {' '.join(overrides)} not run: {e}")
        return refused_job(overrides, folder, e)
