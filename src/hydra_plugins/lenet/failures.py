"""A job whose process ended without a result: its outcome as it recorded it, or failed with the reason.

The launchers return for such a job what any job returns (``lenet.run.outcome``): a ``JobReturn`` with
``JobStatus.COMPLETED`` and its ``Outcome`` when it had recorded that it completed, else
``JobStatus.FAILED`` with a ``JobFailed`` holding its outcome.
"""

from pathlib import Path
from typing import Any, Sequence

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf, open_dict

from lenet.run.outcome import JobFailed, Outcome, Status, read_outcome, record_failure


def job_dir(hydra_context: Any, config: Any, idx: int, overrides: Sequence[str]) -> Path:
    """The folder of job ``idx`` of the sweep, as the job itself would have composed it."""
    job_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(job_config):
        job_config.hydra.job.num = idx
    return Path(str(job_config.hydra.sweep.dir)) / str(OmegaConf.select(job_config, "hydra.sweep.subdir"))


def recorded_or_failed(folder: Path, overrides: Sequence[str], reason: str, status: Status = Status.failed) -> Outcome:
    """How the job recorded that it ended (completed, interrupted, ...); else record ``status`` for ``reason``."""
    outcome = read_outcome(folder)
    if outcome.summary and outcome.status != Status.running:
        return outcome
    return record_failure(folder, list(overrides), reason, status)


def failed_job(
    hydra_context: Any, config: Any, idx: int, overrides: Sequence[str], reason: str, status: Status = Status.failed
) -> JobReturn:
    """The JobReturn of job ``idx``, whose process ended for ``reason`` without returning one (``status`` if it
    recorded nothing itself)."""
    folder = job_dir(hydra_context, config, idx, overrides)
    outcome = recorded_or_failed(folder, overrides, reason, status)
    ret = JobReturn(overrides=list(overrides), working_dir=str(folder), task_name="train")
    ret.status = JobStatus.COMPLETED if outcome.status.ok else JobStatus.FAILED
    ret.return_value = outcome if outcome.status.ok else JobFailed(outcome)
    return ret
