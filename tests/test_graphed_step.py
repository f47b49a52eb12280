"""trainer.cuda_graphs on the CPU: the captured-step structure (static batches, eager last batch, tensor lr) is exact.

A CUDA graph itself needs a GPU (tests/test_cuda.py); here ``EagerReplay`` stands in for it, so every
other part of the path runs: warm-up, capture once, replays of copied batches, the lr as a tensor the
scheduler fills, the eager last batch, the checks that turn graphs off, and checkpoints.
"""

import logging

import pytest
import torch
import torch.nn.functional as F

from lenet.core.data import Split
from lenet.core.errors import ConfigError
from lenet.core.metrics import build_metrics
from lenet.core.models import create_model
from lenet.core.optim import Scheduler, build_optimizer
from lenet.core.schedules import onecycle
from lenet.training.callbacks import Callback, Callbacks
from lenet.training.grad_clip import GradClip
from lenet.training.graphed_step import WARMUP_STEPS, EagerReplay, tensor_lrs, use_graphs, why_not_graphed
from lenet.training.loop import FitSettings, fit
from lenet.training.state import TrainState

BATCH, N = 32, 200  # 6 full batches and one of 8 per epoch


class Counting(EagerReplay):
    """EagerReplay that counts its captures and replays."""

    made: list["Counting"] = []

    def __init__(self):
        super().__init__()
        self.captures = self.replays = 0
        Counting.made.append(self)

    def capture(self, body):
        self.captures += 1
        super().capture(body)

    def replay(self):
        self.replays += 1
        return super().replay()


class Failing(EagerReplay):
    def capture(self, body):
        raise RuntimeError("operation not permitted when stream is capturing")


class LrLog(Callback):
    def __init__(self):
        self.lrs = []

    def on_step_end(self, run, loss):
        self.lrs.append(run.lr)


def run_with(optimizer="SGD", schedule=None, callbacks=None, **optimizer_args):
    torch.manual_seed(0)
    model = create_model("lenet5")
    node = {"_target_": f"torch.optim.{optimizer}", "_partial_": True, "lr": 0.05, **optimizer_args}
    opt = build_optimizer(model, node, torch.device("cpu"))
    scheduler = (schedule or (lambda o: Scheduler(onecycle(o, total_steps=14), "step")))(opt)
    return TrainState(
        model, opt, scheduler, F.cross_entropy, torch.Generator().manual_seed(0), callbacks=callbacks or {}
    )


def split():
    g = torch.Generator().manual_seed(1)
    return Split(torch.randn(N, 1, 32, 32, generator=g), torch.randint(0, 10, (N,), generator=g))


def train(run, graphs, capture=Counting, epochs=2, callbacks=None):
    data = split()
    settings = FitSettings(
        train=data,
        test=data,
        epochs=epochs,
        batch_size=BATCH,
        metrics=build_metrics([]),
        cuda_graphs=graphs,
        capture=capture,
    )
    return fit(run, settings, Callbacks(callbacks or {}))


def params(run):
    return [p.detach().clone() for p in run.model.parameters()]


