"""A real single-node SLURM cluster (tests/slurm/cluster.sh): a sweep through hydra/launcher=slurm, one job requeued."""

import os
import subprocess
import time
from pathlib import Path

import pytest
from conftest import read_json, read_jsonl, run_train, start_train, wait_for_first_epoch, without_time

CLUSTER = Path(__file__).parent / "slurm" / "cluster.sh"
JOB = [
    "logger=none",
    "data=synthetic",
    "data.train_size=12000",
    "data.test_size=200",
    "trainer.batch_size=64",
    "device=cpu",
    "device.num_threads=1",
    "trainer.epochs=8",
]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """SLURM_CONF of a running single-node cluster; skips where one cannot run (not root, no apt)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    folder = tmp_path_factory.mktemp("slurm") / "cluster"
    started = subprocess.run(["bash", str(CLUSTER), "start", str(folder)], capture_output=True, text=True, timeout=600)
    if started.returncode == 77:
        pytest.skip(started.stderr.strip())
    assert started.returncode == 0, started.stderr
    yield started.stdout.strip().splitlines()[-1]
    subprocess.run(["bash", str(CLUSTER), "stop", str(folder)], capture_output=True, timeout=60)


def _state(job, env):
    return subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], env=env, capture_output=True, text=True).stdout


@pytest.mark.slow
def test_a_sweep_on_slurm_completes_and_a_requeued_job_resumes_bit_for_bit(slurm, tmp_path):
    env = {**os.environ, "SLURM_CONF": slurm, "WANDB_MODE": "offline"}
    # the README's SLURM recipe, with the resources of this 2-core test node
    args = [
        "-m",
        "hydra/launcher=slurm",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=1",
        "seed=0,1,2,3",
        *JOB,
        "hydra.sweep.dir=sweep",
    ]
    sweep = start_train(*args, cwd=tmp_path, env=env)
    wait_for_first_epoch(tmp_path / "sweep" / "1" / "metrics.jsonl", timeout=120)
    squeue = subprocess.run(["squeue", "-h", "-t", "running", "-o", "%i"], env=env, capture_output=True, text=True)
    (job,) = [j for j in squeue.stdout.split() if j.endswith("_1")]
    subprocess.run(["scontrol", "requeue", job], env=env, check=True)  # as a pre-emption does
    deadline = time.time() + 60
    while time.time() < deadline and "PENDING" not in _state(job, env):  # back in the queue once it was stopped
        time.sleep(0.2)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=env, check=True)  # no 2-min hold
    out, err = sweep.communicate(timeout=170)
    assert sweep.returncode == 0, err
    assert "Traceback" not in err and "Bypassing sacct error" not in out + err  # quiet without accounting
    summaries = [read_json(tmp_path / "sweep" / str(n) / "summary.json") for n in range(4)]
    assert [s["status"] for s in summaries] == ["completed"] * 4
    assert summaries[1]["resumed_from_epoch"] >= 1  # the requeued job continued from its checkpoint
    alone = run_train("seed=1", *JOB, "hydra.run.dir=alone", cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr
    assert without_time(read_jsonl(tmp_path / "sweep" / "1" / "metrics.jsonl")) == without_time(
        read_jsonl(tmp_path / "alone" / "metrics.jsonl")
    )
