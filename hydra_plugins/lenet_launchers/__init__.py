"""Hydra launchers of lenet: ``hydra/launcher=preview`` (list a sweep's jobs) and ``=processes`` (parallel jobs)."""
