import pytest
import torch
from torch.optim.lr_scheduler import OneCycleLR

from lenet.config import AdamConfig, AdamWConfig, CosineConfig, OneCycleConfig, SchedulerConfig, SGDConfig, StepConfig
from lenet.optim import build_optimizer, build_scheduler


def lrs(cfg, epochs, steps_per_epoch, lr=0.05, after_last=False):
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=lr)
    scheduler = build_scheduler(optimizer, cfg, epochs, steps_per_epoch)
    seen = []
    for _ in range(epochs * steps_per_epoch):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return seen + [optimizer.param_groups[0]["lr"]] if after_last else seen


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
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.8 and sgd.defaults["nesterov"]
    adam = build_optimizer(params, AdamConfig(name="adam", lr=1e-3, beta2=0.99))
    assert type(adam) is torch.optim.Adam and adam.defaults["betas"] == (0.9, 0.99)
    adamw = build_optimizer(params, AdamWConfig(name="adamw", lr=1e-3, weight_decay=0.05))
    assert type(adamw) is torch.optim.AdamW and adamw.defaults["weight_decay"] == 0.05
