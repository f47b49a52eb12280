"""hydra/launcher=fused: a sweep's jobs trained together, each still exactly a run of its own."""

import signal

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    REAL_DATA,
    job_summaries,
    read_json,
    read_jsonl,
    run_train,
    start_train,
    wait_for_first_epoch,
    without_time,
)

from hydra_plugins.lenet.fused import groups_of
from lenet.core.data import Split
from lenet.core.models import create_model
from lenet.core.optim import Scheduler
from lenet.core.schedules import onecycle
from lenet.run.group import fused_key
from lenet.training.callbacks import Callbacks
from lenet.training.fused import VmappedSteps, draws_random_numbers
from lenet.training.loop import FitSettings, fit_group, train_epoch, train_epochs
from lenet.training.state import TrainState

TINY = [
    "logger=none",
    "data=synthetic",
    "data.train_size=512",
    "data.test_size=128",
    "trainer.batch_size=64",
    "device=cpu",
    "trainer.epochs=2",
]
LRS = (0.05, 0.1, 0.02)


def runs(lrs=LRS, dtype=torch.float64):
    """One run per lr, each its own model (seeded as a run alone), SGD and one-cycle schedule."""
    built = []
    for seed, lr in enumerate(lrs):
        torch.manual_seed(seed)
        model = create_model("lenet5").to(dtype)
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
        generator = torch.Generator().manual_seed(seed)
        built.append(TrainState(model, opt, Scheduler(onecycle(opt, 30), "step"), F.cross_entropy, generator))
    return built


def data(dtype=torch.float64, n=192):
    g = torch.Generator().manual_seed(0)
    return Split(torch.randn(n, 1, 32, 32, generator=g, dtype=dtype), torch.randint(0, 10, (n,), generator=g))


def test_in_a_fused_group_each_runs_gradients_and_updates_are_its_own_alone():
    settings = FitSettings(train=data(), test=data(), epochs=1, batch_size=64)
    fused, alone = runs(), runs()
    steps = VmappedSteps(settings)
    steps.prepare(fused, settings, [Callbacks() for _ in fused])
    train_epochs(fused, settings, [Callbacks() for _ in fused], steps)
    for run in alone:  # each alone, from the same start, in its own order
        train_epoch(run, settings, Callbacks())
    for a, b in zip(fused, alone):
        for (name, p), q in zip(a.model.named_parameters(), b.model.parameters()):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=1e-9, msg=name)
        assert a.step == b.step == 3


def test_a_diverging_run_leaves_the_group_and_the_others_go_on():
    group = runs((0.05, 1e9, 0.05), torch.float32)
    settings = FitSettings(train=data(torch.float32), test=data(torch.float32), epochs=3, batch_size=64)
    fit_group(group, settings, [Callbacks() for _ in group], VmappedSteps(settings))
    assert [type(r.error).__name__ for r in group] == ["NoneType", "DivergedError", "NoneType"]
    assert "the loss became" in str(group[1].error) and [r.epoch for r in group] == [3, 0, 3]


def test_a_model_that_draws_random_numbers_is_found_whatever_its_class():
    class Noisy(torch.nn.Module):
        def forward(self, x):
            return x + torch.randn_like(x) if self.training else x  # no Dropout class anywhere

    quiet, state = create_model("lenet5"), torch.get_rng_state()
    assert draws_random_numbers(Noisy(), torch.zeros(2, 3)) and not draws_random_numbers(
        quiet, torch.zeros(2, 1, 32, 32)
    )
    assert torch.equal(state, torch.get_rng_state())  # the probe puts the generator back


def test_jobs_share_a_program_only_where_they_differ_in_seed_and_optimizer_settings():
    base = {
        "seed": 0,
        "optimizer": {"lr": 0.1, "momentum": 0.9},
        "model": {"name": "lenet5"},
        "trainer": {},
        "scheduler": {},
        "logger": {},
        "callbacks": {},
        "data": {"root": "a"},
    }
    other_seed = {**base, "seed": 3, "optimizer": {"lr": 0.5, "momentum": 0.8}, "logger": {"wandb": {}}}
    other_model = {**base, "model": {"name": "lenet5_classic"}}
    assert fused_key(base) == fused_key(other_seed) != fused_key(other_model)
    assert fused_key({**base, "data": {"root": "b"}}) != fused_key(base)  # other data: another program
    assert fused_key({**base, "callbacks": {"ema": {}}}) is not None  # callbacks live in every member
    assert fused_key({**base, "trainer": {"cuda_graphs": True}}) is None  # its own captured step
    assert fused_key({**base, "trainer": {"cuda_graphs": "auto"}}) is not None  # the default fuses
    assert groups_of(["a", "b", "a", None, "a"], group_size=2) == [[0, 2], [1], [3], [4]]


@pytest.mark.slow
def test_a_fused_sweep_writes_every_job_as_a_run_alone_and_a_diverging_job_fails_alone(tmp_path):
    fused = run_train(
        "-m", "hydra/launcher=fused", "seed=0,1", "optimizer.lr=0.05,1e9", *TINY, "hydra.sweep.dir=fused", cwd=tmp_path
    )
    assert fused.returncode == 1 and "2 of 4 jobs did not complete" in fused.stderr, fused.stderr
    assert "Launching 4 jobs as 1 programs" in fused.stdout + fused.stderr
    alone = run_train(
        "-m", "seed=0,1", "optimizer.lr=0.05", *TINY, "device.num_threads=1", "hydra.sweep.dir=alone", cwd=tmp_path
    )
    assert alone.returncode == 0, alone.stderr
    summaries = job_summaries(tmp_path / "fused")
    assert [s["status"] for s in summaries] == ["completed", "failed", "completed", "failed"]
    assert "the loss became nan" in summaries[1]["error"]
    for fused_job, alone_job in (("0", "0"), ("2", "1")):  # each one exactly its own run's rows and weights
        assert without_time(read_jsonl(tmp_path / "fused" / fused_job / "metrics.jsonl")) == without_time(
            read_jsonl(tmp_path / "alone" / alone_job / "metrics.jsonl")
        )
        for name in (".hydra/config.yaml", "checkpoint.pt", "lenet_synthetic.pth", "train.log"):
            assert (tmp_path / "fused" / fused_job / name).is_file()


