"""The training loop itself: one host sync per epoch, batching, bf16 and torch.compile on CPU."""

import pytest
import torch

from lenet.engine import evaluate, train_one_epoch
from lenet.models import create_model
from lenet.optim import SGD

from test_reliability import run_in_process


CONSTANT = lambda step: 0.01  # noqa: E731


def data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_an_epoch_reads_back_from_the_device_once(monkeypatch):
    model = create_model("lenet5")
    optimizer = SGD(model.parameters(), lr=0.01)
    images, labels = data()
    calls = []
    original = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda self: calls.append(1) or original(self))
    loss = train_one_epoch(model, model.loss, optimizer, CONSTANT, images, labels, 32, torch.Generator().manual_seed(0))
    assert len(calls) == 1 and loss > 0  # 8 steps, a single .item() for the epoch's mean loss


def test_each_step_takes_the_lr_of_its_number_in_the_run():
    model = create_model("lenet5")
    optimizer = SGD(model.parameters(), lr=0.01)
    images, labels = data(64)
    asked = []
    schedule = lambda step: asked.append(step) or 0.01 / (1 + step)  # noqa: E731
    for _ in range(2):
        train_one_epoch(model, model.loss, optimizer, schedule, images, labels, 16, torch.Generator().manual_seed(0))
    assert asked == list(range(8)) and optimizer.steps == 8 and optimizer.lr == 0.01 / 8


def test_mean_loss_and_accuracy_do_not_depend_on_the_eval_batch_size():
    model = create_model("lenet5")
    images, labels = data(100)
    loss_a, acc_a = evaluate(model, model.loss, images, labels, batch_size=7)
    loss_b, acc_b = evaluate(model, model.loss, images, labels, batch_size=1000)
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
        optimizer = SGD(model.parameters(), lr=0.05)
        losses.append(
            train_one_epoch(
                model, model.loss, optimizer, CONSTANT, images, labels, 16, torch.Generator().manual_seed(seed)
            )
        )
    assert losses[0] == losses[1] and losses[0] != losses[2]


def test_progress_bar_only_when_asked(capsys):
    model = create_model("lenet5")
    optimizer = SGD(model.parameters(), lr=0.01)
    images, labels = data(64)
    train_one_epoch(
        model, model.loss, optimizer, CONSTANT, images, labels, 16, torch.Generator(), progress=True, desc="epoch 1/3"
    )
    assert "epoch 1/3" in capsys.readouterr().err
    train_one_epoch(model, model.loss, optimizer, CONSTANT, images, labels, 16, torch.Generator(), progress=False)
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
