"""The benchmark runs and reports what it says; its figures are not asserted (machines are noisy)."""

import json
import subprocess
import sys

import pytest
from conftest import REPO, write_mnist


def bench(*args, cwd):
    result = subprocess.run(
        [sys.executable, "-m", "lenet.bench", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.slow
def test_steps_mode_reports_both_pipelines_and_their_ratio(tmp_path):
    write_mnist(tmp_path / "MNIST" / "raw", n_train=256, n_test=64)
    report = json.loads(
        bench("--root", str(tmp_path), "--steps", "3", "--rounds", "2", "--batch-size", "32", "--json", cwd=REPO)
    )
    for name in ("usual", "harness"):
        assert report[name]["images_per_second"] > 0 and len(report[name]["images_per_second_each_round"]) == 2
        assert report[name]["peak_memory_mb"] > 0
    assert report["speedup"] == report["harness"]["images_per_second"] / report["usual"]["images_per_second"]
    assert report["setup"]["batch_size"] == 32 and report["setup"]["steps"] == 3 and report["setup"]["device"] == "cpu"


def test_reports_print_as_tables(capsys):
    from lenet.tools.bench import _print_process, _print_steps

    setup = {
        "device": "cpu",
        "batch_size": 64,
        "steps": 10,
        "rounds": 1,
        "cpu_cores": 2,
        "torch": "x",
        "epochs": 2,
        "logger": "none",
        "recipe": "seed",
    }
    _print_steps(
        {
            "usual": {"images_per_second": 1000.0, "peak_memory_mb": 10.0, "data_memory_mb": 1.0},
            "harness": {"images_per_second": 3500.0, "peak_memory_mb": 20.0, "data_memory_mb": 2.0},
            "speedup": 3.5,
            "setup": setup,
        }
    )
    out = capsys.readouterr().out
    assert "1000 images/s" in out and "3500 images/s" in out and "speed-up 3.50x" in out
    _print_process(
        {
            "usual": {"seconds": 30.0, "final_test_acc_each_round": [0.98], "final_test_acc_mean": 0.98},
            "harness": {
                "seconds": 10.0,
                "final_test_acc_each_round": [0.981],
                "final_test_acc_mean": 0.981,
                "startup_seconds_each_round": [2.5],
            },
            "speedup": 3.0,
            "setup": setup,
        }
    )
    out = capsys.readouterr().out
    assert (
        "30.0 s" in out and "98.10%" in out and "start-up to the first training step: 2.50 s" in out and "3.00x" in out
    )


@pytest.mark.slow
def test_process_mode_times_train_py_against_the_usual_script(tmp_path):
    write_mnist(tmp_path / "MNIST" / "raw", n_train=128, n_test=64)
    report = json.loads(bench("process", "--root", str(tmp_path), "--epochs", "1", "--rounds", "2", "--json", cwd=REPO))
    assert report["usual"]["seconds"] > 0 and report["harness"]["seconds"] > 0
    for name in ("usual", "harness"):
        accs = report[name]["final_test_acc_each_round"]
        assert len(accs) == 2 and all(0 <= a <= 1 for a in accs)
        assert report[name]["final_test_acc_mean"] == sum(accs) / 2
    assert all(seconds > 0 for seconds in report["harness"]["startup_seconds_each_round"])
    assert all(seconds > 0 for seconds in report["harness"]["seconds_per_epoch_each_round"])
    assert report["speedup"] == report["usual"]["seconds"] / report["harness"]["seconds"]


@pytest.mark.slow
def test_interleaved_mode_times_each_candidate_round_after_round(tmp_path):
    write_mnist(tmp_path / "MNIST" / "raw", n_train=256, n_test=64)
    out = bench(
        "interleaved",
        "--root",
        str(tmp_path),
        "--rounds",
        "2",
        "--override",
        "trainer.epochs=1",
        "--candidate",
        "trainer.batch_size=32",
        "--candidate",
        "trainer.batch_size=64 optimizer=adam",
        "--json",
        cwd=REPO,
    )
    report = json.loads(out)
    assert [c["overrides"] for c in report["candidates"]] == [
        ["trainer.batch_size=32"],
        ["trainer.batch_size=64", "optimizer=adam"],
    ]
    for candidate in report["candidates"]:
        assert len(candidate["seconds_per_epoch_each_round"]) == 2 and candidate["seconds_per_epoch"] > 0
        assert candidate["process_seconds"] > candidate["seconds_per_epoch"]


@pytest.mark.slow
def test_reference_script_logs_to_wandb_like_a_usual_script(tmp_path):
    from wandb_records import OfflineRun

    write_mnist(tmp_path / "MNIST" / "raw", n_train=128, n_test=64)
    out = bench("reference", "--root", str(tmp_path), "--epochs", "2", "--wandb-dir", str(tmp_path / "usual"), cwd=REPO)
    final_test_acc = json.loads(out.splitlines()[-1])["final_test_acc"]
    run = OfflineRun(tmp_path / "usual")
    assert [row["epoch"] for row in run.history] == [1, 2]
    assert run.history[-1]["test_acc"] == run.summary["final_test_acc"] == final_test_acc
    assert run.exit_code == 0


def test_time_to_accuracy_counts_from_process_start_to_the_first_epoch_at_the_target(tmp_path):
    from lenet.tools.bench import time_to_accuracy

    rows = [{"epoch": e, "test_acc": acc, "seconds": 2.0} for e, acc in ((1, 0.98), (2, 0.991), (3, 0.995))]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "summary.json").write_text(
        json.dumps({"status": "completed", "startup_seconds": 3.0, "final_test_acc": 0.995})
    )
    report = time_to_accuracy(tmp_path, 0.99)
    assert report["reached"] == {"epoch": 2, "seconds": 7.0, "training_seconds": 4.0}
    assert report["final_test_acc"] == 0.995
    assert time_to_accuracy(tmp_path, 0.999)["reached"] is None
