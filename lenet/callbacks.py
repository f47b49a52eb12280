"""Hydra callbacks: a clear error for an unusable output dir, and a sweep's verdict on its jobs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from lenet.sweep import sweep_jobs, swept_keys, write_sweep_file
from lenet.tracking import read_summary


def _ensure_writable(folder: Path, key: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        print(
            f"error: cannot write the output dir {folder} ({e.strerror}); choose another with {key}=PATH",
            file=sys.stderr,
        )
        raise SystemExit(1) from None


class JobReport(Callback):
    """Fails a sweep at its end, naming the jobs that did not complete; checks output dirs first."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _ensure_writable(Path(config.hydra.run.dir), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        _ensure_writable(sweep_dir, "hydra.sweep.dir")
        params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
        write_sweep_file(sweep_dir, swept_keys(config.hydra.overrides.task, params.keys()))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        jobs = sweep_jobs(Path(config.hydra.sweep.dir))
        failed = []
        for job in jobs:
            summary = read_summary(job)
            status = summary["status"] if summary else "no summary.json"
            if status != "completed":
                error = (summary or {}).get("error") or "the job ended without recording a result"
                failed.append(f"  {job}: {status}: {error}")
        if failed:
            print(f"error: {len(failed)} of {len(jobs)} jobs did not complete:", *failed, sep="\n", file=sys.stderr)
            raise SystemExit(1)
