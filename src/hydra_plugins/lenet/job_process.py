"""One job of a sweep in a process of its own: ``python -m hydra_plugins.lenet.job_process JOB.pkl RESULT.pkl``.

Started by the ``processes`` launcher (``hydra_plugins/lenet/processes.py``). ``JOB.pkl``
holds what Hydra needs to run the job (as submitit ships it); the job's ``JobReturn`` is written to
``RESULT.pkl``. A process that dies leaves no result, and the launcher records the job as failed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence


def execute_job(
    idx: int,
    overrides: Sequence[str],
    hydra_context: Any,
    config: Any,
    task_function: Any,
    singleton_state: Any,
    context: dict,
) -> Any:
    """Compose job ``idx``'s config from the sweep's and run it in the folder it claimed, in ``context``."""
    from hydra.core.singleton import Singleton
    from hydra.core.utils import setup_globals

    from hydra_plugins.lenet.sweeping import composed_job, run_claimed
    from lenet.run.context import set_job_context

    set_job_context(**context)
    setup_globals()
    Singleton.set_state(singleton_state)
    return run_claimed(hydra_context, task_function, composed_job(hydra_context, config, overrides, idx))


def main(job_file: str, result_file: str) -> None:
    """Run the pickled job and pickle its JobReturn; the result file appears whole or not at all."""
    import cloudpickle

    from lenet.run import signals

    signals.install()
    with open(job_file, "rb") as f:
        job = cloudpickle.load(f)
    result = execute_job(**job)
    with open(Path(result_file).with_suffix(".tmp"), "wb") as f:
        cloudpickle.dump(result, f)
    Path(result_file).with_suffix(".tmp").replace(result_file)


if __name__ == "__main__":
    main(*sys.argv[1:3])
