"""A run's folder is its own: never shared with another run, never rewritten by a refused or failed resume."""

import pytest
from conftest import TINY, read_json, run_train


@pytest.mark.slow
def test_a_dated_folder_taken_by_another_run_gets_a_suffix(tmp_path):
    # a dated pattern that two runs always share: as two runs started in the same second share Hydra's default
    pattern = "hydra.run.dir=outputs/${now:%Y}"
    first, second = (run_train(*TINY, pattern, cwd=tmp_path) for _ in range(2))
    assert first.returncode == 0 and second.returncode == 0, second.stderr
    folders = sorted(p.name for p in (tmp_path / "outputs").iterdir())
    assert len(folders) == 2 and folders[1] == f"{folders[0]}-1"
    assert all(read_json(tmp_path / "outputs" / f / "summary.json")["status"] == "completed" for f in folders)


@pytest.mark.slow
def test_a_named_folder_holding_a_run_is_refused_and_left_as_it_was(tmp_path):
    assert run_train(*TINY, "hydra.run.dir=run", cwd=tmp_path).returncode == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    result = run_train(*TINY, "seed=1", "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: run already holds a run; continue it with")
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()} == before


@pytest.mark.slow
def test_a_refused_resume_leaves_the_runs_config_and_summary_alone(tmp_path):
    assert run_train(*TINY, "hydra.run.dir=run", cwd=tmp_path).returncode == 0
    overrides = (tmp_path / "run" / ".hydra" / "overrides.yaml").read_text()
    summary = (tmp_path / "run" / "summary.json").read_text()
    result = run_train(*TINY, "optimizer.lr=0.01", "trainer.resume=true", "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 1 and "it was made with optimizer.lr=0.1 (now 0.01)" in result.stderr
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"junk")  # and a resume that fails on its checkpoint
    result = run_train(*TINY, "trainer.resume=true", "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 1 and "cannot resume from" in result.stderr
    assert (tmp_path / "run" / ".hydra" / "overrides.yaml").read_text().startswith(overrides.rstrip())
    assert (tmp_path / "run" / "summary.json").read_text() == summary


@pytest.mark.slow
def test_sweeps_get_their_own_dirs_and_a_named_dir_holding_a_sweep_is_refused(tmp_path):
    sweep = ["-m", *TINY, "seed=0,1"]
    for _ in range(2):  # a dated pattern both share, as two sweeps started in the same second share Hydra's
        assert run_train(*sweep, "hydra.sweep.dir=multirun/${now:%Y}", cwd=tmp_path).returncode == 0
    (first,) = [p for p in (tmp_path / "multirun").iterdir() if "-" not in p.name]
    second = first.with_name(f"{first.name}-1")
    for folder in (first, second):  # each sweep's jobs in its own dir
        assert sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name != ".hydra") == ["0", "1"]
    before = {p: p.read_bytes() for p in first.rglob("*") if p.is_file()}
    result = run_train(*sweep, f"hydra.sweep.dir={first}", cwd=tmp_path)
    assert result.returncode == 1 and result.stderr.strip().endswith(
        "choose another hydra.sweep.dir, continue it with trainer.resume=true, or delete that folder to start over there"
    )
    assert {p: p.read_bytes() for p in first.rglob("*") if p.is_file()} == before
