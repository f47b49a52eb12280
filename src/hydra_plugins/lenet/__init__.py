"""lenet's Hydra plugins: launchers (preview, processes, submitit with per-job failures) and an Optuna sweeper."""
