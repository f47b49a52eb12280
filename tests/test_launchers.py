"""The same sweeps through Hydra's launcher and sweeper plugins (the `launchers` extra)."""

import csv
import os
import signal

import pytest
import yaml
from conftest import (
    SMALL,
    interrupt_after_first_checkpoint,
    job_summaries,
    read_json,
    read_jsonl,
    run_in_process,
    run_train,
    start_train,
    wait_for_first_epoch,
)
from wandb_records import OfflineRun

from lenet.run.threads import available_cores
from lenet.tools.compare import compare

SYNTHETIC = [*SMALL, "trainer.epochs=1"]


@pytest.mark.slow
def test_joblib_runs_jobs_in_parallel_processes_with_one_thread_each(tmp_path):
    result = run_train(
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "pooling=avg,max",
        *SYNTHETIC,
        "logger=wandb",
        "hydra.sweep.dir=sweep",
        cwd=tmp_path,
    )
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
        pid
        for pid, argv in _processes("hydra_plugins.lenet.job_process", sweep)
        if any(a.endswith(f"/{index}.job") for a in argv)
    ]
    return pids[0] if pids else None


def _parallel_sweep(tmp_path, epochs):
    """A joblib sweep of three jobs, two at a time, started in the background."""
    args = [
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "seed=0,1,2",
        *SYNTHETIC,
        "device.num_threads=1",
        "data.train_size=3000",
        f"trainer.epochs={epochs}",
        "hydra.sweep.dir=sweep",
    ]
    return start_train(*args, cwd=tmp_path)


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
    result = run_train(
        "-m", "hydra/launcher=local", "pooling=avg,max", *SYNTHETIC, "hydra.sweep.dir=sweep", cwd=tmp_path, timeout=300
    )
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


def test_a_job_its_launcher_may_run_again_continues_from_its_checkpoint(tmp_path, monkeypatch):
    """submitit's launchers tell their jobs so (lenet.run.context); the real requeue is tests/test_slurm.py's."""
    import lenet.run.context as context
    from lenet.core.errors import Interrupted

    args = ["data.train_size=256", "trainer.epochs=3"]
    with pytest.MonkeyPatch.context() as patch, pytest.raises(Interrupted):
        interrupt_after_first_checkpoint(patch)  # pre-empted after epoch 1
        run_in_process(tmp_path, "job", *args)
    monkeypatch.setattr(context, "_context", context.JobContext())
    context.set_job_context(requeueable=True)
    summary, _ = run_in_process(tmp_path, "job", *args)  # run again as it was: no trainer.resume
    assert summary["status"] == "completed" and summary["resumed_from_epoch"] == 1
    assert [r["epoch"] for r in read_jsonl(tmp_path / "job" / "metrics.jsonl")] == [1, 2, 3]


