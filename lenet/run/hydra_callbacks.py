"""Hydra callbacks: a run dir of its own, a clear error for an unusable output dir, and a sweep's verdict."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from lenet.run.folders import claim_run_dir, claim_sweep_dir
from lenet.run.config import RESUME_IGNORES
from lenet.run.sweep_dir import job_label, read_swept_keys, sweep_definition, sweep_jobs, swept_keys, write_sweep_file
from lenet.run.tracking import read_summary


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


def _previewing(config: DictConfig) -> bool:
    return str(OmegaConf.select(config, "hydra.launcher._target_", default="")).endswith(".PreviewLauncher")


class JobReport(Callback):
    """Fails a sweep at its end, naming the jobs that did not complete; checks output dirs first."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        claim_run_dir(config)
        _ensure_writable(Path(config.hydra.run.dir), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if _previewing(config):
            return
        params_node = OmegaConf.select(config, "hydra.sweeper.params", default=None)
        params = OmegaConf.to_container(params_node) if params_node is not None else {}
        definition = sweep_definition(config.hydra.overrides.task, params, RESUME_IGNORES)
        claim_sweep_dir(config, definition)
        sweep_dir = Path(config.hydra.sweep.dir)
        _ensure_writable(sweep_dir, "hydra.sweep.dir")
        write_sweep_file(sweep_dir, swept_keys(config.hydra.overrides.task, params.keys()), definition)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if _previewing(config):
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = sweep_jobs(sweep_dir)
        swept = read_swept_keys(sweep_dir)
        lines, failed = [], []
        for job in jobs:
            summary = read_summary(job) or {}
            status = summary.get("status", "no summary.json")
            label = job_label(summary.get("overrides") or [], swept) or "(no overrides)"
            accuracy = summary.get("final_test_acc")
            result = f"{100 * accuracy:.2f}%" if accuracy is not None else "-"
            lines.append(f"  {job.relative_to(sweep_dir)}  {label}  {status}  {result}")
            if status not in ("completed", "pruned"):  # a pruned trial ended as its search asked
                error = summary.get("error") or "the job ended without recording a result"
                failed.append(f"  {job}: {status}: {error}")
        print(f"sweep {sweep_dir}: {len(jobs)} jobs (folder, label, status, final test accuracy)", *lines,
              f"compare them: python -m lenet.compare {shlex.quote(str(sweep_dir))}", sep="\n")  # fmt: skip
        if failed:
            print(f"error: {len(failed)} of {len(jobs)} jobs did not complete:", *failed, sep="\n", file=sys.stderr)
            raise SystemExit(1)
