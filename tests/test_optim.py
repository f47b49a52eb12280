import pytest
import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import OneCycleLR

from lenet.config import AdamConfig, AdamWConfig, CosineConfig, OneCycleConfig, SchedulerConfig, SGDConfig, StepConfig
from lenet.models import create_model
from lenet.optim import SGD, Adam, build_optimizer, build_schedule


def lrs(cfg, epochs, steps_per_epoch, lr=0.05, after_last=False):
    lr_at = build_schedule(cfg, lr, epochs, steps_per_epoch)
    steps = epochs * steps_per_epoch + (1 if after_last else 0)
    return [lr_at(step) for step in range(steps)]


@pytest.mark.parametrize("steps", [5, 10, 469])
def test_onecycle_follows_torch_onecycle(steps):
    cfg = OneCycleConfig(name="onecycle")
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.05)
    reference = OneCycleLR(optimizer, 0.05, total_steps=2 * steps, pct_start=cfg.pct_start, div_factor=cfg.div_factor,
                           final_div_factor=cfg.final_div_factor, cycle_momentum=False)  # fmt: skip
    expected = []
    for _ in range(2 * steps):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        reference.step()
    assert lrs(cfg, 2, steps) == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_onecycle_works_where_torch_divides_by_zero():
    seen = lrs(OneCycleConfig(name="onecycle"), 1, 4)  # pct_start * 4 steps leaves no warm-up step
    assert seen[0] == pytest.approx(0.05) and seen[-1] == pytest.approx(0.05 / 25 / 1e4)


def test_cosine_warms_up_then_decays_to_min_lr():
    seen = lrs(CosineConfig(name="cosine", warmup_epochs=1, min_lr=0.001), 4, 10, after_last=True)
    assert seen[0] == pytest.approx(0.005) and seen[9] == pytest.approx(0.05)
    assert max(seen) == pytest.approx(0.05) and seen[-1] == pytest.approx(0.001)
    assert all(a >= b for a, b in zip(seen[10:], seen[11:]))


def test_step_multiplies_by_gamma_every_step_epochs():
    seen = lrs(StepConfig(name="step", step_epochs=2, gamma=0.1), 5, 3)
    assert (
        seen[0] == seen[5] == pytest.approx(0.05)
        and seen[6] == pytest.approx(0.005)
        and seen[12] == pytest.approx(0.0005)
    )


def test_none_keeps_the_lr():
    assert set(lrs(SchedulerConfig(name="none"), 2, 3)) == {0.05}


def test_optimizers_get_their_settings():
    params = list(torch.nn.Linear(2, 2).parameters())
    sgd = build_optimizer(params, SGDConfig(name="sgd", lr=0.1, momentum=0.8, nesterov=True, weight_decay=1e-4))
    assert type(sgd) is SGD and (sgd.lr, sgd.momentum, sgd.nesterov, sgd.weight_decay) == (0.1, 0.8, True, 1e-4)
    adam = build_optimizer(params, AdamConfig(name="adam", lr=1e-3, beta2=0.99))
    assert type(adam) is Adam and adam.betas == (0.9, 0.99) and not adam.decoupled
    adamw = build_optimizer(params, AdamWConfig(name="adamw", lr=1e-3, weight_decay=0.05))
    assert type(adamw) is Adam and adamw.decoupled and adamw.weight_decay == 0.05


def _train(make_optimizer, lr_at, steps=12, torch_style=False):
    """A few steps of LeNet-5 (NHWC, as train.py runs it) on fixed random data; the final parameters."""
    torch.manual_seed(0)
    model = create_model("lenet5").to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model.parameters())
    data = torch.Generator().manual_seed(1)
    for step in range(steps):
        x = torch.randn(16, 1, 32, 32, generator=data)
        y = torch.randint(0, 10, (16,), generator=data)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        if torch_style:
            optimizer.param_groups[0]["lr"] = lr_at(step)
        else:
            optimizer.lr = lr_at(step)
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


SCHEDULE = build_schedule(OneCycleConfig(name="onecycle"), 0.05, 1, 12)

