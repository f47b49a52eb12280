"""A sweep's verdict, from each job's outcome as its launcher returned it: always printed, always right.

One line per job (folder, label, status, final test accuracy) and the command to compare them; then,
when a job did not end as asked, one line each on stderr and exit status 1.
"""

import shlex
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from lenet.run.outcome import Outcome, outcome_of
from lenet.run.sweep_dir import job_label, read_swept_keys


def _where(outcome: Outcome, sweep_dir: Path) -> str:
    try:
        return str(outcome.run_dir.resolve().relative_to(sweep_dir.resolve()))
    except ValueError:
        return str(outcome.run_dir)


def report(sweep_dir: Path, returns: Sequence[Any], extra_failures: Optional[Sequence[str]] = None) -> None:
    """Print the verdict of the jobs whose ``JobReturn``s are ``returns``; exit 1 unless every job ended as asked.

    ``extra_failures`` are failures that reached no job (a trial whose config did not compose), one line each.
    """
    swept = read_swept_keys(sweep_dir)
    lines, failed = [], []
    for ret in returns:
        outcome = outcome_of(ret)
        label = job_label(list(ret.overrides or []), swept) or "(no overrides)"
        accuracy = outcome.value("final_test_acc")
        result = f"{100 * accuracy:.2f}%" if accuracy is not None else "-"
        lines.append(f"  {_where(outcome, sweep_dir)}  {label}  {outcome.status.value}  {result}")
        if not outcome.status.ok:
            failed.append(f"  {outcome.run_dir}: {outcome.status.value}: {outcome.error}")
    failed += [f"  {line}" for line in extra_failures or []]
    print(
        f"sweep {sweep_dir}: {len(returns)} jobs (folder, label, status, final test accuracy)",
        *lines,
        f"compare them: python -m lenet.compare {shlex.quote(str(sweep_dir))}",
        sep="\n",
    )
    if failed:
        total = len(returns) + len(extra_failures or [])
        print(f"error: {len(failed)} of {total} jobs did not complete:", *failed, sep="\n", file=sys.stderr)
        raise SystemExit(1)


def interrupted(sweep_dir: Path, assigned: Sequence[Sequence[str]]) -> None:
    """The job table of a sweep a signal stopped, from what each job recorded, and the command that continues it."""
    from lenet.run.outcome import read_outcome
    from lenet.run.sweep_dir import read_sweep_record, split_override

    swept = read_swept_keys(sweep_dir)
    lines = []
    for overrides in assigned:
        subdir = dict(split_override(o) for o in overrides).get("hydra.sweep.subdir", "").strip("'")
        outcome = read_outcome(sweep_dir / subdir) if (sweep_dir / subdir).is_dir() else None
        status = outcome.status.value if outcome and outcome.summary else "not started"
        label = job_label([o for o in overrides if not o.startswith("hydra.")], swept) or "(no overrides)"
        lines.append(f"  {subdir}  {label}  {status}")
    print(f"sweep {sweep_dir} stopped: {len(assigned)} jobs (folder, label, status)", *lines, sep="\n")
    record = read_sweep_record(sweep_dir)
    if record is not None and record.command:
        print(f"continue it with: {record.command}")
