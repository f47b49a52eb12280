"""The training recipe from config: torch.optim optimizers and torch LR schedulers by _target_."""

import pytest
import torch
from conftest import CONF
from omegaconf import OmegaConf
from torch.optim.lr_scheduler import OneCycleLR

from lenet.core import schedules
from lenet.core.errors import ConfigError
from lenet.core.models import create_model
from lenet.core.optim import build_optimizer, build_scheduler

CPU = torch.device("cpu")
METRICS = ["epoch", "train_loss", "val_loss", "val_acc", "test_loss", "test_acc", "lr", "seconds"]


def option(group, name):
    return OmegaConf.to_container(OmegaConf.load(CONF / group / f"{name}.yaml"))


def lrs(make_scheduler, steps, lr=0.05):
    """The lr of each of ``steps`` steps under the scheduler that ``make_scheduler(optimizer)`` builds."""
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=lr)
    scheduler = make_scheduler(optimizer)
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


@pytest.mark.parametrize("steps", [5, 10, 469])
def test_onecycle_follows_torch_onecycle(steps):
    expected = lrs(
        lambda o: OneCycleLR(o, 0.05, total_steps=2 * steps, pct_start=0.25, cycle_momentum=False), 2 * steps
    )
    assert lrs(lambda o: schedules.onecycle(o, total_steps=2 * steps), 2 * steps) == pytest.approx(
        expected, rel=1e-9, abs=1e-15
    )


def test_onecycle_works_where_torch_divides_by_zero():
    seen = lrs(lambda o: schedules.onecycle(o, total_steps=4), 4)  # pct_start * 4 steps leaves no warm-up step
    assert seen[0] == pytest.approx(0.05) and seen[-1] == pytest.approx(0.05 / 25 / 1e4)


def test_cosine_warms_up_then_decays_to_min_lr():
    seen = lrs(lambda o: schedules.cosine(o, total_steps=40, steps_per_epoch=10, warmup_epochs=1, min_lr=0.001), 41)
    assert seen[0] == pytest.approx(0.005) and seen[9] == pytest.approx(0.05)
    assert max(seen) == pytest.approx(0.05) and seen[-1] == pytest.approx(0.001)
    assert all(a >= b for a, b in zip(seen[10:], seen[11:]))


def test_step_multiplies_by_gamma_every_step_epochs():
    seen = lrs(lambda o: schedules.step(o, steps_per_epoch=3, step_epochs=2, gamma=0.1), 15)
    assert seen[0] == seen[5] == pytest.approx(0.05) and seen[6] == pytest.approx(0.005)
    assert seen[12] == pytest.approx(0.0005)


def test_constant_keeps_the_lr():
    assert set(lrs(schedules.constant, 6)) == {0.05}


@pytest.mark.parametrize(
    "name,cls,kernel",
    [
        ("sgd", torch.optim.SGD, "fused"),
        ("adam", torch.optim.Adam, "fused"),
        ("adamw", torch.optim.AdamW, "fused"),
        ("rmsprop", torch.optim.RMSprop, "foreach"),
        ("radam", torch.optim.RAdam, "foreach"),
    ],
)
def test_each_optimizer_option_builds_its_torch_class_with_its_values(name, cls, kernel):
    cfg = option("optimizer", name)
    optimizer = build_optimizer(create_model("lenet5"), cfg, CPU)
    assert type(optimizer) is cls and optimizer.defaults[kernel] is True  # the fastest kernel torch has on CPU
    for key, value in cfg.items():
        if not key.startswith("_"):
            expected = tuple(value) if isinstance(value, list) else value
            assert optimizer.defaults[key] == pytest.approx(expected), key


def test_fused_and_foreach_set_in_the_config_are_kept():
    cfg = {**option("optimizer", "adam"), "fused": False}
    optimizer = build_optimizer(create_model("lenet5"), cfg, CPU)
    assert optimizer.defaults["fused"] is False and not optimizer.defaults["foreach"]


def test_default_sgd_matches_the_previous_hand_written_arithmetic():
    # fused SGD with Nesterov momentum and weight decay, against the update written out for one parameter
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5))
    optimizer = build_optimizer(torch.nn.ParameterList([w]), option("optimizer", "sgd"), CPU)
    expected, buf = w.detach().clone(), None
    for step in range(3):
        grad = torch.randn(5, generator=torch.Generator().manual_seed(step))
        w.grad = grad.clone()
        optimizer.step()
        g = grad + 5e-4 * expected
        buf = g.clone() if buf is None else 0.9 * buf + g
        expected = expected - 0.1 * (g + 0.9 * buf)  # the default peak lr
    assert torch.allclose(w.detach(), expected, atol=1e-6)


