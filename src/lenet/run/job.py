"""A job as Hydra runs it: its folder, where it was started, its overrides, its place in a sweep."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from lenet.run.identity import key_of
from lenet.run.sweep_dir import job_label, read_swept_keys


@dataclass
class JobInfo:
    """What Hydra knows about this job that the config does not hold."""

    run_dir: Path
    cwd: Path  # where the user started; relative paths are resolved against it
    overrides: list[str] = field(default_factory=list)
    multirun: bool = False
    sweep_dir: Optional[Path] = None
    label: str = ""  # what sets this job apart in its sweep, e.g. pooling=avg,seed=1
    choices: dict[str, Optional[str]] = field(default_factory=dict)  # the option Hydra chose in each group

    @classmethod
    def from_hydra(cls) -> "JobInfo":
        """Read the running job's Hydra config."""
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        multirun = hc.mode == RunMode.MULTIRUN
        return cls(
            run_dir=Path(hc.runtime.output_dir),
            cwd=Path(hc.runtime.cwd),
            overrides=list(hc.overrides.task),
            multirun=multirun,
            sweep_dir=Path(hc.sweep.dir).resolve() if multirun else None,
            label=job_label(list(hc.overrides.task), read_swept_keys(Path(hc.sweep.dir)) if multirun else None),
            choices=dict(hc.runtime.choices),
        )

    def label_of(self, group: str, node: dict[str, Any]) -> str:
        """What built ``group``'s component: the option chosen, or the ``_target_`` when the command line set it."""
        choice = self.choices.get(group)
        target_overridden = any(key_of(o) == f"{group}._target_" for o in self.overrides)
        return choice if choice and not target_overridden else str(node.get("_target_"))

    @property
    def sweep_name(self) -> Optional[str]:
        """The sweep's dir (relative to where it was started), shared by all jobs of a sweep."""
        if self.sweep_dir is None:
            return None
        try:
            return str(self.sweep_dir.relative_to(self.cwd.resolve()))
        except ValueError:
            return str(self.sweep_dir)
