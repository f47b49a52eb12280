"""Loop variants as callbacks: the shipped grad_clip, ema and early_stopping, and one of your own."""

import json
import signal

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    SYNTHETIC,
    doc_block,
    exact_resume_check,
    read_json,
    read_jsonl,
    run_in_process,
    run_train,
    start_train,
    wait_for_first_epoch,
    without_time,
)

from lenet.core.data import Split
from lenet.core.errors import ConfigError
from lenet.core.metrics import build_metrics
from lenet.core.models import create_model
from lenet.core.optim import Scheduler
from lenet.core.schedules import constant
from lenet.run.checkpoint import CHECKPOINT_FILE, load_checkpoint
from lenet.training.callbacks import Callback, Callbacks, build_callbacks
from lenet.training.ema import EMA
from lenet.training.grad_clip import GradClip
from lenet.training.loop import FitSettings, fit
from lenet.training.state import TrainState


def small_run(lr=0.05):
    torch.manual_seed(0)
    model = create_model("lenet5")
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randn(128, 1, 32, 32, generator=g) * 5, torch.randint(0, 10, (128,), generator=g))
    run = TrainState(model, optimizer, Scheduler(constant(optimizer), "epoch"), F.cross_entropy, torch.Generator())
    return run, FitSettings(train=split, test=split, epochs=2, batch_size=32, metrics=build_metrics([]))


class GradNorms(Callback):
    """Records the gradients' total norm each time the optimizer is about to step."""

    def __init__(self):
        self.norms = []

    def on_before_optimizer_step(self, run):
        grads = [p.grad for p in run.model.parameters() if p.grad is not None]
        self.norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())


def test_grad_clip_bounds_the_norm_of_every_step():
    run, settings = small_run(lr=0.5)
    unclipped = GradNorms()
    fit(run, settings, Callbacks({"norms": unclipped}))
    assert max(unclipped.norms) > 2  # these steps have large gradients

    run, settings = small_run(lr=0.5)
    clipped = GradNorms()
    fit(run, settings, Callbacks({"clip": GradClip(max_norm=0.5), "norms": clipped}))
    assert len(clipped.norms) == 8 and max(clipped.norms) <= 0.5 * (1 + 1e-5)


def test_a_hook_a_callback_does_not_override_is_never_called():
    class OnlyEpochs(Callback):
        def on_epoch_end(self, run, row):
            pass

    callbacks = Callbacks({"a": OnlyEpochs()})
    assert callbacks._hooks["on_step_end"] == [] and len(callbacks._hooks["on_epoch_end"]) == 1


def test_a_callback_with_a_mistyped_hook_or_no_hook_is_one_line():
    with pytest.raises(ConfigError, match="defines on_epoch_ends, which no run calls; the hooks are on_fit_start"):
        build_callbacks({"typo": {"_target_": "test_callbacks.Typo"}})
    with pytest.raises(ConfigError, match="is not a callback: it has none of the hooks"):
        build_callbacks({"none": {"_target_": "collections.OrderedDict"}})


class Typo:
    def on_epoch_ends(self, run, row):
        pass


def test_early_stopping_ends_the_run_completed_and_says_why(tmp_path, caplog):
    # the one-cycle lr rises to its peak in the first quarter of the run, then falls: watched with mode=max,
    # it stops improving after the peak
    caplog.set_level("INFO")
    summary, run_dir = run_in_process(
        tmp_path,
        "run",
        "data.train_size=256",
        "trainer.epochs=8",
        "callbacks=early_stopping",
        "callbacks.early_stopping.monitor=lr",
        "callbacks.early_stopping.mode=max",
        "callbacks.early_stopping.patience=2",
    )
    rows = read_jsonl(run_dir / "metrics.jsonl")
    peak = max(range(len(rows)), key=lambda i: rows[i]["lr"]) + 1
    assert summary["status"] == "completed" and summary["epochs_completed"] == len(rows) == peak + 2 < 8
    assert (
        summary["stopped_early"]
        == f"lr did not improve by more than 0 in 2 epochs (best {rows[peak - 1]['lr']:.4g} in epoch {peak})"
    )
    assert f"stopped early: {summary['stopped_early']}" in caplog.records[-1].getMessage()  # the run's last line
    assert (run_dir / "lenet_synthetic.pth").is_file()


