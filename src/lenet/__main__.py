"""``python -m lenet OVERRIDES``: the same command line as ``python train.py OVERRIDES``."""

from lenet.cli import run

run()
