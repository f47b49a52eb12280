"""train.py end to end, in a subprocess, the way a user types it."""

import os
import re
from pathlib import Path

import pytest
import torch
import yaml
from conftest import read_json, read_jsonl, run_train, write_mnist

from lenet.core.models import create_model

FAST = [
    "logger=none",
    "data=synthetic",
    "data.train_size=512",
    "data.test_size=256",
    "trainer.batch_size=64",
    "device=cpu",
]


def only_dir(pattern: str, cwd: Path) -> Path:
    found = sorted(cwd.glob(pattern))
    assert len(found) == 1, found
    return found[0]


@pytest.mark.slow
def test_one_epoch_run_writes_metrics_summary_and_weights(tmp_path):
    result = run_train(*FAST, "trainer.epochs=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir = only_dir("outputs/*/*", tmp_path)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d", str(run_dir.relative_to(tmp_path / "outputs")))
    assert re.search(
        r"epoch 1/1\s+train_loss [\d.]+\s+val_loss [\d.]+\s+val_acc [\d.]+%\s+test_loss [\d.]+\s+test_acc [\d.]+%",
        result.stdout + result.stderr,
    )

    (row,) = read_jsonl(run_dir / "metrics.jsonl")
    assert row["epoch"] == 1 and 0 <= row["test_acc"] <= 1 and row["seconds"] > 0 and row["lr"] > 0
    assert {"train_loss", "val_loss", "val_acc", "test_loss"} <= set(row)
    summary = read_json(run_dir / "summary.json")
    assert summary["status"] == "completed" and summary["final_test_acc"] == row["test_acc"] == summary["best_test_acc"]
    assert (
        summary["selected_on"] == "val_acc" and summary["best_val_acc"] == row["val_acc"] and summary["best_epoch"] == 1
    )
    assert summary["split"] == {"train": 512, "val": 200, "test": 256} and (run_dir / "best.pth").is_file()
    assert summary["num_params"] == 61_706 and summary["epochs"] == 1 and summary["wall_seconds"] > 0
    assert summary["overrides"] == [*FAST, "trainer.epochs=1"]
    assert yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text()) == summary["overrides"]

    state = torch.load(run_dir / "lenet_synthetic.pth", weights_only=True)
    model = create_model("lenet5")
    model.load_state_dict(state)  # a plain state_dict of the registry's model
    assert "progress" not in result.stderr and "batch/s" not in result.stderr  # no bar when not on a terminal
    acc = 100 * row["test_acc"]
    threads = f"{summary['num_threads']} CPU threads"  # results on the CPU depend on it
    best = f"best epoch 1 by val_acc (test accuracy there {acc:.2f}%, weights best.pth)"
    done = f"done: final test accuracy {acc:.2f}%; {best}; {threads}; run dir {run_dir}"
    assert done in result.stdout + result.stderr  # the run says where it went
    assert f"weights {run_dir / 'lenet_synthetic.pth'}" in result.stdout + result.stderr


@pytest.mark.slow
def test_relative_data_root_is_resolved_against_the_start_dir(tmp_path):
    write_mnist(tmp_path / "mydata" / "MNIST" / "raw", n_train=128, n_test=64, gz=True)
    result = run_train("data.root=mydata", "data.download=false", "trainer.epochs=1", "device=cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir = only_dir("outputs/*/*", tmp_path)
    assert (run_dir / "lenet_mnist.pth").is_file()
    assert read_json(run_dir / "summary.json")["dataset"] == "mnist"


@pytest.mark.slow
def test_multirun_over_pooling_writes_one_dir_per_job(tmp_path):
    result = run_train("-m", "pooling=avg,max", *FAST, "trainer.epochs=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    sweep = only_dir("multirun/*/*", tmp_path)
    summaries = {d.name: read_json(d / "summary.json") for d in sorted(sweep.iterdir()) if d.is_dir()}
    assert sorted(summaries) == ["0", "1"]
    assert [s["pooling"] for s in summaries.values()] == ["avg", "max"]
    assert all(s["status"] == "completed" for s in summaries.values())
    assert read_json(sweep / "0" / "summary.json")["overrides"][0] == "pooling=avg"


@pytest.mark.slow
def test_cfg_job_help_and_info_work_as_in_hydra(tmp_path):
    cfg = run_train("--cfg", "job", "optimizer=adam", "pooling=avg", cwd=tmp_path)
    assert cfg.returncode == 0
    job = yaml.safe_load(cfg.stdout)
    assert (
        job["optimizer"]["_target_"] == "torch.optim.Adam"
        and job["model"]["pooling"] == "avg"
        and job["trainer"]["epochs"] == 10
    )
    help_ = run_train("--help", cwd=tmp_path)
    assert help_.returncode == 0
    groups = help_.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
    options = dict(line.split(": ", 1) for line in groups.splitlines() if ": " in line)
    assert options["optimizer"] == "adam, adamw, radam, rmsprop, sgd"  # options to choose, no schema nodes
    assert options["scheduler"] == "cosine, none, onecycle, step" and options["model"] == "lenet5, lenet5_classic"
    assert not any("base" in o or "schema" in o for o in options.values()), options
    info = run_train("--info", cwd=tmp_path)
    assert info.returncode == 0 and "Config search path" in info.stdout
    assert not (tmp_path / "outputs").exists()


def assert_one_line_error(result, *fragments):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["optimizer=sgdd"], ["Could not find 'optimizer/sgdd'", "adamw"]),
        (["trainer.epoch=3"], ["Key 'epoch' not in 'TrainerConfig'"]),
        (["trainer.epochs=abc"], ["trainer.epochs", "abc"]),
        (["optimizer.lr=-1"], ["error: optimizer.lr must be a finite number > 0, got -1"]),
        (["optimizer.lr=nan"], ["error: optimizer.lr must be a finite number > 0, got nan"]),
        (["trainer.epochs=0"], ["error: trainer.epochs must be >= 1, got 0"]),
        (["model=nope"], ["Could not find 'model/nope'", "lenet5, lenet5_classic"]),
        (["pooling=avg,max"], ["Ambiguous value for argument 'pooling=avg,max'", "--multirun"]),
        (["optimizer.lr=0.1)"], ["Error parsing override 'optimizer.lr=0.1)'"]),
        (["optimizer.lrr=1"], ["Could not override 'optimizer.lrr'", "+optimizer.lrr=1"]),
    ],
)
@pytest.mark.slow
def test_config_mistakes_end_in_a_clear_message(tmp_path, args, fragments):
    assert_one_line_error(run_train(*args, cwd=tmp_path), *fragments)


@pytest.mark.slow
def test_missing_data_without_download_names_the_folder(tmp_path):
    result = run_train("data.root=nowhere", "data.download=false", cwd=tmp_path)
    assert_one_line_error(result, "error: mnist not found", str(tmp_path / "nowhere" / "MNIST" / "raw"), "data.root")
    assert not (tmp_path / "outputs").exists()  # refused before the run has a folder


@pytest.mark.slow
def test_a_selection_key_no_row_holds_is_refused_before_the_run_has_a_folder(tmp_path):
    result = run_train(
        "data=synthetic", "callbacks=early_stopping", "callbacks.early_stopping.monitor=nope", cwd=tmp_path
    )
    assert_one_line_error(result, "error: callbacks.early_stopping.monitor=nope is not a key of the metrics rows")
    no_val = run_train("data=synthetic", "data.val_size=0", "callbacks=early_stopping", cwd=tmp_path)
    assert_one_line_error(no_val, "monitor=val_loss is not a key", "data.val_size=0 leaves no validation split")
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_a_failed_download_and_online_logging_without_credentials_leave_no_folder_behind(tmp_path):
    offline = tmp_path / "offline"  # torchvision's mirrors, pointed at a port where nothing answers
    offline.mkdir()
    (offline / "sitecustomize.py").write_text(
        "import torchvision.datasets\ntorchvision.datasets.MNIST.mirrors = ['http://127.0.0.1:9/']\n"
    )
    (tmp_path / "mydata").mkdir()
    (tmp_path / "mydata" / "notes.txt").write_text("mine")
    env = {"PYTHONPATH": f"{offline}:{os.environ.get('PYTHONPATH', '')}"}
    failed = run_train("data.root=mydata", "logger=none", cwd=tmp_path, env=env)
    raw = tmp_path / "mydata" / "MNIST" / "raw"
    assert_one_line_error(failed, f"error: mnist is not in {raw} and {tmp_path / 'mydata'}", "data.download=false")
    assert [p.name for p in (tmp_path / "mydata").iterdir()] == ["notes.txt"]  # no lock, no folders left
    online = run_train(
        "data=synthetic", "logger.wandb.mode=online", cwd=tmp_path, env={"HOME": str(tmp_path), "WANDB_API_KEY": ""}
    )
    assert_one_line_error(online, "error: logger.wandb.mode=online needs W&B credentials")
    assert not (tmp_path / "outputs").exists()  # neither left a run folder (nor a W&B run to upload)


@pytest.mark.slow
def test_a_truncated_idx_file_is_named(tmp_path):
    raw = write_mnist(tmp_path / "data" / "MNIST" / "raw", n_train=40, n_test=20)
    (raw / "t10k-images-idx3-ubyte").write_bytes((raw / "t10k-images-idx3-ubyte").read_bytes()[:-50])
    result = run_train("logger=none", "data.download=false", cwd=tmp_path)
    assert_one_line_error(result, "error:", "t10k-images-idx3-ubyte is truncated or corrupt")  # mismatches: test_data


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_unavailable_device_is_a_clear_error(tmp_path):
    assert_one_line_error(run_train(*FAST, "device=cuda", cwd=tmp_path), "error: device=cuda", "device=cpu")


@pytest.mark.slow
def test_unwritable_output_dir_is_a_clear_error(tmp_path):
    (tmp_path / "afile").write_text("")
    result = run_train(*FAST, "hydra.run.dir=afile/run", cwd=tmp_path)
    assert_one_line_error(result, "error: cannot write the output dir afile/run", "hydra.run.dir")
