"""The command line: ``python train.py OVERRIDES`` (or ``python -m lenet OVERRIDES``), composed from ``lenet/conf``.

Signals are recorded from the moment this module is imported, before anything heavy: a Ctrl-C or SIGTERM
during start-up stops the run cleanly. The configs ship inside the package, so the same command works from
any folder and with any install (``lenet.api`` runs it for Python callers).
"""

import sys

from lenet.run import signals

signals.install()  # first: a Ctrl-C or SIGTERM from here on stops the run cleanly, never lost

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from lenet.run.config import register_configs  # noqa: E402
from lenet.run.extras import check_extras  # noqa: E402
from lenet.run.hydra_errors import shorten_hydra_errors  # noqa: E402
from lenet.run.resuming import with_own_overrides  # noqa: E402


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> object:
    """Train and evaluate one variant; its outcome (lenet's sweepers read it: lenet.run.outcome)."""
    from lenet.run.entry import run_from_hydra  # imports torch: not needed for --help, --cfg or config errors

    return run_from_hydra(cfg)


def run() -> None:
    """Run the command line in ``sys.argv``: one run, or a sweep with ``-m``."""
    register_configs()
    shorten_hydra_errors()
    check_extras(sys.argv)  # hydra/launcher=slurm, hparams_search=optuna, ... without their extra: one line
    sys.argv = with_own_overrides(sys.argv)  # trainer.resume=true hydra.run.dir=DIR: DIR's own overrides first
    try:
        main()
    except KeyboardInterrupt:  # a second Ctrl-C before a job could record the first
        print("error: interrupted by SIGINT", file=sys.stderr)
        raise SystemExit(130) from None
