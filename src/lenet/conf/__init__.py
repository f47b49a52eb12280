"""The config groups, Hydra's primary config module lenet.conf: YAML files, no code."""
