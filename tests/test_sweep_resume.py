"""Resuming a sweep: the same command, the same hydra.sweep.dir and trainer.resume=true complete only what is missing."""

import json
import signal

import pytest
from conftest import read_json, read_jsonl, run_train, start_train, wait_for_first_epoch, without_time

TINY = [
    "logger=none",
    "data=synthetic",
    "data.train_size=2000",
    "data.test_size=128",
    "trainer.batch_size=64",
    "device=cpu",
    "device.num_threads=1",
    "trainer.epochs=3",
]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_a_stopped_sweep_resumed_completes_only_what_is_missing(tmp_path, launcher):
    sweep = ["-m", f"hydra/launcher={launcher}", "seed=0,1,2", "optimizer.lr=0.05,1e9", *TINY]
    if launcher == "joblib":
        sweep.append("hydra.launcher.n_jobs=1")  # one at a time: the signal lands in a known job
    proc = start_train(*sweep, "hydra.sweep.dir=sweep", cwd=tmp_path)
    wait_for_first_epoch(tmp_path / "sweep" / "2" / "metrics.jsonl")  # job 2 (seed=1, lr=0.05) has an epoch
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err
    first = (tmp_path / "sweep" / "0" / "summary.json").read_bytes()
    assert read_json(tmp_path / "sweep" / "1" / "summary.json")["status"] == "failed"  # lr=1e9 diverged
    assert read_json(tmp_path / "sweep" / "2" / "summary.json")["status"] == "interrupted"

    longer = [a.replace("trainer.epochs=3", "trainer.epochs=4") for a in sweep]
    changed = run_train(*longer, "trainer.resume=true", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert (
        changed.returncode == 1
        and "cannot continue the sweep in sweep: it was started with trainer.epochs=3 (now 4)" in changed.stderr
    )

    resumed = run_train(*sweep, "trainer.resume=true", "hydra.sweep.dir=sweep", cwd=tmp_path, timeout=300)
    assert resumed.returncode == 1  # the diverging jobs fail again, and the verdict names them
    assert (tmp_path / "sweep" / "0" / "summary.json").read_bytes() == first  # completed: kept as it was
    summaries = {n: read_json(tmp_path / "sweep" / str(n) / "summary.json") for n in range(6)}
    assert [summaries[n]["status"] for n in range(6)] == ["completed", "failed"] * 3
    assert summaries[2]["resumed_from_epoch"] >= 1  # continued from its checkpoint
    fresh = run_train("seed=1", "optimizer.lr=0.05", *TINY, "hydra.run.dir=fresh", cwd=tmp_path)
    assert fresh.returncode == 0
    assert without_time(read_jsonl(tmp_path / "sweep" / "2" / "metrics.jsonl")) == without_time(
        read_jsonl(tmp_path / "fresh" / "metrics.jsonl")
    )  # bit for bit where an uninterrupted run ends
    assert "3 of 6 jobs did not complete" in resumed.stderr


@pytest.mark.slow
def test_a_study_grows_by_more_seeds_and_another_variant_and_refuses_another_setting(tmp_path):
    from lenet.tools.compare import compare

    base = ["-m", *TINY, "hydra.sweep.dir=study", "trainer.epochs=1"]
    assert run_train(*base, "pooling=avg,max", "seed=0,1", cwd=tmp_path).returncode == 0
    kept = (tmp_path / "study" / "0" / "summary.json").read_bytes()
    more = run_train(*base, "pooling=avg,max,subsample", "seed=0,1,2", "trainer.resume=true", cwd=tmp_path)
    assert more.returncode == 0, more.stderr
    assert more.stdout.count("completed before: kept as it is") + more.stderr.count("completed before: kept") == 4
    record = json.loads((tmp_path / "study" / "sweep.json").read_text())
    assert len(record["jobs"]) == 9 and len({tuple(v) for v in record["jobs"].values()}) == 9  # grown, one folder each
    assert (tmp_path / "study" / "0" / "summary.json").read_bytes() == kept  # an existing job as it was
    assert "9 jobs of" in compare(tmp_path / "study") and "pooling=subsample" in compare(tmp_path / "study")
    other = run_train(*base, "pooling=avg,max", "seed=0,1", "optimizer=adam", "trainer.resume=true", cwd=tmp_path)
    assert other.returncode == 1 and "it was started with optimizer=not set (now adam)" in other.stderr
