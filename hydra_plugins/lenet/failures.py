"""A job whose process died: recorded as failed in its own summary.json, and NaN to the sweeper.

NaN is what the runner returns for a job that failed inside a sweep, so that the others run on and
the sweep's verdict names it.
"""

import json
from pathlib import Path
from typing import Any, Sequence

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf, open_dict


def job_dir(hydra_context: Any, config: Any, idx: int, overrides: Sequence[str]) -> Path:
    """The folder of job ``idx`` of the sweep, as the job itself would have composed it."""
    job_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(job_config):
        job_config.hydra.job.num = idx
    return Path(str(job_config.hydra.sweep.dir)) / str(OmegaConf.select(job_config, "hydra.sweep.subdir"))


def record_failure(folder: Path, overrides: Sequence[str], reason: str) -> None:
    """Mark the job failed in its summary.json, unless it recorded how it ended itself."""
    from lenet.run.tracking import SUMMARY_FILE, read_summary, write_atomic

    folder.mkdir(parents=True, exist_ok=True)
    summary = read_summary(folder) or {"final_test_acc": None, "best_test_acc": None}
    if summary.get("status") in ("completed", "failed", "interrupted"):
        return
    summary.update(status="failed", error=reason, overrides=list(overrides))
    write_atomic(folder / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")


def failed_job(hydra_context: Any, config: Any, idx: int, overrides: Sequence[str], reason: str) -> JobReturn:
    """Record job ``idx`` as failed for ``reason``; its JobReturn for the sweeper (NaN)."""
    folder = job_dir(hydra_context, config, idx, overrides)
    record_failure(folder, overrides, reason)
    ret = JobReturn(overrides=list(overrides), working_dir=str(folder), task_name="train")
    ret.status, ret.return_value = JobStatus.COMPLETED, float("nan")
    return ret
