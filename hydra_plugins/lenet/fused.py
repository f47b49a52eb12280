"""``hydra/launcher=fused``: the jobs of a sweep that differ only in their seed and optimizer settings, as one program.

Jobs that share everything else (model, data, batch size, epochs, schedule: ``lenet.run.fused_life.fused_key``)
are trained together, up to ``group_size`` at a time, in this process (``lenet.train.fused``); every other job
runs as lenet's basic launcher runs it. Each job still claims and writes its own folder, exactly as a run alone
writes it (``.hydra/``, metrics.jsonl, summary.json, checkpoint, weights, train.log, its loggers' runs), so
compare, evaluate, resume and sweep resume work as for any sweep. A job whose loss diverges fails alone; a
signal stops the group with every job interrupted, and resuming continues each exactly.
"""

import logging
import signal
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.lenet.sweeping import SetUpLauncher, composed_job, job_dir, refused_job, run_claimed
from lenet.core.errors import Interrupted

log = logging.getLogger(__name__)


@dataclass
class FusedLauncherConf:
    _target_: str = "hydra_plugins.lenet.fused.FusedLauncher"
    group_size: int = 64  # the most jobs trained as one program; a larger group is split (memory grows with it)


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


class FusedLauncher(SetUpLauncher):
    """Trains each group of fusable jobs as one program, the others one after another."""

    def __init__(self, group_size: int = 64) -> None:
        from lenet.core.errors import ConfigError

        if group_size < 1:
            raise ConfigError(f"hydra.launcher.group_size must be >= 1, got {group_size}")
        super().__init__()
        self.group_size = group_size

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Run every job: fused where they can share a program, alone otherwise."""
        from lenet.run.fused_life import fused_key
        from lenet.run.preflight import preflight

        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        configs = [
            composed_job(self.hydra_context, self.config, o, initial_job_idx + i) for i, o in enumerate(job_overrides)
        ]
        keys = []
        for config in configs:
            try:
                preflight(config)
                keys.append(fused_key(OmegaConf.to_container(_task(config), resolve=True, enum_to_str=True)))
            except Exception:  # the job says what is wrong when it runs alone
                keys.append(None)
        groups = groups_of(keys, self.group_size)
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
        """Claim every job's folder, write its .hydra/, train them together, and return their outcomes."""
        from hydra_plugins.lenet.sweeping import claim_job_folder
        from lenet.run.folders import FolderError, hold, release
        from lenet.run.fused_life import run_group
        from lenet.run.outcome import JobFailed, Outcome, Status
        from lenet.run.preflight import preflight

        claimed, refused = [], {}
        for i, config in enumerate(configs):
            folder = job_dir(config)
            log.info(f"\t#{config.hydra.job.num} : {' '.join(filter_overrides(config.hydra.overrides.task))}")
            try:
                hold(folder, "hydra.sweep.subdir")
                claim_job_folder(config)
                claimed.append(i)
            except FolderError as e:
                release(folder)
                refused[i] = refused_job(list(config.hydra.overrides.task), folder, e)
        members = [self._member(configs[i], preflight(configs[i])) for i in claimed]
        try:
            results = run_group(members) if len(members) > 1 else None
        finally:
            for i in claimed:
                release(job_dir(configs[i]))
        if results is None:  # one job left: it runs alone
            return [
                refused.get(i) or run_claimed(self.hydra_context, self.task_function, configs[i])
                for i in range(len(configs))
            ]
        stopped = next((r for r in results if isinstance(r, Interrupted)), None)
        if stopped is not None:
            print(
                f"error: interrupted by {stopped.signal_name}: the group's jobs stopped and recorded it; "
                "continue them with the same command and trainer.resume=true",
                file=sys.stderr,
            )
            raise SystemExit(128 + signal.Signals[stopped.signal_name].value)
        returns = dict(refused)
        for i, member, result in zip(claimed, members, results):
            ret = JobReturn(overrides=member.job.overrides, working_dir=str(member.job.run_dir), task_name="train")
            ret.hydra_cfg = OmegaConf.create({"hydra": OmegaConf.to_container(configs[i].hydra, resolve=False)})
            if isinstance(result, Outcome) and result.status.ok:
                ret.status, ret.return_value = JobStatus.COMPLETED, result
            else:
                log.error(f"[{member.job.label}] job failed: {result}")
                outcome = Outcome(Status.failed, member.job.run_dir, str(result))
                ret.status, ret.return_value = JobStatus.FAILED, JobFailed(outcome)
            returns[i] = ret
        return [returns[i] for i in range(len(configs))]

    def _member(self, config: DictConfig, typed: Any) -> Any:
        """A job of the group: its folder's .hydra/ written as Hydra writes it, and where it stands in its sweep."""
        from lenet.run.fused_life import Member
        from lenet.run.job import JobInfo
        from lenet.run.sweep_dir import job_label, read_swept_keys

        folder = job_dir(config)
        task = _task(config)
        hydra_dir = folder / ".hydra"
        hydra_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(task, hydra_dir / "config.yaml")
        OmegaConf.save(
            OmegaConf.create({"hydra": OmegaConf.to_container(config.hydra, resolve=False)}), hydra_dir / "hydra.yaml"
        )
        overrides = list(config.hydra.overrides.task)
        OmegaConf.save(OmegaConf.create(overrides), hydra_dir / "overrides.yaml")
        sweep_dir = Path(str(config.hydra.sweep.dir))
        job = JobInfo(
            run_dir=folder.resolve(),
            cwd=Path(str(config.hydra.runtime.cwd)),
            overrides=overrides,
            multirun=True,
            sweep_dir=sweep_dir.resolve(),
            label=job_label(overrides, read_swept_keys(sweep_dir)),
            choices=dict(config.hydra.runtime.choices),
        )
        return Member(typed, job, OmegaConf.to_container(task, resolve=True, enum_to_str=True))


def _task(config: DictConfig) -> DictConfig:
    from lenet.run.preflight import task_config

    return task_config(config)
