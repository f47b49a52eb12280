"""Weights & Biases in a process of its own, driven by ``lenet.tracking`` (WandbProcess, WandbRun).

Why a process: importing W&B takes ~0.55 s of one core (measured on a 2-core CPU). Started before
torch is imported, this process imports W&B on the other core while the training process imports
torch, so W&B no longer delays the first training step.

Protocol: one JSON command per line on stdin; ``init`` and ``finish`` answer with one JSON line on
the original stdout (W&B's own output goes to stderr). When stdin closes with a run still open (the
training process died), the run is finished as failed. Only the standard library and W&B are
imported here: this file must not pull in torch.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from typing import Any

# `init` answers this when online mode has no credentials; the client turns it into a UserError
NO_CREDENTIALS = "no-credentials"


def main() -> None:
    """Serve commands from stdin until it closes."""
    # Signals meant for the job reach every process of it (a terminal's Ctrl-C, SLURM's SIGTERM or the
    # SIGUSR2 that submitit asks for before a time limit): the training process stops at a step boundary
    # and finishes the run through us, so we outlive them and exit when its pipe closes.
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2"):
        if hasattr(signal, name):  # not all exist on every platform
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    import wandb

    with contextlib.suppress(ImportError):  # wandb.init imports it on every call (wandb 0.31): do it now
        import wandb.sdk.launch.inputs.internal  # noqa: F401
    with contextlib.suppress(Exception):  # start W&B's service now; wandb.init retries and reports failures
        wandb.setup()

    def answer(**fields: Any) -> None:
        answers.write(json.dumps(fields) + "\n")

    run = None
    for line in sys.stdin:
        command = json.loads(line)
        op = command.pop("op")
        try:
            if op == "init":
                run = _init(wandb, **command)
                answer(ok=True)
            elif op == "log":
                run.log(command["row"], step=command["step"])
            elif op == "artifact":
                artifact = wandb.Artifact(command["name"], type="model")
                artifact.add_file(command["path"])
                run.log_artifact(artifact)
            elif op == "finish":
                run, finishing = None, run
                _finish(finishing, command["summary"], command["exit_code"])
                answer(ok=True)
            else:
                raise ValueError(f"unknown command {op!r}")
        except _NoCredentials:
            answer(ok=False, error=NO_CREDENTIALS)
        except Exception as e:  # the training goes on; init and finish report the error back
            if op in ("init", "finish"):
                answer(ok=False, error=f"{type(e).__name__}: {e}")
            else:
                print(f"warning: W&B {op} failed: {type(e).__name__}: {e}", file=sys.stderr)
    if run is not None:
        run.finish(exit_code=1)
    wandb.teardown()  # W&B's exit hook: waits for its service to write or upload everything
    sys.stderr.flush()
    os._exit(0)  # the interpreter's own teardown of W&B's modules took ~0.15 s and does nothing for the run


class _NoCredentials(Exception):
    pass


def _init(wandb: Any, mode: str, **kwargs: Any) -> Any:
    os.environ["WANDB_MODE"] = mode  # W&B's settings read it; this process serves one training process
    if mode == "online" and not wandb.login(prompt=False, verify=False):
        raise _NoCredentials
    # a previous job of a sweep in the training process must never leak into this run
    return wandb.init(
        mode=mode, reinit="finish_previous", settings=wandb.Settings(console="off", silent=True), **kwargs
    )


def _finish(run: Any, summary: dict[str, Any], exit_code: int) -> None:
    try:
        run.summary.update(summary)
    finally:
        run.finish(exit_code=exit_code)


if __name__ == "__main__":
    main()
