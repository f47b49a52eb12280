"""The benchmark runs and reports what it says; its figures are not asserted (machines are noisy)."""

import json
import subprocess
import sys

from conftest import REPO, write_mnist


def bench(*args, cwd):
    result = subprocess.run([sys.executable, "-m", "lenet.bench", *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_steps_mode_reports_both_pipelines_and_their_ratio(tmp_path):
    write_mnist(tmp_path / "MNIST" / "raw", n_train=256, n_test=64)
    report = json.loads(bench("--root", str(tmp_path), "--steps", "3", "--rounds", "2", "--batch-size", "32", "--json", cwd=REPO))
    for name in ("usual", "harness"):
        assert report[name]["images_per_second"] > 0 and len(report[name]["images_per_second_each_round"]) == 2
        assert report[name]["peak_memory_mb"] > 0
    assert report["speedup"] == report["harness"]["images_per_second"] / report["usual"]["images_per_second"]
    assert report["setup"]["batch_size"] == 32 and report["setup"]["steps"] == 3 and report["setup"]["device"] == "cpu"
    text = bench("--root", str(tmp_path), "--steps", "2", "--rounds", "1", "--batch-size", "32", cwd=REPO)
    assert "images/s" in text and "speed-up" in text


def test_process_mode_times_train_py_against_the_usual_script(tmp_path):
    write_mnist(tmp_path / "MNIST" / "raw", n_train=128, n_test=64)
    report = json.loads(bench("process", "--root", str(tmp_path), "--epochs", "1", "--rounds", "1", "--json", cwd=REPO))
    assert report["usual"]["seconds"] > 0 and report["harness"]["seconds"] > 0
    assert 0 <= report["usual"]["final_test_acc_each_round"][0] <= 1
    assert 0 <= report["harness"]["final_test_acc_each_round"][0] <= 1
    assert report["harness"]["startup_seconds_each_round"][0] > 0
    assert report["speedup"] == report["usual"]["seconds"] / report["harness"]["seconds"]
