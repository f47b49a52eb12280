"""Interruptions, resumption, divergence and reproducibility."""

import pathlib
import signal
import time

import pytest
import torch
from conftest import (
    SYNTHETIC,
    as_if_interrupted,
    compose_config,
    read_json,
    read_jsonl,
    run_in_process,
    run_train,
    start_train,
    wait_for_first_epoch,
    without_time,
)
from torch import nn

import lenet.core.models as models
from lenet.core.errors import CheckpointError, ConfigError, DivergedError
from lenet.run.checkpoint import CHECKPOINT_FILE, load_checkpoint
from lenet.run.job import JobInfo
from lenet.run.lifecycle import run_job


def test_same_seed_gives_bit_identical_results_on_cpu(tmp_path):
    a, dir_a = run_in_process(tmp_path, "a", "data.train_size=512", "trainer.epochs=2")
    b, dir_b = run_in_process(tmp_path, "b", "data.train_size=512", "trainer.epochs=2")
    assert without_time(read_jsonl(dir_a / "metrics.jsonl")) == without_time(read_jsonl(dir_b / "metrics.jsonl"))
    wa, wb = torch.load(dir_a / "lenet_synthetic.pth"), torch.load(dir_b / "lenet_synthetic.pth")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    c, _ = run_in_process(tmp_path, "c", "data.train_size=512", "trainer.epochs=2", "seed=1")
    assert c["final_train_loss"] != a["final_train_loss"]


