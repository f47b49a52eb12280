"""Optional parts that need an extra installed: asked for without it, they say in one line what to install."""

from __future__ import annotations

import importlib.util
import sys

# (what the command line asks for, the module it needs, the extra that brings it)
NEEDS = (
    (("hydra/launcher=local", "hydra/launcher=slurm"), "hydra_plugins.hydra_submitit_launcher", "launchers"),
    (("hparams_search=optuna",), "optuna", "launchers"),
)  # logger=tensorboard says so itself when it starts (lenet.run.loggers.TensorBoardLogger)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def check_extras(argv: list[str]) -> None:
    """Exit with one line when the command asks for a part whose extra is not installed."""
    for asked, module, extra in NEEDS:
        wanted = [a for a in argv[1:] if a.startswith(asked)]
        if wanted and not _installed(module):
            print(
                f"error: {wanted[0]} needs {module.split('.')[-1]}, which is not installed: "
                f"pip install -e '.[{extra}]' (or pip install 'lenet[{extra}]')",
                file=sys.stderr,
            )
            raise SystemExit(1)