@pytest.mark.slow
def test_optuna_search_finds_the_best_trial(tmp_path):
    pytest.importorskip("optuna")
    fixed = [a for a in SYNTHETIC if not a.startswith("trainer.batch_size")]  # the search chooses it
    result = run_train(
        "-m",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=3",
        *fixed,
        "hydra.sweep.dir=sweep",
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    sweep = tmp_path / "sweep"
    summaries = job_summaries(sweep)
    assert len(summaries) == 3 and all(s["status"] == "completed" for s in summaries)
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["objective"] == "final_val_acc"  # the search selects on the validation split
    assert results["best_value"] == max(s["final_val_acc"] for s in summaries)
    best = next(s for s in summaries if s["final_val_acc"] == results["best_value"])
    overrides = dict(o.split("=", 1) for o in best["overrides"] if o.split("=", 1)[0] in results["best_params"])
    assert {k: float(v) for k, v in overrides.items()} == pytest.approx(
        {k: float(v) for k, v in results["best_params"].items()}
    )
    assert set(results["best_params"]) == {"optimizer.lr", "optimizer.weight_decay", "trainer.batch_size"}
    report = compare(sweep)
    ranked = [line for line in report.splitlines() if line.startswith("| ") and " | completed | " in line]
    assert len(ranked) == 3 and ranked[0].startswith("| 1 | ")  # every trial its own row, ranked by its objective
    assert "storage" not in report and "optuna_pruning" not in report  # short labels


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the job's process in /proc")
def test_a_killed_submitit_job_fails_alone_with_the_sweeps_verdict(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    args = [
        "-m",
        "hydra/launcher=local",
        "seed=0,1",
        *SYNTHETIC,
        "device.num_threads=1",
        "data.train_size=3000",
        "trainer.epochs=3",
        "hydra.sweep.dir=sweep",
    ]
    proc = start_train(*args, cwd=tmp_path)
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
    result = run_train(
        "-m",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=4",
        "optimizer.lr=choice(0.05,-1)",
        *SYNTHETIC,
        "hydra.sweep.dir=sweep",
        cwd=tmp_path,
        timeout=300,
    )
    assert "Traceback" not in result.stderr, result.stderr
    trials = _trials(tmp_path / "sweep")
    assert len(trials) == 4 and {t["state"] for t in trials} <= {"complete", "fail"}
    assert all((t["state"] == "fail") == (t["optimizer.lr"] == "-1") for t in trials)
    failed = sum(t["state"] == "fail" for t in trials)
    assert result.returncode == (1 if failed else 0) and (
        not failed or f"{failed} of 4 jobs did not complete" in result.stderr
    )


@pytest.mark.slow
def test_a_stopped_optuna_search_continues_to_n_trials_from_its_checkpoints(tmp_path):
    pytest.importorskip("optuna")
    fixed = [a for a in SYNTHETIC if a not in ("trainer.epochs=1",)] + ["device.num_threads=1"]
    args = [
        "-m",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=3",
        *fixed,
        "data.train_size=3000",
        "trainer.epochs=3",
        "hydra.sweep.dir=sweep",
    ]
    proc = start_train(*args, cwd=tmp_path)
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
    pruner = [
        "hydra.sweeper.pruner._target_=optuna.pruners.ThresholdPruner",
        "~hydra.sweeper.pruner.n_startup_trials",
        "hydra.sweeper.pruner.n_warmup_steps=0",
        "+hydra.sweeper.pruner.lower=0.15",
    ]
    fixed = [a for a in SYNTHETIC if a != "trainer.epochs=1"]
    result = run_train(
        "-m",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=4",
        *pruner,
        "optimizer.lr=choice(0.05,1e-5)",
        *fixed,
        "data.train_size=2000",
        "device.num_threads=1",
        "trainer.epochs=3",
        "hydra.sweep.dir=sweep",
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr  # a pruned trial ended as the search asked: no failure
    for trial in _trials(tmp_path / "sweep"):
        summary = read_json(tmp_path / "sweep" / trial["number"] / "summary.json")
        hopeless = float(trial["optimizer.lr"]) < 1e-3  # learns nothing in 3 epochs: 11% after the first
        assert (trial["state"], summary["status"]) == (("pruned", "pruned") if hopeless else ("complete", "completed"))
        assert summary["epochs_completed"] == (1 if hopeless else 3)


HYDRA_CALLBACK = """\
import json
from hydra.experimental.callback import Callback


class RecordStatus(Callback):
    def on_job_end(self, config, job_return, **kwargs):
        with open(config.hydra.sweep.dir + "/statuses.jsonl", "a") as f:
            f.write(json.dumps({"overrides": list(job_return.overrides), "status": job_return.status.name,
                                "error": str(job_return._return_value) if job_return.status.name == "FAILED" else None}) + "\\n")
"""


@pytest.mark.slow
def test_a_failed_sweep_job_reaches_hydra_as_failed_and_the_verdict_names_it(tmp_path):
    (tmp_path / "record_status.py").write_text(HYDRA_CALLBACK)
    result = run_train(
        "-m",
        "optimizer.lr=0.05,-1",
        *SYNTHETIC,
        "hydra.sweep.dir=sweep",
        "+hydra.callbacks.record._target_=record_status.RecordStatus",
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path)},
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    statuses = read_jsonl(tmp_path / "sweep" / "statuses.jsonl")
    assert [s["status"] for s in statuses] == ["COMPLETED", "FAILED"]  # what Hydra itself recorded
    assert statuses[1]["error"] == "failed: optimizer.lr must be a finite number > 0, got -1"
    assert "  0  optimizer.lr=0.05  completed" in result.stdout and "  1  optimizer.lr=-1  failed  -" in result.stdout
    assert "error: 1 of 2 jobs did not complete:" in result.stderr and "got -1" in result.stderr


@pytest.mark.slow
def test_the_optuna_objective_and_direction_are_any_summary_key_either_way(tmp_path):
    pytest.importorskip("optuna")
    fixed = [a for a in SYNTHETIC if not a.startswith("trainer.batch_size")]
    result = run_train(
        "-m",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.pruner=null",
        "hydra.sweeper.objective=final_val_loss",
        "hydra.sweeper.direction=minimize",
        *fixed,
        "hydra.sweep.dir=sweep",
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    results = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    losses = [s["final_val_loss"] for s in job_summaries(tmp_path / "sweep")]
    assert results["objective"] == "final_val_loss" and results["best_value"] == min(losses) < max(losses)
    for objective in ("test_acc", "best_test_loss", "final_test_top5"):  # no run of this search records them
        bad = run_train(
            "-m",
            "hparams_search=optuna",
            f"hydra.sweeper.objective={objective}",
            *fixed,
            "hydra.sweep.dir=bad",
            cwd=tmp_path,
        )
        assert bad.returncode == 1 and bad.stderr.count("\n") == 1, bad.stderr
        assert "error: hydra.sweeper.objective must be a number these runs record in summary.json" in bad.stderr
        assert not (tmp_path / "bad").exists()  # refused before any trial or folder
    on_test = run_train(
        "-m",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=1",
        "hydra.sweeper.objective=final_test_top5",
        "trainer.metrics=[top5]",
        *fixed,
        "hydra.sweep.dir=top5",
        cwd=tmp_path,
        timeout=300,
    )  # recorded once trainer.metrics asks for it; chosen explicitly on the test set, and said so
    assert on_test.returncode == 0 and "selects on the test set" in on_test.stdout + on_test.stderr, on_test.stderr


@pytest.mark.slow
def test_a_search_whose_trials_keep_failing_stops_at_max_failure_rate(tmp_path):
    pytest.importorskip("optuna")
    result = run_train(
        "-m",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=6",
        "optimizer.lr=choice(-1,-2)",
        "hydra.sweeper.max_failure_rate=0.5",
        *SYNTHETIC,
        "hydra.sweep.dir=sweep",
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    trials = _trials(tmp_path / "sweep")
    assert [t["state"] for t in trials] == ["fail"]  # the first trial failed: 100% > 50%, nothing more ran
    assert "the search stopped: 100% of its finished trials failed, more than hydra.sweeper.max_failure_rate=0.5" in (
        result.stderr
    )


@pytest.mark.slow
def test_joblib_names_the_processes_launcher_and_refuses_keys_it_does_not_honour(tmp_path):
    result = run_train(
        "-m",
        "hydra/launcher=joblib",
        "+hydra.launcher.backend=loky",
        "seed=0,1",
        *SYNTHETIC,
        "hydra.sweep.dir=sweep",
        cwd=tmp_path,
    )
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "takes n_jobs and kill_after, not hydra.launcher.backend: drop it" in result.stderr


@pytest.mark.slow
def test_a_launcher_preset_of_your_own_is_one_yaml(tmp_path):
    from conftest import doc_block

    (tmp_path / "my_conf" / "hydra" / "launcher").mkdir(parents=True)
    (tmp_path / "my_conf" / "hydra" / "launcher" / "two_at_a_time.yaml").write_text(
        doc_block("docs/extending.md", "# my_conf/hydra/launcher/two_at_a_time.yaml")
    )
    command = doc_block("docs/extending.md", "python train.py -m hydra/launcher=two_at_a_time").split()
    overrides = [a.replace("$PWD", str(tmp_path)) for a in command[2:]]
    result = run_train(*overrides, *SYNTHETIC, "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Launching 4 jobs, 2 at a time, each in its own process" in result.stdout + result.stderr
    assert [s["status"] for s in job_summaries(tmp_path / "sweep")] == ["completed"] * 4


@pytest.mark.slow
def test_the_local_launcher_gives_each_job_the_share_the_processes_launcher_gives(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    counts = {}
    for launcher in ("local", "processes"):
        result = run_train(
            "-m", f"hydra/launcher={launcher}", "seed=0,1", *SYNTHETIC, f"hydra.sweep.dir={launcher}", cwd=tmp_path
        )
        assert result.returncode == 0, result.stderr
        counts[launcher] = [s["num_threads"] for s in job_summaries(tmp_path / launcher)]
    assert counts["local"] == counts["processes"] == [max(1, available_cores() // 2)] * 2  # never every core each