@pytest.mark.slow
def test_sigterm_stops_keeps_the_checkpoint_and_resume_matches_an_uninterrupted_run(tmp_path):
    args = [*SYNTHETIC, "data.train_size=3000", "trainer.epochs=3"]
    run_in_process(tmp_path, "full", *args[len(SYNTHETIC) :])  # the uninterrupted reference

    proc = start_train(*args, "hydra.run.dir=part", cwd=tmp_path)
    metrics = tmp_path / "part" / "metrics.jsonl"
    wait_for_first_epoch(metrics)
    proc.send_signal(signal.SIGTERM)  # during epoch 2
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "interrupted by SIGTERM" in stderr and "trainer.resume=true" in stderr and "Traceback" not in stderr
    summary = read_json(tmp_path / "part" / "summary.json")
    assert summary["status"] == "interrupted" and 1 <= summary["epochs_completed"] < 3
    checkpoint = load_checkpoint(tmp_path / "part" / CHECKPOINT_FILE)
    assert len(checkpoint["history"]) == summary["epochs_completed"] == len(read_jsonl(metrics))

    resumed = run_train(*args, "hydra.run.dir=part", "trainer.resume=true", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    rows = read_jsonl(metrics)
    assert [r["epoch"] for r in rows] == [1, 2, 3]  # no duplicated or missing epochs
    assert without_time(rows) == without_time(read_jsonl(tmp_path / "full" / "metrics.jsonl"))
    w_full = torch.load(tmp_path / "full" / "lenet_synthetic.pth")
    w_part = torch.load(tmp_path / "part" / "lenet_synthetic.pth")
    assert all(torch.equal(w_full[k], w_part[k]) for k in w_full)
    summary = read_json(tmp_path / "part" / "summary.json")
    assert summary["status"] == "completed" and summary["resumed_from_epoch"] == checkpoint["history"][-1]["epoch"]


def test_resume_refuses_a_checkpoint_made_with_another_config(tmp_path):
    _, run_dir = run_in_process(tmp_path, "run", "data.train_size=256", "trainer.epochs=1")
    cfg, record = compose_config("data.train_size=256", "trainer.epochs=1", "trainer.resume=true", "optimizer.lr=0.01")
    with pytest.raises(ConfigError, match="different values of optimizer.lr"):
        run_job(cfg, JobInfo(run_dir=run_dir, cwd=tmp_path), record)


def test_resume_without_a_checkpoint_starts_from_epoch_one(tmp_path):
    summary, _ = run_in_process(tmp_path, "run", "data.train_size=256", "trainer.epochs=1", "trainer.resume=true")
    assert (
        summary["status"] == "completed" and summary["resumed_from_epoch"] is None and summary["epochs_completed"] == 1
    )


class NaNAfter(nn.Module):
    """A tiny model whose outputs turn NaN after a number of forward passes."""

    def __init__(self, good_steps: int):
        super().__init__()
        self.linear = nn.Linear(32 * 32, 10)
        self.good_steps = good_steps
        self.calls = 0

    def forward(self, x):
        self.calls += self.training
        out = self.linear(x.flatten(1))
        return out * float("nan") if self.calls > self.good_steps else out

    def loss(self, scores, targets, reduction="mean"):
        return nn.functional.cross_entropy(scores, targets, reduction=reduction)


def test_a_diverging_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    def nan_model_for_test(pooling="max", in_channels=1, num_classes=10):
        return NaNAfter(good_steps=4)  # 256 images / 64 per batch: epoch 1 is good, epoch 2 is not

    monkeypatch.setitem(models._MODELS, "nan_model_for_test", nan_model_for_test)
    with pytest.raises(DivergedError, match=r"loss became nan in epoch 2; the checkpoint of epoch 1 is kept"):
        run_in_process(tmp_path, "run", "data.train_size=256", "trainer.epochs=3", "model.name=nan_model_for_test")
    run_dir = tmp_path / "run"
    assert len(load_checkpoint(run_dir / CHECKPOINT_FILE)["history"]) == 1
    assert [r["epoch"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [1]
    summary = read_json(run_dir / "summary.json")
    assert summary["status"] == "failed" and "loss became nan" in summary["error"]


class CreatesAFileWhenUnpickled:
    """What a crafted checkpoint.pt could hold: unpickling it would run code (here: create a file)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (self.path,))


def _truncated(path):
    path.write_bytes(path.read_bytes()[:1000])


def _foreign(path):
    torch.save({"weights": torch.zeros(3)}, path)


def _other_model(path):
    state = torch.load(path, weights_only=True)
    state["model"]["fc3.weight"] = torch.zeros(12, 84)
    torch.save(state, path)


def _directory(path):
    path.unlink()
    path.mkdir()


@pytest.mark.parametrize(
    "damage,fragment",
    [
        (lambda p: p.write_bytes(b""), "empty, truncated, corrupt or not a checkpoint"),
        (_truncated, "empty, truncated, corrupt or not a checkpoint"),
        (lambda p: p.write_bytes(b"\x00garbage" * 100), "empty, truncated, corrupt or not a checkpoint"),
        (_foreign, "not a checkpoint of this harness (no valid model, optimizer, scheduler, rng, history, config"),
        (_other_model, "its saved state does not fit this model and optimizer (RuntimeError: Error(s) in loading"),
        (_directory, "it is not a file"),
    ],
    ids=["empty", "truncated", "garbage", "foreign", "other-model", "directory"],
)
def test_an_unusable_checkpoint_is_one_line_saying_how_to_start_over(tmp_path, damage, fragment):
    _, run_dir = run_in_process(tmp_path, "run", "data.train_size=256", "trainer.epochs=1")
    as_if_interrupted(run_dir)
    damage(run_dir / CHECKPOINT_FILE)
    cfg, record = compose_config("data.train_size=256", "trainer.epochs=1", "trainer.resume=true")
    with pytest.raises(CheckpointError) as error:
        run_job(cfg, JobInfo(run_dir=run_dir, cwd=tmp_path), record)
    message = str(error.value)
    assert fragment in message and "\n" not in message, message
    assert "delete it to start this run over, or start a new run dir" in message


def test_a_crafted_checkpoint_cannot_run_code_when_resumed(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    marker = tmp_path / "pwned"
    torch.save({"model": CreatesAFileWhenUnpickled(str(marker))}, run_dir / CHECKPOINT_FILE)
    cfg, record = compose_config("data.train_size=256", "trainer.epochs=1", "trainer.resume=true")
    with pytest.raises(CheckpointError, match="Weights only load failed|not a checkpoint"):
        run_job(cfg, JobInfo(run_dir=run_dir, cwd=tmp_path), record)
    assert not marker.exists()


def test_a_run_leaves_no_temporary_files_and_removes_stale_ones(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ".checkpoint.pt.abc123.tmp").write_bytes(b"half a checkpoint from a killed run")
    cfg, record = compose_config("data.train_size=256", "trainer.epochs=1")
    run_job(cfg, JobInfo(run_dir=run_dir, cwd=tmp_path), record)
    assert not list(run_dir.glob(".*.tmp"))
    assert set(torch.load(run_dir / "lenet_synthetic.pth")) >= {"conv1.weight", "fc3.bias"}


def test_the_interrupted_message_offers_resume_only_when_a_checkpoint_exists(tmp_path):
    from lenet.run.entry import interrupted_message

    run_dir = tmp_path / "my runs" / "a"
    run_dir.mkdir(parents=True)
    assert "no epoch had finished, so there is no checkpoint" in interrupted_message("SIGINT", run_dir)
    (run_dir / CHECKPOINT_FILE).write_bytes(b"")
    message = interrupted_message("SIGTERM", run_dir)
    assert message.startswith("error: interrupted by SIGTERM; the checkpoint of the last finished epoch is kept")
    assert message.endswith(f"hydra.run.dir='{run_dir}'")  # quoted: the path holds a space


def test_a_signal_received_before_a_job_starts_stops_it_at_once(tmp_path, monkeypatch):
    from lenet.core.errors import Interrupted
    from lenet.run import signals

    monkeypatch.setattr(signals, "pending", signal.SIGTERM)  # as if it came during start-up or between jobs
    with pytest.raises(Interrupted, match="SIGTERM"):
        run_in_process(tmp_path, "run", "data.train_size=256", "trainer.epochs=1")
    summary = read_json(tmp_path / "run" / "summary.json")
    assert summary["status"] == "interrupted" and summary["epochs_completed"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.15, 0.5, 1.5])
def test_sigterm_during_start_up_is_honoured_without_a_traceback(tmp_path, delay):
    args = [*SYNTHETIC, "data.train_size=256", "trainer.epochs=3", "hydra.run.dir=run"]
    proc = start_train(*args, cwd=tmp_path)
    time.sleep(delay)  # importing Hydra, composing, importing torch
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in stderr, stderr
    assert "interrupted by SIGTERM" in stderr
    summary = tmp_path / "run" / "summary.json"
    assert not summary.exists() or read_json(summary)["status"] in ("interrupted", "completed")


@pytest.mark.slow
def test_sigterm_between_sweep_jobs_stops_the_sweep_without_a_traceback(tmp_path):
    args = ["-m", *SYNTHETIC, "data.train_size=256", "trainer.epochs=1", "seed=0,1,2", "hydra.sweep.dir=sweep"]
    proc = start_train(*args, cwd=tmp_path)
    first = tmp_path / "sweep" / "0" / "summary.json"
    deadline = time.time() + 120
    while not (first.exists() and '"completed"' in first.read_text()) and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)  # job 0 has ended, job 1 is about to start
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in stderr, stderr
    assert read_json(first)["status"] == "completed"
    assert not (tmp_path / "sweep" / "2" / "summary.json").exists()  # the sweep stopped