def test_early_stopping_of_a_key_no_row_holds_is_refused_before_training(tmp_path):
    with pytest.raises(
        ConfigError, match=r"monitor=test_accuracy is not a key of the metrics rows \(epoch, train_loss"
    ):
        run_in_process(
            tmp_path,
            "run",
            "data.train_size=256",
            "callbacks=early_stopping",
            "callbacks.early_stopping.monitor=test_accuracy",
        )
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_ema_evaluates_and_saves_the_average_and_resumes_exactly(tmp_path):
    overrides = ["callbacks=ema", "callbacks.ema.decay=0.9", "data.train_size=256", "trainer.epochs=3"]
    summary, run_dir = exact_resume_check(tmp_path, overrides)
    assert summary["eval_weights"] == "ema(decay=0.9)"
    saved, trained = torch.load(run_dir / "lenet_synthetic.pth"), load_checkpoint(run_dir / CHECKPOINT_FILE)["model"]
    assert saved.keys() == trained.keys() and not all(torch.equal(saved[k], trained[k]) for k in saved)
    plain, plain_dir = run_in_process(tmp_path, "plain", *overrides[2:])
    assert plain["eval_weights"] == "model" and summary["final_test_loss"] != plain["final_test_loss"]
    model = create_model("lenet5")
    model.load_state_dict(saved)  # a plain state_dict of the same network


def test_a_callbacks_state_is_in_the_checkpoint_and_restored_on_resume(tmp_path):
    overrides = [
        "callbacks=early_stopping",
        "callbacks.early_stopping.monitor=test_loss",
        "data.train_size=256",
        "trainer.epochs=3",
    ]
    exact_resume_check(tmp_path, overrides)
    state = load_checkpoint(tmp_path / "part" / CHECKPOINT_FILE)["callbacks"]["early_stopping"]
    assert set(state) == {"best", "best_epoch", "wait"} and state["best_epoch"] >= 1


