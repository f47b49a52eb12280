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


def test_a_fused_group_on_cuda_gives_each_model_its_own_gradients():
    from test_fused import LRS, data, models

    from lenet.core.optim import Scheduler
    from lenet.core.schedules import onecycle
    from lenet.train.callbacks import Callbacks
    from lenet.train.fused import FusedGroup, MemberState, fused_train_epoch
    from lenet.train.loop import FitSettings

    split = data(torch.float32)
    split.images, split.labels = split.images.cuda(), split.labels.cuda()
    fused_models = [m.float().cuda() for m in models()]
    params = [{n: p.detach().clone().requires_grad_() for n, p in m.named_parameters()} for m in fused_models]
    optimizer = torch.optim.SGD([{"params": list(p.values()), "lr": lr} for p, lr in zip(params, LRS)])
    group = FusedGroup(fused_models[0], [], optimizer, Scheduler(onecycle(optimizer, 30), "step"), F.cross_entropy)
    for i, p in enumerate(params):
        group.members.append(MemberState(group, i, p, torch.Generator().manual_seed(i), torch.get_rng_state()))
    losses = fused_train_epoch(group, FitSettings(train=split, test=split, epochs=1, batch_size=64), Callbacks())
    assert len(losses) == 3 and all(0 < v < 10 for v in losses.values())
