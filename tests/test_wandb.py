"""Weights & Biases logging, read back from offline runs: no network, no account."""

import os
import signal
import subprocess
import time

import pytest
from conftest import read_json, read_jsonl, run_train, start_train, wait_for_first_epoch
from wandb_records import OfflineRun

SYNTHETIC = ["data=synthetic", "data.train_size=256", "data.test_size=128", "trainer.batch_size=64", "device=cpu"]


@pytest.mark.slow
def test_offline_run_records_history_config_summary_and_weights(tmp_path):
    result = run_train(
        "logger=wandb",
        "logger.wandb.log_model=true",
        "logger.wandb.group=ablation",
        "logger.wandb.name=first",
        "logger.wandb.tags=[a,b]",
        "logger.log_every_n_steps=3",
        *SYNTHETIC,
        "trainer.epochs=2",
        "hydra.run.dir=run",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "run"
    wb = OfflineRun(run_dir)  # its files live inside the Hydra run dir
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    epochs = [row for row in wb.history if "test_acc" in row]
    assert [row["test_acc"] for row in epochs] == [row["test_acc"] for row in metrics]
    assert [row["_step"] for row in epochs] == [4, 8]  # an epoch at the optimizer step that ended it (4 a epoch)
    assert {"epoch", "train_loss", "val_acc", "test_loss", "test_acc", "lr", "seconds"} <= set(epochs[0])
    steps = [row for row in wb.history if "train_loss_step" in row]
    assert [row["_step"] for row in steps] == [3, 6] and all(r["train_loss_step"] > 0 for r in steps)
    assert wb.config["optimizer"]["lr"] == 0.1 and wb.config["data"]["name"] == "synthetic"
    assert wb.config["trainer"]["precision"] == "fp32"  # the resolved config, enums as strings
    summary = read_json(run_dir / "summary.json")
    assert wb.summary["final_test_acc"] == summary["final_test_acc"] and wb.summary["num_params"] == 61_706
    assert wb.summary["best_test_acc"] == summary["best_test_acc"] and wb.summary["wall_seconds"] > 0
    assert wb.exit_code == 0 and wb.run.project == "lenet"
    assert "artifact" in wb.kinds  # logger.wandb.log_model=true uploads the weights
    assert (wb.run.run_group, wb.run.display_name, list(wb.run.tags)) == ("ablation", "first", ["a", "b"])


@pytest.mark.slow
def test_sweep_jobs_share_a_group_and_a_failed_job_is_finished_as_failed(tmp_path):
    result = run_train(
        "-m",
        "logger=wandb",
        "data=mnist,synthetic",
        "data.root=nowhere",
        "data.download=false",
        *SYNTHETIC[1:],
        "trainer.epochs=1",
        "hydra.sweep.dir=sweep",
        cwd=tmp_path,
    )
    assert result.returncode != 0  # the sweep as a whole reports its failed job ...
    assert "1 of 2 jobs did not complete" in result.stderr and "mnist not found" in result.stderr
    failed, completed = OfflineRun(tmp_path / "sweep" / "0"), OfflineRun(tmp_path / "sweep" / "1")
    assert failed.exit_code == 1 and completed.exit_code == 0  # ... after running the next job cleanly
    assert failed.run.run_group == completed.run.run_group == "sweep"
    assert failed.run.display_name == "data=mnist" and completed.run.display_name == "data=synthetic"
    assert len(completed.history) == 1 and failed.history == []
    assert read_json(tmp_path / "sweep" / "0" / "summary.json")["status"] == "failed"


@pytest.mark.slow
def test_online_without_credentials_fails_fast_without_prompting(tmp_path):
    env = {
        "HOME": str(tmp_path),
        "WANDB_API_KEY": "",
        "NETRC": str(tmp_path / "netrc"),
        "WANDB_CONFIG_DIR": str(tmp_path),
    }
    result = run_train(
        "logger=wandb", "logger.wandb.mode=online", *SYNTHETIC, "hydra.run.dir=run", cwd=tmp_path, env=env, timeout=60
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "wandb login" in result.stderr and "logger.wandb.mode=offline" in result.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # stopped before training


@pytest.mark.parametrize("env_mode,expected", [(None, "offline"), ("disabled", "disabled")])
def test_mode_defaults_to_offline_unless_the_environment_says_otherwise(monkeypatch, env_mode, expected):
    from lenet.run.loggers import resolve_wandb_mode

    if env_mode is None:
        monkeypatch.delenv("WANDB_MODE", raising=False)
    else:
        monkeypatch.setenv("WANDB_MODE", env_mode)
    assert resolve_wandb_mode(None) == expected


def test_the_logger_leaves_the_environment_alone_and_its_run_is_reachable(tmp_path, monkeypatch):
    import wandb

    from lenet.run.loggers import WandbLogger

    monkeypatch.delenv("WANDB_MODE", raising=False)
    logger = WandbLogger(tmp_path, {"lr": 0.1}, sweep="sweep", label="first", mode="offline")
    assert wandb.run is logger.run  # in this process: user code can log media to it
    wandb.log({"note": wandb.Html("<b>hi</b>")})
    logger.log_row({"test_acc": 0.25}, step=1)
    logger.finish({"status": "completed", "final_test_acc": 0.25, "overrides": []}, exit_code=0)
    assert "WANDB_MODE" not in os.environ  # the mode is this run's business, not the next job's
    wb = OfflineRun(tmp_path)
    assert wb.config["lr"] == 0.1 and wb.run.display_name == "first" and wb.run.run_group == "sweep"
    assert [r["note/_type"] for r in wb.history if "note/_type" in r] == ["html-file"]
    assert [r["test_acc"] for r in wb.history if "test_acc" in r] == [0.25]
    assert wb.summary["final_test_acc"] == 0.25 and wb.exit_code == 0


@pytest.mark.slow
def test_ctrl_c_finishes_the_wandb_run_as_interrupted_with_the_epochs_done(tmp_path):
    args = ["logger=wandb", *SYNTHETIC, "data.train_size=3000", "trainer.epochs=5", "hydra.run.dir=run"]
    # W&B offline (start_train's environment); a session of its own, so that the test can signal the whole
    # process group as a terminal's Ctrl-C does
    proc = start_train(*args, cwd=tmp_path, start_new_session=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    wait_for_first_epoch(metrics)
    os.killpg(proc.pid, signal.SIGINT)  # the W&B process gets it too, and must outlive it
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGINT, stderr
    summary = read_json(tmp_path / "run" / "summary.json")
    assert summary["status"] == "interrupted" and 1 <= summary["epochs_completed"] < 5
    wb = OfflineRun(tmp_path / "run")
    assert len(wb.history) == summary["epochs_completed"] and wb.exit_code == 130
    assert wb.summary["status"] == "interrupted"


@pytest.mark.slow
def test_a_killed_run_resumed_gives_its_own_wandb_run_every_epoch(tmp_path):
    # kill -9 leaves W&B's run unfinished (offline: W&B writes it at finish); the resumed run continues the same
    # W&B run and gives it every epoch it does not hold
    args = ["logger=wandb", *SYNTHETIC, "data.train_size=3000", "trainer.epochs=3", "hydra.run.dir=run"]
    proc = start_train(*args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # W&B offline
    wait_for_first_epoch(tmp_path / "run" / "metrics.jsonl")
    proc.kill()
    proc.wait(timeout=60)
    result = run_train(*args, "trainer.resume=true", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    runs = sorted((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and runs[0].name.split("-")[-1] == runs[1].name.split("-")[-1]  # one W&B run id
    resumed = OfflineRun(tmp_path / "run", runs[-1].name)
    metrics = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [row["test_acc"] for row in resumed.history if "test_acc" in row] == [row["test_acc"] for row in metrics]
    assert len(metrics) == 3 and resumed.exit_code == 0 and resumed.run.resume  # continued, not a new run


@pytest.mark.slow
def test_an_interrupted_run_resumed_continues_its_own_wandb_run_with_only_its_new_epochs(tmp_path):
    args = ["logger=wandb", *SYNTHETIC, "data.train_size=3000", "trainer.epochs=3", "hydra.run.dir=run"]
    proc = start_train(*args, cwd=tmp_path)
    wait_for_first_epoch(tmp_path / "run" / "metrics.jsonl")
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    done = len(read_jsonl(tmp_path / "run" / "metrics.jsonl"))
    assert run_train(*args, "trainer.resume=true", cwd=tmp_path).returncode == 0
    first, second = sorted((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert first.name.split("-")[-1] == second.name.split("-")[-1]
    logged = [r["epoch"] for r in OfflineRun(tmp_path / "run", second.name).history if "epoch" in r]
    assert logged == list(range(done + 1, 4))  # the epochs the first process had given W&B are not given again


@pytest.mark.slow
def test_a_wandb_service_that_stops_answering_delays_the_end_by_the_stated_time_at_most(tmp_path):
    stopper = tmp_path / "stopper"
    stopper.mkdir()
    (stopper / "stop_wandb.py").write_text(  # a callback that freezes W&B's service after the first epoch
        "import os, signal\nfrom pathlib import Path\n\n\nclass Freeze:\n"
        "    def on_epoch_end(self, run, row):\n"
        "        for p in Path('/proc').glob('[0-9]*'):\n"
        "            try:\n"
        "                ppid = int((p / 'stat').read_text().rsplit(')', 1)[1].split()[1])\n"
        "                if ppid == os.getpid() and b'wandb-core' in (p / 'cmdline').read_bytes():\n"
        "                    os.kill(int(p.name), signal.SIGSTOP)\n"
        "            except (OSError, ValueError):\n"
        "                pass\n"
    )
    args = ["logger=wandb", "logger.wandb.finish_timeout=5", "+callbacks.freeze._target_=stop_wandb.Freeze", *SYNTHETIC]
    started = time.monotonic()
    result = run_train(*args, "trainer.epochs=1", "hydra.run.dir=run", cwd=tmp_path, env={"PYTHONPATH": str(stopper)})
    assert result.returncode == 0 and time.monotonic() - started < 60, result.stderr
    assert "W&B did not finish the run within 5 s (logger.wandb.finish_timeout)" in result.stdout + result.stderr
    assert read_json(tmp_path / "run" / "summary.json")["status"] == "completed"
