"""Continuing a run or a sweep needs nothing retyped: the printed command works as printed."""

import shlex
import signal

import pytest
from conftest import (
    read_json,
    read_jsonl,
    run_in_process,
    run_train,
    start_train,
    wait_for_first_epoch,
    without_time,
)

ARGS = [
    "logger=none",
    "data=synthetic",
    "data.train_size=3000",
    "data.test_size=128",
    "trainer.batch_size=64",
    "device=cpu",
    "device.num_threads=1",
    "trainer.epochs=3",
    "optimizer=adam",
    "scheduler=cosine",
]


def interrupt(args, cwd, metrics):
    proc = start_train(*args, cwd=cwd)
    wait_for_first_epoch(metrics)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    return err.strip().splitlines()[-1]


@pytest.mark.slow
def test_the_printed_resume_command_continues_the_run_with_nothing_retyped(tmp_path):
    run_in_process(tmp_path, "full", *ARGS)  # the uninterrupted reference
    line = interrupt([*ARGS, "hydra.run.dir=part"], tmp_path, tmp_path / "part" / "metrics.jsonl")
    command = line.split("continue it with: ")[1]  # a whole command, as a stopped sweep prints its own
    assert command == f"python train.py trainer.resume=true hydra.run.dir={tmp_path / 'part'}"  # the run keeps the rest
    resumed = run_train(*shlex.split(command)[2:], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert without_time(read_jsonl(tmp_path / "part" / "metrics.jsonl")) == without_time(
        read_jsonl(tmp_path / "full" / "metrics.jsonl")
    )
    changed = run_train(*shlex.split(command)[2:], "optimizer.lr=0.5", "trainer.epochs=4", cwd=tmp_path)
    assert changed.returncode == 1 and changed.stderr.count("\n") == 1
    assert "it was made with optimizer.lr=0.001 (now 0.5), trainer.epochs=3 (now 4)" in changed.stderr


@pytest.mark.slow
def test_an_interrupted_sweep_prints_its_job_table_and_the_command_that_continues_it(tmp_path):
    args = ["-m", "seed=0,1", *ARGS, "hydra.sweep.dir=sweep"]
    proc = start_train(*args, cwd=tmp_path)
    wait_for_first_epoch(tmp_path / "sweep" / "0" / "metrics.jsonl")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err
    assert "sweep sweep stopped: 2 jobs (folder, label, status)" in out
    assert "  0  seed=0  interrupted" in out and "  1  seed=1  not started" in out
    command = out.strip().splitlines()[-1].split("continue it with: ")[1]
    assert err.strip().splitlines()[-1].endswith(f"continue the sweep with: {command}")  # the job says so too
    python, script, *rest = shlex.split(command)
    assert (python, script) == ("python", "train.py")
    resumed = run_train(*rest, cwd=tmp_path, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert [read_json(tmp_path / "sweep" / str(n) / "summary.json")["status"] for n in (0, 1)] == ["completed"] * 2
    assert read_json(tmp_path / "sweep" / "0" / "summary.json")["resumed_from_epoch"] >= 1
