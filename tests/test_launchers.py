"""The same sweeps through Hydra's launcher and sweeper plugins (the `launchers` extra)."""

import csv
import os
import signal
import subprocess
import sys

import pytest
import yaml

from lenet.tools.compare import compare
from lenet.run.threads import available_cores

from conftest import REPO, read_json, read_jsonl, run_train, wait_for_first_epoch
from wandb_records import OfflineRun

SYNTHETIC = ["logger=none", "data=synthetic", "data.train_size=256", "data.test_size=128", "trainer.batch_size=64",
             "device=cpu", "trainer.epochs=1"]  # fmt: skip


def job_summaries(sweep):
    return [read_json(sweep / str(n) / "summary.json") for n in range(len(list(sweep.glob("*/summary.json"))))]


@pytest.mark.slow
def test_joblib_runs_jobs_in_parallel_processes_with_one_thread_each(tmp_path):
    result = run_train("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "pooling=avg,max", *SYNTHETIC,
                       "logger=wandb", "hydra.sweep.dir=sweep", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    runs = [OfflineRun(tmp_path / "sweep" / str(n)) for n in range(2)]  # W&B from worker processes
    assert [r.run.display_name for r in runs] == ["pooling=avg", "pooling=max"]
    assert {r.run.run_group for r in runs} == {"sweep"} and [r.exit_code for r in runs] == [0, 0]
    summaries = job_summaries(tmp_path / "sweep")
    assert [s["pooling"] for s in summaries] == ["avg", "max"] and all(s["status"] == "completed" for s in summaries)
    budget = max(1, available_cores() // min(2, available_cores()))
    assert all(1 <= s["num_threads"] <= budget for s in summaries)  # no oversubscription
    assert "Launching 2 jobs, 2 at a time, each in its own process" in result.stdout + result.stderr


def _processes(module, sweep):
    """(pid, argv) of each running `python -m MODULE ...` process with an argument inside ``sweep``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = [a.decode() for a in f.read().split(b"\0")]
        except OSError:
            continue
        if module in argv and any(str(sweep) in a for a in argv):
            found.append((int(pid), argv))
    return found


def _job_process(sweep, index):
    """The pid of the running `python -m hydra_plugins.lenet.job_process SWEEP/.../INDEX.job` process, or None."""
    pids = [
        pid for pid, argv in _processes("hydra_plugins.lenet.job_process", sweep) if any(a.endswith(f"/{index}.job") for a in argv)
    ]
    return pids[0] if pids else None


def _parallel_sweep(tmp_path, epochs):
    """A joblib sweep of three jobs, two at a time, started in the background."""
    args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1,2", *SYNTHETIC, "device.num_threads=1",
            "data.train_size=3000", f"trainer.epochs={epochs}", "hydra.sweep.dir=sweep"]  # fmt: skip
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the job's process in /proc")
def test_a_killed_job_fails_alone_and_the_sweep_runs_on(tmp_path):
    proc = _parallel_sweep(tmp_path, epochs=3)
    wait_for_first_epoch(tmp_path / "sweep" / "0" / "metrics.jsonl")
    os.kill(_job_process(tmp_path / "sweep", 0), signal.SIGKILL)  # as the out-of-memory killer does
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 1 and "Traceback" not in err, err
    summaries = job_summaries(tmp_path / "sweep")
    assert summaries[0]["status"] == "failed" and "killed by SIGKILL" in summaries[0]["error"]
    assert [s["status"] for s in summaries[1:]] == ["completed", "completed"]
    assert "1 of 3 jobs did not complete" in err


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the job's processes in /proc")
def test_sigterm_to_a_parallel_sweep_stops_every_job_and_leaves_no_process(tmp_path):
    proc = _parallel_sweep(tmp_path, epochs=5)
    wait_for_first_epoch(tmp_path / "sweep" / "1" / "metrics.jsonl")
    workers = [_job_process(tmp_path / "sweep", n) for n in (0, 1)]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err
    assert [read_json(tmp_path / "sweep" / str(n) / "summary.json")["status"] for n in (0, 1)] == ["interrupted"] * 2
    assert not (tmp_path / "sweep" / "2").exists()  # nothing started after the signal
    assert None not in workers and not [p for p in workers if os.path.exists(f"/proc/{p}")], workers  # no orphan


@pytest.mark.slow
def test_submitit_local_runs_the_sweep_as_local_processes(tmp_path):  # hydra/launcher=local: lenet's preset
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    result = run_train("-m", "hydra/launcher=local", "pooling=avg,max", *SYNTHETIC, "hydra.sweep.dir=sweep",
                       cwd=tmp_path, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    summaries = job_summaries(tmp_path / "sweep")
    assert [s["pooling"] for s in summaries] == ["avg", "max"] and all(s["status"] == "completed" for s in summaries)
    assert list((tmp_path / "sweep" / ".submitit").iterdir())  # submitit's own job folders
    report = compare(tmp_path / "sweep")
    assert "| pooling=avg | 1 | 0 |" in report and "| pooling=max | 1 | 0 |" in report


@pytest.mark.slow
def test_slurm_preset_composes_with_its_defaults(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    env = {"SLURM_PARTITION": "gpu", "SLURM_ACCOUNT": "lab"}
    launchers = {}
    for device in ("auto", "cpu", "cuda"):
        result = run_train(
            "hydra/launcher=slurm", f"device={device}", "--cfg", "all", "--resolve", cwd=tmp_path, env=env
        )
        assert result.returncode == 0, result.stderr
        launchers[device] = launcher = yaml.safe_load(result.stdout)["hydra"]["launcher"]
    assert {d: launcher["gpus_per_node"] for d, launcher in launchers.items()} == {"auto": 0, "cpu": 0, "cuda": 1}
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert (launcher["partition"], launcher["account"]) == ("gpu", "lab")
    assert launcher["timeout_min"] == 60 and launcher["max_num_timeout"] == 3 and launcher["signal_delay_s"] == 120


@pytest.mark.slow
def test_a_requeued_submitit_job_resumes_from_its_checkpoint(tmp_path):
    args = [sys.executable, str(REPO / "train.py"), *SYNTHETIC[:-1], "data.train_size=2000", "trainer.epochs=3",
            "hydra.run.dir=job"]  # fmt: skip
    env = {**os.environ, "SUBMITIT_EXECUTOR": "slurm", "WANDB_MODE": "offline"}  # as submitit runs a job
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "job" / "metrics.jsonl"
    wait_for_first_epoch(metrics)
    proc.send_signal(signal.SIGKILL)  # pre-empted without warning
    proc.wait(timeout=60)
    done_before = len(read_jsonl(metrics))
    assert 1 <= done_before < 3
    requeued = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert requeued.returncode == 0, requeued.stderr
    summary = read_json(tmp_path / "job" / "summary.json")
    assert summary["status"] == "completed" and summary["resumed_from_epoch"] == done_before
    assert [r["epoch"] for r in read_jsonl(metrics)] == [1, 2, 3]


@pytest.mark.slow
def test_optuna_search_finds_the_best_trial(tmp_path):
    pytest.importorskip("optuna")
    fixed = [a for a in SYNTHETIC if not a.startswith("trainer.batch_size")]  # the search chooses it
    result = run_train("-m", "hparams_search=optuna", "hydra.sweeper.n_trials=3", *fixed, "hydra.sweep.dir=sweep",
                       cwd=tmp_path, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    sweep = tmp_path / "sweep"
    summaries = job_summaries(sweep)
    assert len(summaries) == 3 and all(s["status"] == "completed" for s in summaries)
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_value"] == max(s["final_test_acc"] for s in summaries)
    best = next(s for s in summaries if s["final_test_acc"] == results["best_value"])
    overrides = dict(o.split("=", 1) for o in best["overrides"] if o.split("=", 1)[0] in results["best_params"])
    assert {k: float(v) for k, v in overrides.items()} == pytest.approx(
        {k: float(v) for k, v in results["best_params"].items()}
    )
    assert set(results["best_params"]) == {"optimizer.lr", "optimizer.weight_decay", "trainer.batch_size"}
    report = compare(sweep)
    assert report.count("| optimizer.lr=") == 3  # every trial is its own variant


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the job's process in /proc")
def test_a_killed_submitit_job_fails_alone_with_the_sweeps_verdict(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    args = ["-m", "hydra/launcher=local", "seed=0,1", *SYNTHETIC, "device.num_threads=1", "data.train_size=3000",
            "trainer.epochs=3", "hydra.sweep.dir=sweep"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    wait_for_first_epoch(tmp_path / "sweep" / "0" / "metrics.jsonl")
    victims = [pid for pid, _ in _processes("submitit.core._submit", tmp_path / "sweep") if pid != proc.pid]
    assert victims
    os.kill(victims[0], signal.SIGKILL)  # one job's process, as the out-of-memory killer would
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 1 and "Traceback" not in err, err
    summaries = [read_json(tmp_path / "sweep" / str(n) / "summary.json") for n in (0, 1)]
    assert sorted(s["status"] for s in summaries) == ["completed", "failed"] and "1 of 2 jobs did not complete" in err
    (failed,) = [s for s in summaries if s["status"] == "failed"]
    assert failed["error"].startswith("the job's process died")


def _trials(sweep):
    with open(sweep / "trials.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_a_failing_optuna_trial_is_marked_failed_and_the_search_goes_on(tmp_path):
    pytest.importorskip("optuna")
    result = run_train("-m", "hparams_search=optuna", "hydra.sweeper.n_trials=4", "optimizer.lr=choice(0.05,-1)",
                       *SYNTHETIC, "hydra.sweep.dir=sweep", cwd=tmp_path, timeout=300)  # fmt: skip
    assert "Traceback" not in result.stderr, result.stderr
    trials = _trials(tmp_path / "sweep")
    assert len(trials) == 4 and {t["state"] for t in trials} <= {"complete", "fail"}
    assert all((t["state"] == "fail") == (t["optimizer.lr"] == "-1") for t in trials)
    failed = sum(t["state"] == "fail" for t in trials)
    assert result.returncode == (1 if failed else 0) and (not failed or f"{failed} of 4 jobs did not complete" in
                                                          result.stderr)  # fmt: skip


@pytest.mark.slow
def test_a_stopped_optuna_search_continues_to_n_trials_from_its_checkpoints(tmp_path):
    pytest.importorskip("optuna")
    fixed = [a for a in SYNTHETIC if a not in ("trainer.epochs=1",)] + ["device.num_threads=1"]
    args = ["-m", "hparams_search=optuna", "hydra.sweeper.n_trials=3", *fixed, "data.train_size=3000",
            "trainer.epochs=3", "hydra.sweep.dir=sweep"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    wait_for_first_epoch(tmp_path / "sweep" / "1" / "metrics.jsonl")
    proc.send_signal(signal.SIGTERM)  # in trial 1
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err
    states = [t["state"] for t in _trials(tmp_path / "sweep")]
    assert states == ["complete"]  # trial 1 was never told: it is still running in the study

    result = run_train(*args, "trainer.resume=true", cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    trials = _trials(tmp_path / "sweep")
    assert [t["state"] for t in trials] == ["complete"] * 3 and [t["number"] for t in trials] == ["0", "1", "2"]
    resumed = read_json(tmp_path / "sweep" / "1" / "summary.json")
    assert resumed["status"] == "completed" and resumed["resumed_from_epoch"] >= 1  # from its checkpoint


@pytest.mark.slow
def test_hopeless_optuna_trials_are_pruned_after_an_epoch(tmp_path):
    pytest.importorskip("optuna")
    pruner = ["hydra.sweeper.pruner._target_=optuna.pruners.ThresholdPruner", "~hydra.sweeper.pruner.n_startup_trials",
              "hydra.sweeper.pruner.n_warmup_steps=0", "+hydra.sweeper.pruner.lower=0.15"]  # fmt: skip
    fixed = [a for a in SYNTHETIC if a != "trainer.epochs=1"]
    result = run_train("-m", "hparams_search=optuna", "hydra.sweeper.n_trials=4", *pruner, "optimizer.lr=choice(0.05,1e-5)",
                       *fixed, "data.train_size=2000", "device.num_threads=1", "trainer.epochs=3", "hydra.sweep.dir=sweep",
                       cwd=tmp_path,
                       timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr  # a pruned trial ended as the search asked: no failure
    for trial in _trials(tmp_path / "sweep"):
        summary = read_json(tmp_path / "sweep" / trial["number"] / "summary.json")
        hopeless = float(trial["optimizer.lr"]) < 1e-3  # learns nothing in 3 epochs: 11% after the first
        assert (trial["state"], summary["status"]) == (("pruned", "pruned") if hopeless else ("complete", "completed"))
        assert summary["epochs_completed"] == (1 if hopeless else 3)