@pytest.mark.slow
def test_ema_resumes_bit_for_bit_after_a_real_sigterm(tmp_path):
    args = [*SYNTHETIC, "data.train_size=3000", "trainer.epochs=3", "callbacks=ema"]
    run_in_process(tmp_path, "full", *args[len(SYNTHETIC) :])
    proc = start_train(*args, "hydra.run.dir=part", cwd=tmp_path)
    wait_for_first_epoch(tmp_path / "part" / "metrics.jsonl")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    resumed = run_train(*args, "hydra.run.dir=part", "trainer.resume=true", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert read_json(tmp_path / "part" / "summary.json")["resumed_from_epoch"] >= 1
    assert without_time(read_jsonl(tmp_path / "part" / "metrics.jsonl")) == without_time(
        read_jsonl(tmp_path / "full" / "metrics.jsonl")
    )
    full, part = (
        torch.load(tmp_path / "full" / "lenet_synthetic.pth"),
        torch.load(tmp_path / "part" / "lenet_synthetic.pth"),
    )
    assert all(torch.equal(full[k], part[k]) for k in full)


@pytest.mark.slow
def test_the_documented_callback_of_your_own_sees_every_step_and_keeps_its_state_across_a_resume(tmp_path):
    (tmp_path / "my_callbacks.py").write_text(doc_block("docs/extending.md", "# my_callbacks.py"))
    (tmp_path / "my_conf" / "callbacks").mkdir(parents=True)
    (tmp_path / "my_conf" / "callbacks" / "loss_spikes.yaml").write_text(
        doc_block("docs/extending.md", "# my_conf/callbacks/loss_spikes.yaml")
    )
    command = doc_block("docs/extending.md", "PYTHONPATH=. python train.py 'callbacks=[ema,loss_spikes]'").split()
    overrides = [a.strip("'").replace("$PWD", str(tmp_path)) for a in command[3:]]
    args = [*overrides, *SYNTHETIC, "data.train_size=3000", "trainer.epochs=3"]
    env = {"PYTHONPATH": str(tmp_path)}
    full = run_train(*args, "hydra.run.dir=full", cwd=tmp_path, env=env)
    assert full.returncode == 0, full.stderr
    rows = read_jsonl(tmp_path / "full" / "metrics.jsonl")
    assert [r["steps_seen"] for r in rows] == [47, 94, 141]  # ceil(3000 / 64) steps an epoch, every one seen

    proc = start_train(*args, "hydra.run.dir=part", cwd=tmp_path, env=env)
    wait_for_first_epoch(tmp_path / "part" / "metrics.jsonl")
    proc.send_signal(signal.SIGTERM)  # during epoch 2
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    resumed = run_train(*args, "hydra.run.dir=part", "trainer.resume=true", cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert without_time(read_jsonl(tmp_path / "part" / "metrics.jsonl")) == without_time(rows)  # spikes and steps too
    summary = read_json(tmp_path / "part" / "summary.json")
    assert summary["resumed_from_epoch"] == 1 and summary["callbacks"] == ["ema", "loss_spikes"]
    assert json.loads(json.dumps(summary))["final_steps_seen"] == 141


class NumpyState(Callback):
    """A callback whose state holds a numpy number: a checkpoint's safe loader could not read it back."""

    def on_epoch_end(self, run, row):
        import numpy as np

        self.seen = np.float64(row["val_loss"])

    def state_dict(self):
        return {"seen": self.seen}


def test_a_callback_state_a_checkpoint_could_not_load_is_refused_when_it_is_first_saved(tmp_path):
    from lenet.core.errors import CheckpointError

    with pytest.raises(
        CheckpointError, match=r"callbacks.numbers \(NumpyState\) keeps a numpy.float64 \(.*\) in its st"
    ):
        run_in_process(tmp_path, "run", "data.train_size=128", "+callbacks.numbers._target_=test_callbacks.NumpyState")
    assert not (tmp_path / "run" / CHECKPOINT_FILE).exists()  # refused before any checkpoint a resume could not read
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "float(x)" in summary["error"]


def test_each_run_of_a_fused_group_keeps_its_own_callbacks_as_alone():
    from lenet.core.optim import Scheduler
    from lenet.core.schedules import onecycle
    from lenet.training.ema import EMA
    from lenet.training.fused import VmappedSteps
    from lenet.training.loop import fit_group

    g = torch.Generator().manual_seed(0)
    data = Split(
        torch.randn(160, 1, 32, 32, generator=g, dtype=torch.float64), torch.randint(0, 10, (160,), generator=g)
    )
    settings = FitSettings(train=data, test=data, val=data, epochs=2, batch_size=32, metrics=build_metrics([]))

    def runs():
        built = []
        for seed, lr in enumerate((0.05, 0.1)):
            torch.manual_seed(seed)
            model = create_model("lenet5").to(torch.float64)
            opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
            built.append(
                TrainState(
                    model,
                    opt,
                    Scheduler(onecycle(opt, 10), "step"),
                    F.cross_entropy,
                    torch.Generator().manual_seed(seed),
                )
            )
        return built

    fused, alone = runs(), runs()
    fused_callbacks = [Callbacks({"ema": EMA(decay=0.5), "clip": GradClip(max_norm=0.5)}) for _ in fused]
    fit_group(fused, settings, fused_callbacks, VmappedSteps(settings))
    for run in alone:
        fit(run, settings, Callbacks({"ema": EMA(decay=0.5), "clip": GradClip(max_norm=0.5)}))
    for a, b, hooks in zip(fused, alone, fused_callbacks):
        assert a.eval_weights == b.eval_weights == "ema(decay=0.5)" and len(a.history) == 2
        for key in ("val_loss", "test_acc"):
            assert [r[key] for r in a.history] == pytest.approx([r[key] for r in b.history], rel=1e-6)  # fp32 sums
        for p, q in zip(a.eval_model.parameters(), b.eval_model.parameters()):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-9)  # its own average, as alone


def test_the_ema_decay_warms_up_so_a_short_run_is_not_its_initial_weights():
    ema = EMA(decay=0.999)
    assert [round(ema.decay_at(t), 3) for t in (0, 15, 350, 11_000, 10**6)] == [0.0, 0.843, 0.98, 0.998, 0.999]
    assert EMA(decay=0.999, warmup=False).decay_at(0) == 0.999
    torch.manual_seed(0)
    model = create_model("lenet5")
    start = [p.detach().clone() for p in model.parameters()]
    run = TrainState(model, torch.optim.SGD(model.parameters(), lr=0.1), None, F.cross_entropy, torch.Generator())
    warm, cold = EMA(decay=0.999), EMA(decay=0.999, warmup=False)
    for callback in (warm, cold):
        callback.on_fit_start(run)
    for _ in range(100):  # 100 steps of a short run, each moving every weight by 0.01
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01)
        warm.on_step_end(run, None)
        cold.on_step_end(run, None)
    moved = {
        name: (next(e.average.module.parameters()) - start[0]).mean().item()
        for name, e in (("warm", warm), ("cold", cold))
    }
    assert moved["warm"] > 0.8 and moved["cold"] < 0.1  # the warm average follows the weights; the cold one barely
