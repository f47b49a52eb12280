"""lenet: a Hydra-configured research sweep harness for LeNet-5 in PyTorch.

``from lenet import train, sweep`` runs the command line from Python (``lenet.api``).
"""

from lenet.api import RunResult, sweep, train

__version__ = "0.1.0"
__all__ = ["RunResult", "sweep", "train"]
