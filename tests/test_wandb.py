"""Weights & Biases logging, read back from offline runs: no network, no account."""

import os
import signal
import subprocess
import sys

import pytest

from conftest import REPO, read_json, read_jsonl, run_train, wait_for_first_epoch
from wandb_records import OfflineRun

SYNTHETIC = ["data=synthetic", "data.train_size=256", "data.test_size=128", "trainer.batch_size=64", "device=cpu"]


def test_offline_run_records_history_config_summary_and_weights(tmp_path):
    result = run_train("logger=wandb", "logger.log_model=true", "logger.group=ablation", "logger.name=first",
                       "logger.tags=[a,b]", *SYNTHETIC, "trainer.epochs=2", "hydra.run.dir=run", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "run"
    wb = OfflineRun(run_dir)  # its files live inside the Hydra run dir
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert [row["test_acc"] for row in wb.history] == [row["test_acc"] for row in metrics]
    assert [row["_step"] for row in wb.history] == [1, 2]  # step = epoch
    assert {"epoch", "train_loss", "test_loss", "test_acc", "lr", "seconds"} <= set(wb.history[0])
    assert wb.config["optimizer"]["lr"] == 0.05 and wb.config["data"]["name"] == "synthetic"
    assert wb.config["trainer"]["precision"] == "fp32"  # the resolved config, enums as strings
    summary = read_json(run_dir / "summary.json")
    assert wb.summary["final_test_acc"] == summary["final_test_acc"] and wb.summary["num_params"] == 61_706
    assert wb.summary["best_test_acc"] == summary["best_test_acc"] and wb.summary["wall_seconds"] > 0
    assert wb.exit_code == 0 and wb.run.project == "lenet"
    assert "artifact" in wb.kinds  # logger.log_model=true uploads the weights
    assert (wb.run.run_group, wb.run.display_name, list(wb.run.tags)) == ("ablation", "first", ["a", "b"])


def test_sweep_jobs_share_a_group_and_a_failed_job_is_finished_as_failed(tmp_path):
    result = run_train(
        "-m", "logger=wandb", "data=mnist,synthetic", "data.root=nowhere", "data.download=false", *SYNTHETIC[1:],
        "trainer.epochs=1", "hydra.sweep.dir=sweep", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode != 0  # the sweep as a whole reports its failed job ...
    assert "1 of 2 jobs did not complete" in result.stderr and "mnist not found" in result.stderr
    failed, completed = OfflineRun(tmp_path / "sweep" / "0"), OfflineRun(tmp_path / "sweep" / "1")
    assert failed.exit_code == 1 and completed.exit_code == 0  # ... after running the next job cleanly
    assert failed.run.run_group == completed.run.run_group == "sweep"
    assert failed.run.display_name == "data=mnist" and completed.run.display_name == "data=synthetic"
    assert len(completed.history) == 1 and failed.history == []
    assert read_json(tmp_path / "sweep" / "0" / "summary.json")["status"] == "failed"


def test_online_without_credentials_fails_fast_without_prompting(tmp_path):
    env = {
        "HOME": str(tmp_path),
        "WANDB_API_KEY": "",
        "NETRC": str(tmp_path / "netrc"),
        "WANDB_CONFIG_DIR": str(tmp_path),
    }
    result = run_train(
        "logger=wandb", "logger.mode=online", *SYNTHETIC, "hydra.run.dir=run", cwd=tmp_path, env=env, timeout=60
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "wandb login" in result.stderr and "logger.mode=offline" in result.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # stopped before training


@pytest.mark.parametrize("env_mode,expected", [(None, "offline"), ("disabled", "disabled")])
def test_mode_defaults_to_offline_unless_the_environment_says_otherwise(monkeypatch, env_mode, expected):
    from lenet.tracking import resolve_wandb_mode

    if env_mode is None:
        monkeypatch.delenv("WANDB_MODE", raising=False)
    else:
        monkeypatch.setenv("WANDB_MODE", env_mode)
    assert resolve_wandb_mode(None) == expected


def test_disabled_starts_no_run_and_a_run_leaves_the_environment_alone(tmp_path, monkeypatch):
    from lenet.config import LoggerConfig, WandbMode
    from lenet.tracking import start_wandb

    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert start_wandb(LoggerConfig(backend="wandb"), tmp_path, {}, None, None) is None
    monkeypatch.delenv("WANDB_MODE")
    run = start_wandb(LoggerConfig(backend="wandb", mode=WandbMode.offline), tmp_path, {"lr": 0.1}, None, "first")
    run.wait_started()
    run.log({"test_acc": 0.25}, step=1)
    run.finish({"final_test_acc": 0.25}, exit_code=0)
    assert "WANDB_MODE" not in os.environ  # the mode is the W&B process's business, not the next job's
    wb = OfflineRun(tmp_path)
    assert wb.config["lr"] == 0.1 and wb.run.display_name == "first" and wb.history[0]["test_acc"] == 0.25
    assert wb.summary["final_test_acc"] == 0.25 and wb.exit_code == 0


def test_ctrl_c_finishes_the_wandb_run_as_interrupted_with_the_epochs_done(tmp_path):
    args = ["logger=wandb", *SYNTHETIC, "data.train_size=3000", "trainer.epochs=5", "hydra.run.dir=run"]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    # a session of its own, so that the test can signal the whole process group as a terminal's Ctrl-C does
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
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


DIES = """
import os
from pathlib import Path
from lenet.config import LoggerConfig, WandbMode
from lenet.tracking import start_wandb
Path("run").mkdir()
run = start_wandb(LoggerConfig(backend="wandb", mode=WandbMode.offline), Path("run"), {}, None, None)
run.wait_started()
run.log({"test_acc": 0.5}, step=1)
os._exit(0)  # no finish, no atexit: as if the training process were killed
"""


def test_the_wandb_process_finishes_the_run_as_failed_when_the_training_process_dies(tmp_path):
    # returns once every process holding the captured stderr has exited, the W&B process included
    result = subprocess.run([sys.executable, "-c", DIES], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    wb = OfflineRun(tmp_path / "run")
    assert wb.exit_code == 1 and [row["test_acc"] for row in wb.history] == [0.5]


PREPARE = """
import os
import sys
from lenet.config import WandbMode
from lenet import tracking
tracking.prepare_wandb(MODE)
def parent(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None
children = [pid for pid in os.listdir("/proc") if pid.isdigit() and parent(pid) == os.getpid()]
print(bool(children), "torch" in sys.modules, "wandb" in sys.modules)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads child processes from /proc")
@pytest.mark.parametrize("mode,expected", [("None", "True False False"), ("WandbMode.disabled", "False False False")])
def test_prepare_wandb_starts_the_wandb_process_and_imports_neither_wandb_nor_torch(tmp_path, mode, expected):
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
    script = PREPARE.replace("MODE", mode)
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == expected  # the W&B process started; torch, W&B not imported here


def test_a_wandb_process_that_ended_fails_the_run_with_a_message_and_finish_returns(tmp_path):
    from lenet.errors import UserError
    from lenet.tracking import WandbProcess, WandbRun

    process = WandbProcess()
    process.close()  # it exits, as it would after a crash
    process._process.wait(timeout=60)
    run = WandbRun(process, "offline", dir=str(tmp_path))
    with pytest.raises(UserError, match="W&B could not start the run: the W&B process ended unexpectedly"):
        run.wait_started()
    run.finish({"status": "failed"}, exit_code=1)  # nothing to finish: returns without raising