@pytest.mark.slow
def test_sigterm_stops_a_fused_group_and_resuming_ends_bit_for_bit(tmp_path):
    args = ["-m", "hydra/launcher=fused", "seed=0,1,2", *TINY, "data.train_size=3000", "trainer.epochs=3"]
    full = run_train(*args, "hydra.sweep.dir=full", cwd=tmp_path, timeout=300)
    assert full.returncode == 0, full.stderr
    proc = start_train(*args, "hydra.sweep.dir=part", cwd=tmp_path)
    wait_for_first_epoch(tmp_path / "part" / "0" / "metrics.jsonl")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err
    assert {s["status"] for s in job_summaries(tmp_path / "part")} == {"interrupted"}
    metrics = [tmp_path / "part" / str(n) / "metrics.jsonl" for n in range(3)]
    done = [len(read_jsonl(m)) if m.exists() else 0 for m in metrics]  # a job that had not started has none
    assert done[0] >= 1
    resumed = run_train(*args, "hydra.sweep.dir=part", "trainer.resume=true", cwd=tmp_path, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    for n in range(3):
        assert without_time(read_jsonl(tmp_path / "part" / str(n) / "metrics.jsonl")) == without_time(
            read_jsonl(tmp_path / "full" / str(n) / "metrics.jsonl")
        )
        a, b = (
            torch.load(tmp_path / "part" / str(n) / "lenet_synthetic.pth"),
            torch.load(tmp_path / "full" / str(n) / "lenet_synthetic.pth"),
        )
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert read_json(tmp_path / "part" / str(n) / "summary.json")["resumed_from_epoch"] == (done[n] or None)


@pytest.mark.slow
@pytest.mark.skipif(not (REAL_DATA / "MNIST" / "raw").is_dir(), reason="needs the real MNIST copy beside the repo")
def test_fused_and_separate_runs_of_seeds_0_to_3_agree_on_mnist(tmp_path):
    common = ["seed=0,1,2,3", f"data.root={REAL_DATA}", "logger=none", "trainer.epochs=2"]
    fused = run_train("-m", "hydra/launcher=fused", *common, "hydra.sweep.dir=fused", cwd=tmp_path, timeout=900)
    alone = run_train(
        "-m",
        "hydra/launcher=processes",
        "hydra.launcher.n_jobs=2",
        *common,
        "hydra.sweep.dir=alone",
        cwd=tmp_path,
        timeout=900,
    )
    assert fused.returncode == alone.returncode == 0, fused.stderr + alone.stderr
    mean = [sum(s["final_test_acc"] for s in job_summaries(tmp_path / d)) / 4 for d in ("fused", "alone")]
    assert abs(mean[0] - mean[1]) <= 0.0015


def test_the_one_program_path_records_every_member_as_a_run_alone(tmp_path):
    """The GPU's path (one vmapped step for all), run here on the CPU: each member its own folder and outcome."""
    from conftest import compose_config

    from lenet.run.group import Member, run_group
    from lenet.run.job import JobInfo

    members = []
    for seed, lr in ((0, 0.05), (1, 1e9), (2, 0.1)):
        cfg, record = compose_config("data.train_size=256", "trainer.epochs=2", f"seed={seed}", f"optimizer.lr={lr}")
        (tmp_path / str(seed)).mkdir()
        members.append(Member(cfg, JobInfo(run_dir=tmp_path / str(seed), cwd=tmp_path, label=f"seed={seed}"), record))
    results = run_group(members, mode="vmapped")
    statuses = [read_json(tmp_path / str(n) / "summary.json")["status"] for n in range(3)]
    assert statuses == ["completed", "failed", "completed"] and "the loss became" in str(results[1])
    for n in (0, 2):
        assert len(read_jsonl(tmp_path / str(n) / "metrics.jsonl")) == 2 and results[n].status.value == "completed"
        state = torch.load(tmp_path / str(n) / "checkpoint.pt", weights_only=True)
        assert len(state["optimizer"]["param_groups"]) == 1 and len(state["scheduler"]["base_lrs"]) == 1
        create_model("lenet5").load_state_dict(torch.load(tmp_path / str(n) / "lenet_synthetic.pth"))


@pytest.mark.slow
def test_callbacks_fuse_and_the_one_program_path_runs_end_to_end(tmp_path):
    args = ["-m", "hydra/launcher=fused", "hydra.launcher.mode=vmapped", "seed=0,1", *TINY]
    result = run_train(*args, "callbacks=[ema,early_stopping]", "hydra.sweep.dir=sweep", cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Launching 2 jobs as 1 programs" in result.stdout + result.stderr
    for summary in job_summaries(tmp_path / "sweep"):
        assert summary["status"] == "completed" and summary["eval_weights"] == "ema(decay=0.999)"
        assert summary["callbacks"] == ["early_stopping", "ema"] and summary["best_weights"] == "best.pth"
