"""``hydra/launcher=fused``: the jobs of a sweep that differ only in their seed and optimizer settings, trained together.

Jobs that share everything else (``lenet.run.group.fused_key``, checked on what the one assembler builds)
are trained together, up to ``group_size`` at a time, in this process (``lenet.run.group``); every other job
runs as lenet's basic launcher runs it. Each job claims its own folder and is set up by Hydra's own
``run_job`` (its ``.hydra/``, its config, its working dir), then lives the life any run lives, so it writes
exactly what a run alone writes (metrics.jsonl, summary.json, checkpoint, weights, train.log, its loggers'
runs), and its callbacks run as they would alone. A job whose loss diverges fails alone; a signal stops
the group with every job interrupted, and resuming continues each exactly.
"""

import logging
import signal
import sys
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.lenet.sweeping import (
    SetUpLauncher,
    claim_job_folder,
    composed_job,
    job_dir,
    refused_job,
    run_claimed,
)
from lenet.core.errors import Interrupted, UserError

log = logging.getLogger(__name__)


@dataclass
class FusedLauncherConf:
    _target_: str = "hydra_plugins.lenet.fused.FusedLauncher"
    group_size: int = 64  # the most jobs trained as one program; a larger group is split (memory grows with it)
    mode: str = "auto"  # vmapped (one program for all: the default on a GPU) | threads (each on its own thread) | auto


ConfigStore.instance().store(group="hydra/launcher", name="fused", node=FusedLauncherConf, provider="lenet")


def groups_of(keys: Sequence[Optional[str]], group_size: int) -> List[List[int]]:
    """The jobs (by position) trained together: those of one key, ``group_size`` at a time; a job without a key
    (or alone with its key) is a group of one."""
    by_key: Dict[str, List[int]] = defaultdict(list)
    groups: List[List[int]] = []
    for i, key in enumerate(keys):
        if key is None:
            groups.append([i])
        else:
            by_key[key].append(i)
    for members in by_key.values():
        groups += [members[s : s + group_size] for s in range(0, len(members), group_size)]
    return sorted(groups)


def group_key(config: DictConfig) -> Optional[str]:
    """The key of a job's group (None: it trains alone), from what the one assembler builds for it."""
    from lenet.run.group import fused_key
    from lenet.run.preflight import preflight, task_config
    from lenet.training.fused import draws_random_numbers

    try:
        cfg, assembly = preflight(config)
    except Exception:  # the job says what is wrong when it runs alone
        return None
    import torch

    sample = torch.zeros(2, len(cfg.data.mean), cfg.data.size, cfg.data.size)
    if draws_random_numbers(assembly.run.model, sample):
        return None
    return fused_key(OmegaConf.to_container(task_config(config), resolve=True, enum_to_str=True))


def _prepare(cfg: DictConfig) -> Any:
    """The task Hydra runs for a member, in the member's own job context: what its life needs."""
    from lenet.run.config import to_typed
    from lenet.run.group import Member
    from lenet.run.job import JobInfo

    return Member(to_typed(cfg), JobInfo.from_hydra(), OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))


