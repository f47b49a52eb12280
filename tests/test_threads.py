"""The default thread count: the job's share of the cores, tried against fewer, and kept on resume."""

import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import interrupt_after_first_checkpoint, run_in_process

import lenet.run.threads as threads
from lenet.core.errors import Interrupted

CPU = torch.device("cpu")


def test_candidates_halve_down_to_one():
    assert threads.candidates(8) == [8, 4, 2, 1] and threads.candidates(6) == [6, 3, 1] and threads.candidates(1) == [1]


def test_slurm_cpus_per_task_caps_the_cores(monkeypatch):
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    cores = threads.available_cores()
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert threads.available_cores() == 1 and threads.thread_budget(1) == 1
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", str(cores + 10))
    assert threads.available_cores() == cores


def fake_step(seconds_for):
    """A probe step that takes ``seconds_for(thread count)``, as a loaded or an idle machine would."""
    return lambda: lambda: time.sleep(seconds_for(torch.get_num_threads()))


@pytest.mark.parametrize("loaded", [True, False], ids=["loaded", "idle"])
def test_the_probe_picks_the_fastest_thread_count_and_restores_the_setting(monkeypatch, loaded):
    # loaded: every extra thread waits for a descheduled one; idle: more threads share the work
    seconds_for = (lambda n: 0.001 * n) if loaded else (lambda n: 0.004 / n)
    monkeypatch.setattr(threads, "_probe_step", fake_step(seconds_for))
    before = torch.get_num_threads()
    chosen, medians = threads.probe_num_threads(4)
    assert chosen == (1 if loaded else 4) and sorted(medians) == [1, 2, 4]
    assert torch.get_num_threads() == before


def test_the_default_is_the_jobs_share_of_the_cores_and_only_probe_probes(monkeypatch):
    monkeypatch.setattr(threads, "_probe_step", lambda: pytest.fail("the probe ran"))
    assert threads.choose_num_threads(3, CPU, parallel_jobs=1) == (3, {})
    assert threads.choose_num_threads(None, CPU, parallel_jobs=1) == (threads.thread_budget(1), {})  # whatever the load
    assert threads.choose_num_threads(None, CPU, parallel_jobs=64) == (1, {})
    assert threads.choose_num_threads("probe", torch.device("cuda"), parallel_jobs=1)[1] == {}
    monkeypatch.setattr(threads, "probe_num_threads", lambda budget: (1, {1: 0.001, 2: 0.002}))
    assert threads.choose_num_threads("probe", CPU, parallel_jobs=1) == (1, {1: 0.001, 2: 0.002})


def test_the_real_probe_runs_a_few_steps_and_leaves_the_rng_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    chosen, medians = threads.probe_num_threads(2)
    assert chosen in (1, 2) and all(0 < s < 1 for s in medians.values())
    assert torch.equal(torch.rand(3), expected)


def test_a_resumed_run_keeps_the_thread_count_it_started_with(tmp_path, monkeypatch):
    overrides = ["device.num_threads=probe", "data.train_size=256", "trainer.epochs=2"]
    monkeypatch.setattr(threads, "probe_num_threads", lambda budget: (1, {1: 0.001}))
    interrupt_after_first_checkpoint(monkeypatch)
    with pytest.raises(Interrupted):
        run_in_process(tmp_path, "run", *overrides)
    monkeypatch.undo()
    monkeypatch.setattr(threads, "probe_num_threads", lambda budget: pytest.fail("a resumed run probed again"))
    summary, _ = run_in_process(tmp_path, "run", *overrides, "trainer.resume=true")
    assert summary["status"] == "completed" and summary["resumed_from_epoch"] == 1 and summary["num_threads"] == 1


@pytest.mark.slow
def test_the_same_command_gives_the_same_rows_on_a_quiet_and_on_a_busy_machine(tmp_path):
    from conftest import read_jsonl, run_train, without_time

    args = ["logger=none", "data=synthetic", "data.train_size=2000", "trainer.epochs=2", "device=cpu"]
    quiet = run_train(*args, "hydra.run.dir=quiet", cwd=tmp_path)
    busy = [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(2)]  # every core taken
    try:
        loaded = run_train(*args, "hydra.run.dir=busy", cwd=tmp_path)
    finally:
        for process in busy:
            process.kill()
    assert quiet.returncode == loaded.returncode == 0, quiet.stderr + loaded.stderr
    assert without_time(read_jsonl(tmp_path / "quiet" / "metrics.jsonl")) == without_time(
        read_jsonl(tmp_path / "busy" / "metrics.jsonl")
    )


def test_a_busy_machine_is_said_in_one_line_only_where_the_default_count_cannot_have_its_cores(monkeypatch):
    from lenet.run import threads

    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    monkeypatch.setattr(threads, "running_elsewhere", lambda: 4.0)
    line = threads.busy_machine(2)
    assert "4 other tasks running on 2 cores" in line and "device.num_threads=1" in line and "probe" in line
    assert "\n" not in line
    assert threads.busy_machine(1) is None  # one thread: nothing fewer to choose
    monkeypatch.setattr(threads, "running_elsewhere", lambda: 0.0)
    assert threads.busy_machine(2) is None  # a quiet machine


def test_the_busy_line_reads_what_runs_now_not_a_run_that_just_ended(monkeypatch):
    from lenet.run import threads

    if not Path("/proc/stat").exists():
        pytest.skip("needs Linux's /proc/stat")
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    # the one-minute average would still hold a run that ended a moment ago: on Linux it is never read
    monkeypatch.setattr(threads.os, "getloadavg", lambda: pytest.fail("the one-minute load average was read"))
    busy = [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(2)]  # every core taken now
    try:
        time.sleep(0.2)
        assert threads.running_elsewhere() >= 2
        assert threads.busy_machine(2) is not None
    finally:
        for process in busy:
            process.kill()
            process.wait()
