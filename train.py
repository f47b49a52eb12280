"""Train LeNet-5 as the composed Hydra config says.

python train.py                               # LeNet-5 on MNIST, 10 epochs
python train.py optimizer=adam pooling=avg    # choose options of the config groups in conf/
python train.py -m pooling=avg,max seed=0,1,2 # a sweep: one job per combination
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

register_configs()
shorten_hydra_errors()
check_extras(sys.argv)  # hydra/launcher=slurm, hparams_search=optuna, ... without their extra: one line
sys.argv = with_own_overrides(sys.argv)  # trainer.resume=true hydra.run.dir=DIR: DIR's own overrides first


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> object:
    """Train and evaluate one variant; its outcome (lenet's sweepers read it: lenet.run.outcome)."""
    from lenet.run.entry import run_from_hydra  # imports torch: not needed for --help, --cfg or config errors

    return run_from_hydra(cfg)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # a second Ctrl-C before a job could record the first
        print("error: interrupted by SIGINT", file=sys.stderr)
        raise SystemExit(130) from None
