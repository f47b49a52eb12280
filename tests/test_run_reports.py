"""What a run and a sweep say at their end, the sweep preview, and where a failed run's error is kept."""

import pytest
from conftest import TINY, run_train


@pytest.mark.slow
def test_preview_lists_the_jobs_checks_each_config_and_makes_no_folder(tmp_path):
    result = run_train("-m", "+experiment=pooling", "hydra/launcher=preview", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "#0: pooling=avg seed=0 +experiment=pooling" and lines[9].startswith("#9: pooling=max seed=4")
    assert lines[-1] == "10 jobs; run them without hydra/launcher=preview" and "Traceback" not in result.stderr
    assert lines[-2] == "with hydra/launcher=fused: 2 programs (#0,#1,#2,#3,#4 | #5,#6,#7,#8,#9)"
    assert list(tmp_path.iterdir()) == []  # nothing ran, nothing was written

    result = run_train("-m", "trainer.epochs=0,1", "hydra/launcher=preview", cwd=tmp_path)
    assert result.returncode == 1 and "error: 1 of 2 jobs have an invalid config" in result.stderr
    assert "#0: trainer.epochs=0  <- invalid: trainer.epochs must be >= 1, got 0" in result.stdout
    assert "#1: trainer.epochs=1\n" in result.stdout and list(tmp_path.iterdir()) == []

    result = run_train("-m", "optimizer.lr=0.1,-1", "+optimizer.bogus=1", "hydra/launcher=preview", cwd=tmp_path)
    assert result.returncode == 1 and "error: 2 of 2 jobs have an invalid config" in result.stderr  # built as at start
    assert "<- invalid: torch.optim.sgd.SGD takes no argument optimizer.bogus=1" in result.stdout
    assert (
        "#1: optimizer.lr=-1 +optimizer.bogus=1  <- invalid: optimizer.lr must be a finite number > 0" in result.stdout
    )

    result = run_train("-m", "optimizer=sgd,adamm", cwd=tmp_path)  # a sweep that does not compose: nothing written
    assert (
        result.returncode == 1
        and result.stderr.count("\n") == 1
        and "job #1 (optimizer=adamm) does not compose" in (result.stderr)
    )
    assert list(tmp_path.iterdir()) == []

    result = run_train("optimizer.lr=-1", cwd=tmp_path)  # a single run its own checks refuse: no folder either
    assert result.returncode == 1 and "error: optimizer.lr must be a finite number > 0" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_sweep_ends_with_one_line_per_job_and_the_compare_command(tmp_path):
    result = run_train(
        "-m",
        "pooling=avg,max",
        "data=synthetic,mnist",
        "data.download=false",
        TINY[0],
        *TINY[2:],
        "hydra.sweep.dir=my sweep",
        cwd=tmp_path,
    )
    assert result.returncode == 1
    out = result.stdout.splitlines()
    start = out.index("sweep my sweep: 4 jobs (folder, label, status, final test accuracy)")
    rows = [line.split("  ") for line in out[start + 1 : start + 5]]
    assert [(r[1], r[2], r[3]) for r in rows] == [
        ("0", "data=synthetic,pooling=avg", "completed"),
        ("1", "data=mnist,pooling=avg", "failed"),
        ("2", "data=synthetic,pooling=max", "completed"),
        ("3", "data=mnist,pooling=max", "failed"),
    ]
    assert rows[0][4].endswith("%") and rows[1][4] == "-"
    assert out[start + 5] == "compare them: python -m lenet.compare 'my sweep'"
    assert "error: 2 of 4 jobs did not complete" in result.stderr


@pytest.mark.slow
def test_parallel_jobs_label_their_lines(tmp_path):
    result = run_train(
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "pooling=avg,max",
        *TINY,
        "hydra.sweep.dir=sweep",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    epoch_lines = [line for line in (result.stdout + result.stderr).splitlines() if "epoch 1/1" in line]
    assert sorted(line.split(" - ")[1].split()[0] for line in epoch_lines) == ["[pooling=avg]", "[pooling=max]"]


@pytest.mark.slow
def test_a_failed_run_keeps_its_error_in_train_log(tmp_path):
    result = run_train(*TINY, "optimizer.lr=1e9", "logger=none", "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 1
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: the loss became nan in epoch 1")
    assert (tmp_path / "run" / "train.log").read_text().strip().endswith(error)