CASES = {
    "sgd nesterov wd": (
        lambda p: SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4),
        lambda p, foreach: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4, foreach=foreach),
    ),  # fmt: skip
    "sgd heavy ball": (
        lambda p: SGD(p, lr=0.05, momentum=0.8),
        lambda p, foreach: torch.optim.SGD(p, lr=0.05, momentum=0.8, foreach=foreach),
    ),
    "sgd plain": (lambda p: SGD(p, lr=0.05), lambda p, foreach: torch.optim.SGD(p, lr=0.05, foreach=foreach)),
    "adam wd": (
        lambda p: Adam(p, lr=0.05, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-3),
        lambda p, foreach: torch.optim.Adam(
            p, lr=0.05, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-3, foreach=foreach
        ),
    ),  # fmt: skip
    "adamw": (
        lambda p: Adam(p, lr=0.05, weight_decay=0.05, decoupled=True),
        lambda p, foreach: torch.optim.AdamW(p, lr=0.05, weight_decay=0.05, foreach=foreach),
    ),
}


@pytest.mark.parametrize("foreach", [False, True], ids=["torch-for-loop", "torch-foreach"])
@pytest.mark.parametrize("case", list(CASES))
def test_optimizers_match_torch_optim_bit_for_bit(case, foreach):
    ours, theirs = CASES[case]
    expected = _train(lambda p: theirs(p, foreach), SCHEDULE, torch_style=True)
    got = _train(ours, SCHEDULE)
    assert not all(torch.equal(a, b) for a, b in zip(got, _train(ours, SCHEDULE, steps=11)))  # the steps do move
    for a, b in zip(got, expected):
        assert torch.equal(a, b), (a - b).abs().max()


def test_state_dict_continues_exactly():
    def run(split):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        optimizer = Adam(model.parameters(), lr=0.01, weight_decay=1e-3)
        data = torch.Generator().manual_seed(2)
        batches = [(torch.randn(8, 4, generator=data), torch.randint(0, 3, (8,), generator=data)) for _ in range(6)]
        for i, (x, y) in enumerate(batches):
            if i == split:  # a fresh optimizer continues from the saved state
                state = optimizer.state_dict()
                optimizer = Adam(model.parameters(), lr=0.5, weight_decay=1e-3)  # lr comes from the state
                optimizer.load_state_dict(state)
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        return [p.detach() for p in model.parameters()], optimizer

    (uninterrupted, _), (resumed, optimizer) = run(None), run(3)
    assert optimizer.steps == 6 and optimizer.lr == 0.01
    assert all(torch.equal(a, b) for a, b in zip(uninterrupted, resumed))


def test_state_of_another_optimizer_is_refused():
    params = list(torch.nn.Linear(2, 2).parameters())
    with pytest.raises(ValueError, match="SGD"):
        Adam(params, lr=0.1).load_state_dict(SGD(params, lr=0.1, momentum=0.9).state_dict())


def test_a_parameter_without_gradient_is_a_bug_not_a_silent_skip():
    model = torch.nn.Linear(2, 2)
    optimizer = SGD(model.parameters(), lr=0.1)
    model.weight.sum().backward()  # the bias gets no gradient
    with pytest.raises(RuntimeError, match="no gradient"):
        optimizer.step()


def test_resume_refuses_an_optimizer_state_it_cannot_use(tmp_path):
    from lenet.checkpoint import restore, rng_state
    from lenet.errors import ConfigError

    model, generator = torch.nn.Linear(2, 2), torch.Generator()
    checkpoint = {
        "config": {},
        "model": model.state_dict(),
        "history": [],
        "wall_seconds": 0.0,
        "rng": rng_state(generator),
        "optimizer": torch.optim.SGD(model.parameters(), lr=0.1).state_dict(),
    }  # e.g. an older version's
    with pytest.raises(ConfigError, match="optimizer state does not fit.*start a new run dir"):
        restore(checkpoint, tmp_path / "checkpoint.pt", {}, (), model, SGD(model.parameters(), lr=0.1), generator)