def test_a_captured_run_trains_as_the_eager_run_with_one_capture_and_eager_last_batches():
    Counting.made.clear()
    eager_lrs, graph_lrs = LrLog(), LrLog()
    eager = train(run_with(momentum=0.9), "false", callbacks={"lrs": eager_lrs})
    graphed = train(run_with(momentum=0.9), "auto", callbacks={"lrs": graph_lrs})
    [capture] = Counting.made
    assert capture.captures == 1
    assert capture.replays == 2 * 6 - WARMUP_STEPS  # full batches only: each epoch's last batch of 8 ran eagerly
    # the schedule through the lr tensor is today's schedule, to the tensor's float32 once it is one
    float32 = [torch.tensor(lr).item() for lr in eager_lrs.lrs]
    assert graph_lrs.lrs[:WARMUP_STEPS] == eager_lrs.lrs[:WARMUP_STEPS]
    assert graph_lrs.lrs[WARMUP_STEPS:] == float32[WARMUP_STEPS:] and len(eager_lrs.lrs) == 14
    assert isinstance(graphed.optimizer.param_groups[0]["lr"], torch.Tensor)
    for a, b in zip(params(eager), params(graphed)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert [r["test_acc"] for r in eager.history] == [r["test_acc"] for r in graphed.history]


def test_a_capturable_optimizer_is_made_capturable_and_its_checkpoint_stays_as_built():
    run = train(run_with("Adam", foreach=True, fused=False), "false", epochs=1)
    tensor_lrs(run.optimizer)  # what a capture does first (a capturable Adam then steps on CUDA only)
    group = run.optimizer.param_groups[0]
    assert group["capturable"] is True and isinstance(group["lr"], torch.Tensor)
    saved = run.state_dict()["optimizer"]["param_groups"][0]
    assert saved["capturable"] is False and saved["lr"] == pytest.approx(group["lr"].item())
    resumed = run_with(
        "Adam", foreach=True, fused=False
    )  # a run on any device resumes it: no tensor lr, not capturable
    resumed.load_state_dict(run.state_dict())
    assert train(resumed, "false", epochs=2).epoch == 2


def test_resuming_a_captured_run_ends_as_the_uninterrupted_one():
    whole = train(run_with(momentum=0.9), "true", epochs=2)
    first = train(run_with(momentum=0.9), "true", epochs=1)
    second = run_with(momentum=0.9)
    second.load_state_dict(first.state_dict())
    second = train(second, "true", epochs=2)
    assert all(torch.equal(a, b) for a, b in zip(params(whole), params(second)))


def test_a_scheduler_that_changes_momentum_turns_graphs_off_for_the_rest_of_the_run(caplog):
    cycle = lambda o: Scheduler(torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.05, total_steps=14), "step")  # noqa: E731
    eager = train(run_with(momentum=0.9, schedule=cycle), "false")
    with caplog.at_level(logging.INFO, logger="lenet.training.graphed_step"):
        graphed = train(run_with(momentum=0.9, schedule=cycle), "auto")
    assert "CUDA graphs off: the scheduler changes momentum (from step 4)" in caplog.text
    for a, b in zip(params(eager), params(graphed)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_step_that_cannot_be_captured_runs_eagerly_under_auto_and_fails_under_true(caplog):
    eager = train(run_with(), "false")
    with caplog.at_level(logging.INFO, logger="lenet.training.graphed_step"):
        fallback = train(run_with(), "auto", capture=Failing)
    assert "CUDA graphs off: capturing the step failed: RuntimeError" in caplog.text
    for a, b in zip(params(eager), params(fallback)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="stream is capturing"):
        train(run_with(), "true", capture=Failing)


class PythonHook(Callback):
    def on_before_optimizer_step(self, run):
        pass


@pytest.mark.parametrize(
    "device, optimizer, callbacks, compiled, reason",
    [
        ("cpu", {}, {}, False, "the device is cpu"),
        ("cuda", {}, {}, True, "trainer.compile=true"),
        ("cuda", {"fused": False, "foreach": True}, {}, False, "SGD steps on the host"),
        ("cuda", {}, {"mine": PythonHook()}, False, "callback mine runs in on_before_optimizer_step"),
        ("cuda", {}, {"clip": GradClip()}, False, None),
    ],
)
def test_why_a_step_is_not_captured(device, optimizer, callbacks, compiled, reason):
    run = run_with(**optimizer)  # built on the CPU, where SGD is fused too
    said = why_not_graphed(torch.device(device), run.optimizer, callbacks, compiled)
    assert said == reason if reason is None else reason in said


def test_lbfgs_is_never_captured():
    model = create_model("lenet5")
    assert "LBFGS" in why_not_graphed(torch.device("cuda"), torch.optim.LBFGS(model.parameters()), {}, False)


def test_the_setting_decides_with_the_reason(caplog):
    assert use_graphs("auto", None, True) and use_graphs("true", None, True) and not use_graphs("false", None, True)
    with caplog.at_level(logging.INFO, logger="lenet.training.graphed_step"):
        assert not use_graphs("auto", "the device is cpu, not cuda", on_cuda=False)  # nothing to say on a CPU
        assert not use_graphs("auto", "LBFGS evaluates the loss several times per step", on_cuda=True)
    assert caplog.messages == ["CUDA graphs off: LBFGS evaluates the loss several times per step"]
    with pytest.raises(ConfigError, match="trainer.cuda_graphs=true cannot capture this run's step: LBFGS"):
        use_graphs("true", "LBFGS evaluates the loss several times per step", on_cuda=True)
