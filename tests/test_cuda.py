"""The CUDA-only paths (they skip without a GPU; bench/gpu_check.sh runs them on one)."""

import pytest
import torch
import torch.nn.functional as F
from conftest import run_in_process

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_a_run_on_cuda_in_bf16_completes_and_saves_float32_weights(tmp_path):
    summary, run_dir = run_in_process(
        tmp_path, "run", "device=cuda", "trainer.precision=bf16", "data.train_size=2048", "trainer.epochs=2"
    )
    assert summary["status"] == "completed" and summary["device"].startswith("cuda")
    assert all(w.dtype == torch.float32 for w in torch.load(run_dir / "lenet_synthetic.pth").values())


def test_torch_compile_on_cuda_matches_eager(tmp_path):
    args = ("device=cuda", "data.train_size=2048", "trainer.epochs=2", "optimizer=adam", "scheduler=none")
    eager, _ = run_in_process(tmp_path, "eager", *args)
    compiled, _ = run_in_process(tmp_path, "compiled", *args, "trainer.compile=true")
    assert compiled["final_train_loss"] == pytest.approx(eager["final_train_loss"], rel=1e-2)
    assert compiled["compile_seconds"] > 0 and compiled["cuda_graphs"] is False


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_captured_step_on_cuda_trains_as_the_eager_one(tmp_path, optimizer):
    # 2000 = 15 x 128 + 80: every epoch ends with a smaller batch, run eagerly beside the graph
    args = ("device=cuda", "data.train_size=2000", "trainer.epochs=2", f"optimizer={optimizer}")
    eager, _ = run_in_process(tmp_path, f"eager-{optimizer}", *args, "trainer.cuda_graphs=false")
    graphed, _ = run_in_process(tmp_path, f"graphed-{optimizer}", *args, "trainer.cuda_graphs=true")
    assert graphed["cuda_graphs"] is True and eager["cuda_graphs"] is False
    assert graphed["final_train_loss"] == pytest.approx(eager["final_train_loss"], rel=1e-3)
    assert graphed["final_test_acc"] == pytest.approx(eager["final_test_acc"], abs=0.005)


def test_a_model_that_syncs_in_its_forward_trains_eagerly_under_auto():
    from lenet.core.data import Split
    from lenet.core.metrics import build_metrics
    from lenet.core.models import create_model
    from lenet.core.optim import Scheduler, build_optimizer
    from lenet.core.schedules import constant
    from lenet.training.callbacks import Callbacks
    from lenet.training.loop import FitSettings, fit
    from lenet.training.state import TrainState

    class Syncing(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = create_model("lenet5")

        def forward(self, x):
            if x.abs().max().item() > 1e9:  # a host sync: no graph can hold it
                raise AssertionError
            return self.net(x)

    model = Syncing().cuda()
    opt = build_optimizer(model, {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.05}, torch.device("cuda"))
    run = TrainState(model, opt, Scheduler(constant(opt), "epoch"), F.cross_entropy, torch.Generator())
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randn(640, 1, 32, 32, generator=g).cuda(), torch.randint(0, 10, (640,), generator=g).cuda())
    settings = FitSettings(train=split, test=split, epochs=2, batch_size=64, metrics=build_metrics([]))
    settings.cuda_graphs = "auto"
    fit(run, settings, Callbacks())
    assert run.epoch == 2 and run.notes["cuda_graphs"] is False
    assert run.notes["cuda_graphs_off"].startswith("capturing the step failed")


def test_a_fused_group_on_cuda_gives_each_model_its_own_updates_as_alone():
    from test_fused import data, runs

    from lenet.training.callbacks import Callbacks
    from lenet.training.fused import VmappedSteps
    from lenet.training.loop import FitSettings, train_epoch, train_epochs

    split = data(torch.float32)
    split.images, split.labels = split.images.cuda(), split.labels.cuda()
    settings = FitSettings(train=split, test=split, epochs=1, batch_size=64)
    fused, alone = runs(dtype=torch.float32), runs(dtype=torch.float32)
    for run in (*fused, *alone):
        run.model.cuda()
    steps = VmappedSteps(settings)
    steps.prepare(fused, settings, [Callbacks() for _ in fused])
    losses = train_epochs(fused, settings, [Callbacks() for _ in fused], steps)
    assert len(losses) == 3 and all(0 < v < 10 for v in losses)
    for a, b in zip(fused, alone):
        train_epoch(b, settings, Callbacks())
        for p, q in zip(a.model.parameters(), b.model.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
