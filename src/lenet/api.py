"""lenet from Python (a notebook, a script): ``train`` and ``sweep`` run exactly what the command line runs.

    from lenet import train, sweep

    run = train(["optimizer=adam", "trainer.epochs=2"])   # python train.py optimizer=adam trainer.epochs=2
    print(run.status, run.summary["final_test_acc"], run.run_dir)
    jobs = sweep(["pooling=avg,max", "seed=0,1,2"])       # python train.py -m pooling=avg,max seed=0,1,2

Each call runs the command line (``python -m lenet``) in a process of its own, in ``cwd`` (default: the
current folder), so the config is composed the same way, the run gets the same folder and writes the
same files, and nothing of one run stays in the caller's process. Its output is shown as it comes. An
error the run refuses with is raised as ``UserError`` carrying its line; a sweep whose jobs did not all
complete returns every job's outcome (status and error included) rather than raising. Ctrl-C (a
notebook's interrupt) stops the run at its next step, as it does on the command line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, TextIO

from hydra.experimental.callback import Callback

from lenet.core.errors import UserError


@dataclass
class RunResult:
    """How one run (or one job of a sweep) ended, as its folder records it."""

    run_dir: Path
    status: str
    summary: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl: one per epoch

    @property
    def error(self) -> Optional[str]:
        """Why it did not complete (None when it did)."""
        return self.summary.get("error")

    @classmethod
    def read(cls, run_dir: Path) -> "RunResult":
        """The result recorded in ``run_dir``."""
        from lenet.run.outcome import read_outcome
        from lenet.run.tracking import read_metrics

        outcome = read_outcome(run_dir)
        try:
            rows = read_metrics(Path(run_dir))
        except (OSError, ValueError):
            rows = []
        summary = dict(outcome.summary) or {"status": outcome.status.value, "error": outcome.error}
        return cls(Path(run_dir), outcome.status.value, summary, rows)


class Report(Callback):
    """A Hydra callback (``hydra.callbacks``) that appends each job's folder to a file: how the caller learns them."""

    def __init__(self, path: str):
        self.path = path

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        from omegaconf import OmegaConf

        run_dir = OmegaConf.select(config, "hydra.runtime.output_dir", default=None)  # the job's own folder
        line = json.dumps({"run_dir": str(run_dir), "overrides": list(job_return.overrides or [])})
        with open(self.path, "a") as f:  # one short write: jobs in other processes append whole lines
            f.write(line + "\n")


def train(overrides: Sequence[str] = (), cwd: Optional[str | Path] = None, echo: bool = True) -> RunResult:
    """Run ``python train.py OVERRIDES`` and return how it ended; a refused run raises UserError with its line."""
    results = _run(list(overrides), cwd, echo, multirun=False)
    if not results:
        raise UserError("the run ended without recording a result")
    return results[0]


def sweep(overrides: Sequence[str] = (), cwd: Optional[str | Path] = None, echo: bool = True) -> list[RunResult]:
    """Run ``python train.py -m OVERRIDES`` and return every job's result, in the order the sweep ran them."""
    return _run(list(overrides), cwd, echo, multirun=True)


def _run(overrides: list[str], cwd: Optional[str | Path], echo: bool, multirun: bool) -> list[RunResult]:
    cwd = Path(cwd) if cwd is not None else Path.cwd()
    with tempfile.TemporaryDirectory(prefix="lenet-api-") as tmp:
        report = Path(tmp) / "jobs.jsonl"
        command = [
            sys.executable,
            "-m",
            "lenet",
            *(["-m"] if multirun else []),
            *overrides,
            f"+hydra.callbacks.lenet_api={{_target_:lenet.api.Report,path:'{report}'}}",
        ]
        returncode, last_error = _stream(command, cwd, echo)
        jobs = [json.loads(line) for line in report.read_text().splitlines()] if report.is_file() else []
    results = [RunResult.read(_resolved(Path(job["run_dir"]), cwd)) for job in jobs]
    if returncode in (128 + signal.SIGINT, 128 + signal.SIGTERM):
        raise KeyboardInterrupt(last_error or "interrupted")
    if returncode != 0 and not (multirun and results):
        raise UserError(last_error.removeprefix("error: ") if last_error else f"the run exited with {returncode}")
    return results


def _resolved(path: Path, cwd: Path) -> Path:
    return path if path.is_absolute() else cwd / path


def _stream(command: list[str], cwd: Path, echo: bool) -> tuple[int, Optional[str]]:
    """Run ``command`` showing its output as it comes; its exit status and the last ``error:`` line it printed."""
    env = dict(os.environ)
    # a run starts a W&B service of its own: one the caller started (a notebook that used W&B) would outlive a
    # killed run and keep its W&B run held
    env.pop("WANDB_SERVICE", None)
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    errors: list[str] = []

    def pump(source: TextIO, sink: TextIO, keep: bool) -> None:
        for line in source:
            if keep and line.startswith("error: "):
                errors.append(line.strip())
            if echo:
                sink.write(line)
                sink.flush()

    pumps = [
        threading.Thread(target=pump, args=(process.stdout, sys.stdout, False), daemon=True),
        threading.Thread(target=pump, args=(process.stderr, sys.stderr, True), daemon=True),
    ]
    for thread in pumps:
        thread.start()
    try:
        returncode = process.wait()
    except KeyboardInterrupt:  # the caller's Ctrl-C: the run stops at its next step and records it
        process.send_signal(signal.SIGINT)
        returncode = process.wait()
    for thread in pumps:
        thread.join()
    return returncode, (errors[-1] if errors else None)