class GroupedModel(torch.nn.Module):
    """A model that asks for no weight decay on its biases, as nanoGPT's configure_optimizers does."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)

    def parameter_groups(self):
        return [{"params": [self.linear.weight]}, {"params": [self.linear.bias], "weight_decay": 0.0}]


def test_a_models_parameter_groups_are_used():
    optimizer = build_optimizer(GroupedModel(), option("optimizer", "sgd"), CPU)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [5e-4, 0.0]


@pytest.mark.parametrize(
    "cfg,fragments",
    [
        (
            {"_target_": "torch.optim.NAdam", "lr": 1e-3, "momentum": 0.9},
            ["takes no argument optimizer.momentum=0.9", "'~optimizer.momentum'", "momentum_decay"],
        ),
        (
            {"_target_": "torch.optim.SGD", "lr": 0.1, "momentum": -0.5},
            ["refused its arguments", "momentum=-0.5", "Invalid momentum value"],
        ),
        ({"_target_": "torch.optim.SGD", "lr": float("nan")}, ["optimizer.lr must be a finite number > 0, got nan"]),
        ({"_target_": "torch.optim.Nope", "lr": 1.0}, ["optimizer._target_=torch.optim.Nope", "torch.optim.Nope"]),
        ({"lr": 1.0}, ["optimizer has no _target_"]),
    ],
)
def test_a_wrong_optimizer_argument_is_one_line_naming_it(cfg, fragments):
    with pytest.raises(ConfigError) as error:
        build_optimizer(create_model("lenet5"), cfg, CPU)
    message = str(error.value)
    assert "\n" not in message and all(f in message for f in fragments), message


def sgd():
    return torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)


def test_a_torch_scheduler_by_target_gets_the_runs_length_only_where_it_takes_it():
    cfg = {"_target_": "torch.optim.lr_scheduler.OneCycleLR", "max_lr": 0.1, "interval": "step"}
    built = build_scheduler(sgd(), cfg, epochs=3, steps_per_epoch=7, metrics=METRICS)
    assert isinstance(built.scheduler, OneCycleLR) and built.scheduler.total_steps == 21 and built.interval == "step"
    step_lr = {"_target_": "torch.optim.lr_scheduler.StepLR", "step_size": 2, "interval": "epoch"}
    built = build_scheduler(sgd(), step_lr, epochs=3, steps_per_epoch=7, metrics=METRICS)
    assert built.interval == "epoch"


def test_reduce_on_plateau_watches_a_metric_once_per_epoch():
    cfg = {"_target_": "torch.optim.lr_scheduler.ReduceLROnPlateau", "patience": 0, "factor": 0.5, "interval": "epoch"}
    optimizer = sgd()
    built = build_scheduler(optimizer, cfg, epochs=3, steps_per_epoch=7, metrics=METRICS)
    assert built.monitor == "val_loss"  # the validation loss: the test set is never what it selects on
    for loss in (1.0, 2.0, 3.0):
        built.step_epoch({"val_loss": loss})
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.025)  # two epochs without improvement
    with pytest.raises(ConfigError, match="scheduler.interval=epoch"):
        build_scheduler(sgd(), {**cfg, "interval": "step"}, epochs=3, steps_per_epoch=7, metrics=METRICS)
    with pytest.raises(ConfigError, match="scheduler.monitor must be one of"):
        build_scheduler(sgd(), {**cfg, "monitor": "val_los"}, epochs=3, steps_per_epoch=7, metrics=METRICS)
    without_val = [k for k in METRICS if not k.startswith("val_")]
    with pytest.raises(ConfigError, match="data.val_size=0 leaves no validation split.*scheduler.monitor=test_loss"):
        build_scheduler(sgd(), cfg, epochs=3, steps_per_epoch=7, metrics=without_val)
    assert build_scheduler(sgd(), {**cfg, "monitor": "test_loss"}, 3, 7, without_val).monitor == "test_loss"


@pytest.mark.parametrize(
    "name,override,fragment",
    [
        ("onecycle", {"pct_start": 1.5}, "pct_start must be in (0, 1)"),
        ("step", {"gamma": 0.0}, "gamma must be in (0, 1]"),
        ("cosine", {"warmup_epochs": 10}, "warmup_epochs must be in [0, trainer.epochs)"),
        ("cosine", {"min_lr": 0.5}, "min_lr must be in [0, the optimizer's lr"),
        ("onecycle", {"interval": "batch"}, "scheduler.interval must be step or epoch"),
        ("step", {"step_size": 3}, "takes no argument scheduler.step_size=3"),
    ],
)
def test_scheduler_values_are_checked_with_the_key_named(name, override, fragment):
    with pytest.raises(ConfigError, match="scheduler") as error:
        build_scheduler(sgd(), {**option("scheduler", name), **override}, epochs=3, steps_per_epoch=7, metrics=METRICS)
    assert fragment in str(error.value)


def test_a_scheduler_missing_a_required_argument_says_which():
    with pytest.raises(ConfigError, match=r"needs scheduler.T_max: add it with \+scheduler.T_max=VALUE"):
        build_scheduler(sgd(), {"_target_": "torch.optim.lr_scheduler.CosineAnnealingLR"}, 3, 7, METRICS)
