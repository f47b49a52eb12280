"""lenet: a Hydra-configured research sweep harness for LeNet-5 in PyTorch."""

__version__ = "0.1.0"
