"""The training loop itself: one host sync per epoch, batching, schedules, closures, bf16 and torch.compile on CPU."""

import pytest
import torch
import torch.nn.functional as F
from conftest import run_in_process

from lenet.core.data import Split
from lenet.core.metrics import build_metrics
from lenet.core.models import create_model
from lenet.core.optim import Scheduler
from lenet.core.schedules import constant
from lenet.training.callbacks import Callbacks
from lenet.training.loop import FitSettings, evaluate, fit, train_epoch
from lenet.training.state import TrainState


def data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randn(n, 1, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))


def state(optimizer_class=torch.optim.SGD, scheduler=None, seed=0, **optimizer_args):
    torch.manual_seed(0)
    model = create_model("lenet5")
    optimizer = optimizer_class(model.parameters(), **{"lr": 0.01, **optimizer_args})
    return TrainState(
        model,
        optimizer,
        scheduler(optimizer) if scheduler else Scheduler(constant(optimizer), "epoch"),
        F.cross_entropy,
        torch.Generator().manual_seed(seed),
    )


def settings(split, batch_size, **kwargs):
    return FitSettings(train=split, test=split, epochs=kwargs.pop("epochs", 1), batch_size=batch_size, **kwargs)


def test_an_epoch_reads_back_from_the_device_once(monkeypatch):
    run, split = state(), data()
    calls = []
    original = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda self: calls.append(1) or original(self))
    loss = train_epoch(run, settings(split, 32), Callbacks())
    assert len(calls) == 1 and loss > 0 and run.step == 8  # 8 steps, a single .item() for the epoch's mean loss


def test_a_per_step_scheduler_steps_after_every_optimizer_step():
    asked = []
    run = state(
        scheduler=lambda opt: Scheduler(
            torch.optim.lr_scheduler.LambdaLR(opt, lambda step: asked.append(step) or 1 / (1 + step)), "step"
        )
    )
    for _ in range(2):
        train_epoch(run, settings(data(64), 16), Callbacks())
    assert asked == list(range(9))  # step 0 when built, then after each of the 8 steps
    assert run.optimizer.param_groups[0]["lr"] == pytest.approx(0.01 / 9)


def test_an_optimizer_that_needs_a_closure_trains():
    run, split = state(torch.optim.LBFGS, lr=0.1, max_iter=3), data(64)
    first = train_epoch(run, settings(split, 64), Callbacks())
    second = train_epoch(run, settings(split, 64), Callbacks())
    assert second < first  # LBFGS re-evaluates the loss through the closure within a step


def test_mean_loss_and_accuracy_do_not_depend_on_the_eval_batch_size():
    model, split = create_model("lenet5"), data(100)
    metrics = build_metrics([])
    a = evaluate(model, F.cross_entropy, split, batch_size=7, metrics=metrics)
    b = evaluate(model, F.cross_entropy, split, batch_size=1000, metrics=metrics)
    assert a["test_acc"] == b["test_acc"] and a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-5)
    with torch.no_grad():
        correct = (model(split.images).argmax(1) == split.labels).sum().item()
    assert a["test_acc"] == correct / 100  # a count over the count, exactly


def test_shuffling_follows_the_generator():
    losses = [train_epoch(state(seed=seed, lr=0.05), settings(data(128), 16), Callbacks()) for seed in (0, 0, 1)]
    assert losses[0] == losses[1] and losses[0] != losses[2]


def test_fit_runs_the_epochs_and_records_a_row_for_each():
    run = state(lr=0.05)
    fit(run, settings(data(128), 32, epochs=3, metrics=build_metrics([])), Callbacks())
    assert run.epoch == 3 and [r["epoch"] for r in run.history] == [1, 2, 3] and run.step == 12
    assert set(run.history[0]) == {"epoch", "train_loss", "test_loss", "test_acc", "lr", "seconds"}


def test_a_diverging_loss_raises_before_the_epoch_is_recorded():
    from lenet.core.errors import DivergedError

    run = state(lr=1e6)
    with pytest.raises(DivergedError, match=r"the loss became (nan|inf) in epoch \d"):
        fit(run, settings(data(128), 32, epochs=5, metrics=build_metrics([])), Callbacks())
    assert len(run.history) == run.epoch < 5


def test_bf16_autocast_trains_on_cpu(tmp_path):
    summary, run_dir = run_in_process(
        tmp_path,
        "bf16",
        "data.train_size=512",
        "trainer.epochs=2",
        "trainer.precision=bf16",
        "optimizer=adam",
        "scheduler=none",
    )
    assert summary["status"] == "completed" and summary["final_train_loss"] < 2.3
    weights = torch.load(run_dir / "lenet_synthetic.pth")
    assert all(w.dtype == torch.float32 for w in weights.values())  # autocast, not a bf16 model


def test_torch_compile_matches_eager_on_cpu(tmp_path):
    args = ("data.train_size=256", "trainer.epochs=1", "optimizer=adam", "scheduler=none")
    eager, _ = run_in_process(tmp_path, "eager", *args)
    compiled, run_dir = run_in_process(tmp_path, "compiled", *args, "trainer.compile=true")
    assert compiled["status"] == "completed"
    assert compiled["final_train_loss"] == pytest.approx(eager["final_train_loss"], rel=1e-3)
    assert compiled["final_test_loss"] == pytest.approx(eager["final_test_loss"], rel=1e-3)
    create_model("lenet5").load_state_dict(torch.load(run_dir / "lenet_synthetic.pth"))  # saved without the wrapper