class FusedLauncher(SetUpLauncher):
    """Trains each group of fusable jobs together, the others one after another."""

    def __init__(self, group_size: int = 64, mode: str = "auto") -> None:
        from lenet.core.errors import ConfigError
        from lenet.run.group import MODES

        if group_size < 1:
            raise ConfigError(f"hydra.launcher.group_size must be >= 1, got {group_size}")
        if mode not in MODES:
            raise ConfigError(f"hydra.launcher.mode must be one of {', '.join(MODES)}, got {mode!r}")
        super().__init__()
        self.group_size, self.mode = group_size, mode

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Run every job: together where they can share a program, alone otherwise."""
        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        configs = [
            composed_job(self.hydra_context, self.config, o, initial_job_idx + i) for i, o in enumerate(job_overrides)
        ]
        groups = groups_of([group_key(c) for c in configs], self.group_size)
        log.info(
            f"Launching {len(configs)} jobs as {len(groups)} programs: "
            + "; ".join("#" + ",#".join(str(initial_job_idx + i) for i in g) for g in groups)
        )
        returns: Dict[int, JobReturn] = {}
        for group in groups:
            if len(group) == 1:
                returns[group[0]] = run_claimed(self.hydra_context, self.task_function, configs[group[0]])
            else:
                returns.update(zip(group, self._fused([configs[i] for i in group])))
        return [returns[i] for i in range(len(configs))]

    def _fused(self, configs: List[DictConfig]) -> List[JobReturn]:
        """Claim every job's folder, set each up through Hydra's run_job, train them together, return their outcomes."""
        from lenet.run.folders import FolderError, hold, release

        returns: Dict[int, JobReturn] = {}
        held = []
        for i, config in enumerate(configs):
            folder = job_dir(config)
            log.info(f"\t#{config.hydra.job.num} : {' '.join(filter_overrides(config.hydra.overrides.task))}")
            try:
                hold(folder, "hydra.sweep.subdir")
                held.append(i)
                claim_job_folder(config)
            except FolderError as e:
                release(folder)
                held.remove(i)
                returns[i] = refused_job(list(config.hydra.overrides.task), folder, e)
        try:
            prepared = {i: self._set_up(configs[i]) for i in held}
            members = {i: ret for i, ret in prepared.items() if ret.status == JobStatus.COMPLETED}
            returns.update({i: ret for i, ret in prepared.items() if i not in members})
            if members:
                returns.update(self._train(members))
        finally:
            for i in held:
                release(job_dir(configs[i]))
        return [returns[i] for i in range(len(configs))]

    def _set_up(self, config: DictConfig) -> JobReturn:
        """Hydra's own job set-up for a member (its folder, .hydra/ and job context), returning what its life needs."""
        ret = run_job(
            hydra_context=self.hydra_context,
            task_function=_prepare,
            config=config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)  # not the last job's train.log
        return ret

    def _train(self, prepared: Dict[int, JobReturn]) -> Dict[int, JobReturn]:
        """Train the prepared members together; each one's JobReturn with its outcome."""
        from lenet.run.group import run_group
        from lenet.run.outcome import JobFailed, Outcome, Status

        order = list(prepared)
        members = [prepared[i].return_value for i in order]
        loggers = [_member_logger(m) for m in members]
        try:
            results = run_group(members, self.mode, loggers)
        finally:
            for logger in loggers:
                for handler in logger.logger.handlers:
                    handler.close()
        stopped = next((r for r in results if isinstance(r, (Interrupted, KeyboardInterrupt))), None)
        if stopped is not None:
            name = stopped.signal_name if isinstance(stopped, Interrupted) else "SIGINT"
            print(
                f"error: interrupted by {name}: the group's jobs stopped and recorded it; "
                "continue them with the same command and trainer.resume=true",
                file=sys.stderr,
            )
            raise SystemExit(128 + signal.Signals[name].value)
        returns = {}
        for i, member, logger, result in zip(order, members, loggers, results):
            ret = prepared[i]
            if isinstance(result, Outcome) and result.status.ok:
                ret.status, ret.return_value = JobStatus.COMPLETED, result
            else:
                if isinstance(result, BaseException) and not isinstance(result, UserError):
                    logger.error("job failed", exc_info=result)  # a bug: its traceback in the job's train.log
                else:
                    logger.error(f"job failed: {result}")
                outcome = (
                    result if isinstance(result, Outcome) else Outcome(Status.failed, member.job.run_dir, str(result))
                )
                ret.status, ret.return_value = JobStatus.FAILED, JobFailed(outcome)
            returns[i] = ret
        return returns


def _member_logger(member: Any) -> logging.LoggerAdapter:
    """A member's log: its own train.log, and the console with its label in front."""
    from lenet.run.files import check_writable_name

    logger = logging.getLogger(f"lenet.fused.{member.job.run_dir}")
    check_writable_name(member.job.run_dir / "train.log")  # a log appended to, never through a link
    handler = logging.FileHandler(member.job.run_dir / "train.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logger.handlers = [handler]
    label = member.job.label or member.job.run_dir.name
    return _Labelled(logger, label)


class _Labelled(logging.LoggerAdapter):
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[{self.extra}] {msg}", kwargs
