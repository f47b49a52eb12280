"""lenet from Python: train and sweep run exactly what the command line runs, from any folder."""

import pytest
from conftest import SYNTHETIC, read_jsonl, run_train, without_time

from lenet import RunResult, sweep, train
from lenet.core.errors import UserError


@pytest.mark.slow
def test_train_runs_what_the_command_line_runs_and_returns_its_outcome(tmp_path, capsys):
    overrides = [*SYNTHETIC, "trainer.epochs=2", "optimizer=adam"]
    result = train(overrides, cwd=tmp_path)
    assert isinstance(result, RunResult) and result.status == "completed" and result.error is None
    assert result.run_dir.parent.parent == tmp_path / "outputs"  # the folder the command line gives it
    assert result.summary["final_test_acc"] == result.rows[-1]["test_acc"] and len(result.rows) == 2
    shown = capsys.readouterr()
    assert "done: final test accuracy" in shown.out and "Warning" not in shown.err  # its output, as it came
    typed = run_train(*overrides, "hydra.run.dir=typed", cwd=tmp_path)
    assert typed.returncode == 0
    assert without_time(read_jsonl(tmp_path / "typed" / "metrics.jsonl")) == without_time(result.rows)
    recorded = (result.run_dir / ".hydra" / "overrides.yaml").read_text()
    assert "lenet_api" not in recorded and "optimizer=adam" in recorded  # the same job, nothing of the API in it


@pytest.mark.slow
def test_errors_are_exceptions_and_a_sweep_returns_every_jobs_outcome(tmp_path):
    with pytest.raises(UserError, match=r"^trainer.epochs must be >= 1, got 0$"):
        train([*SYNTHETIC, "trainer.epochs=0"], cwd=tmp_path, echo=False)
    assert not (tmp_path / "outputs").exists()
    jobs = sweep([*SYNTHETIC, "trainer.epochs=1", "optimizer.lr=0.05,1e9", "hydra.sweep.dir=sweep"], cwd=tmp_path)
    assert [(j.status, j.run_dir) for j in jobs] == [
        ("completed", tmp_path / "sweep" / "0"),
        ("failed", tmp_path / "sweep" / "1"),
    ]
    assert "the loss became nan" in jobs[1].error and jobs[0].rows and not jobs[1].rows
