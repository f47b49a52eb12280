"""trainer.compile: compiled once per run, for one training and one evaluation shape, before the first step."""

import pytest
import torch
import torch.nn.functional as F

from lenet.core.data import Split
from lenet.core.metrics import build_metrics
from lenet.core.models import create_model
from lenet.core.optim import Scheduler
from lenet.core.schedules import constant
from lenet.training.callbacks import Callbacks
from lenet.training.compiled import precompile
from lenet.training.loop import FitSettings, autocast, fit
from lenet.training.state import TrainState


class CountingBackend:
    """A torch.compile backend that runs the captured graph as it is and counts the graphs it was given."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1
        return graph_module.forward


def split(n, seed):
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randn(n, 1, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))


def run_and_settings(backend=None):
    torch.manual_seed(0)
    model = create_model("lenet5")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    run = TrainState(model, optimizer, Scheduler(constant(optimizer), "epoch"), F.cross_entropy, torch.Generator())
    # 200 = 6 x 32 + 8 and 150 = 2 x 64 + 22: a smaller last batch in training and in evaluation
    settings = FitSettings(
        train=split(200, 1), test=split(150, 2), epochs=2, batch_size=32, eval_batch_size=64, metrics=build_metrics([])
    )
    if backend is not None:
        torch._dynamo.reset()
        run.compiled = torch.compile(model, dynamic=False, backend=backend)
    return run, settings


def test_a_compiled_run_compiles_two_graphs_and_trains_as_the_eager_one():
    backend = CountingBackend()
    compiled, settings = run_and_settings(backend)
    fit(compiled, settings, Callbacks())
    assert backend.graphs == 2  # training mode at batch 32, evaluation mode at batch 64: nothing else, ever
    assert compiled.notes["compile_seconds"] > 0
    eager, settings = run_and_settings()
    fit(eager, settings, Callbacks())
    for a, b in zip(eager.model.parameters(), compiled.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert [r["test_loss"] for r in eager.history] == pytest.approx([r["test_loss"] for r in compiled.history])
    compiled.compiled = torch.compile(compiled.model, dynamic=False, backend=backend)
    compiled.compiled(settings.train.images[:8])  # the shape the loop keeps from it would compile once more
    assert backend.graphs == 3


def test_precompiling_trains_nothing_and_leaves_the_random_states():
    run, settings = run_and_settings(CountingBackend())
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    rng = torch.get_rng_state()
    seconds = precompile(
        run.compiled, run.model, run.loss_fn, settings.train, settings.test, (32, 64), lambda: autocast(None, False)
    )
    assert seconds > 0 and run.model.training
    assert all(torch.equal(before[k], v) for k, v in run.model.state_dict().items())
    assert all(p.grad is None for p in run.model.parameters()) and torch.equal(rng, torch.get_rng_state())
