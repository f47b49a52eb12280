"""A Hydra launcher that lists a sweep's jobs instead of running them: ``hydra/launcher=preview``."""
