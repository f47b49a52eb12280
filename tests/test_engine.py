"""The training loop itself: one host sync per epoch, batching, bf16 and torch.compile on CPU."""

import pytest
import torch
import torch.nn.functional as F

from lenet.train.loop import evaluate, train_one_epoch
from lenet.core.models import create_model

from test_reliability import run_in_process


def data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_an_epoch_reads_back_from_the_device_once(monkeypatch):
    model = create_model("lenet5")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    images, labels = data()
    calls = []
    original = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda self: calls.append(1) or original(self))
    loss = train_one_epoch(model, F.cross_entropy, optimizer, images, labels, 32, torch.Generator().manual_seed(0))
    assert len(calls) == 1 and loss > 0  # 8 steps, a single .item() for the epoch's mean loss


def test_a_per_step_scheduler_steps_after_every_optimizer_step():
    model = create_model("lenet5")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    images, labels = data(64)
    asked = []
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: asked.append(step) or 1 / (1 + step))
    for _ in range(2):
        train_one_epoch(model, F.cross_entropy, optimizer, images, labels, 16, torch.Generator().manual_seed(0),
                        scheduler=scheduler)  # fmt: skip
    assert asked == list(range(9))  # step 0 when built, then after each of the 8 steps
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 / 9)


def test_an_optimizer_that_needs_a_closure_trains():
    torch.manual_seed(0)
    model = create_model("lenet5")
    optimizer = torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=3)
    images, labels = data(64)
    first = train_one_epoch(model, F.cross_entropy, optimizer, images, labels, 64, torch.Generator().manual_seed(0))
    second = train_one_epoch(model, F.cross_entropy, optimizer, images, labels, 64, torch.Generator().manual_seed(0))
    assert second < first  # LBFGS re-evaluates the loss through the closure within a step


def test_mean_loss_and_accuracy_do_not_depend_on_the_eval_batch_size():
    model = create_model("lenet5")
    images, labels = data(100)
    a = evaluate(model, F.cross_entropy, images, labels, batch_size=7)
    b = evaluate(model, F.cross_entropy, images, labels, batch_size=1000)
    (loss_a, acc_a), (loss_b, acc_b) = (a["test_loss"], a["test_acc"]), (b["test_loss"], b["test_acc"])
    assert acc_a == acc_b and loss_a == pytest.approx(loss_b, rel=1e-5)
    with torch.no_grad():
        expected = (model(images).argmax(1) == labels).float().mean().item()
    assert acc_a == pytest.approx(expected)


def test_shuffling_follows_the_generator():
    images, labels = data(128)
    losses = []
    for seed in (0, 0, 1):
        torch.manual_seed(0)
        model = create_model("lenet5")
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        losses.append(
            train_one_epoch(model, F.cross_entropy, optimizer, images, labels, 16, torch.Generator().manual_seed(seed))
        )
    assert losses[0] == losses[1] and losses[0] != losses[2]


def test_progress_bar_only_when_asked(capsys):
    model = create_model("lenet5")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    images, labels = data(64)
    train_one_epoch(
        model, F.cross_entropy, optimizer, images, labels, 16, torch.Generator(), progress=True, desc="epoch 1/3"
    )
    assert "epoch 1/3" in capsys.readouterr().err
    train_one_epoch(model, F.cross_entropy, optimizer, images, labels, 16, torch.Generator(), progress=False)
    assert capsys.readouterr().err == ""


def test_bf16_autocast_trains_on_cpu(tmp_path):
    summary, run_dir = run_in_process(tmp_path, "bf16", "data.train_size=512", "trainer.epochs=2", "trainer.precision=bf16",
                                      "optimizer=adam", "scheduler=none")  # fmt: skip
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
