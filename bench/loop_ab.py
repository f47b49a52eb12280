"""Per-step speed of the training loop against an older checkout's, in one process, alternating.

    python bench/loop_ab.py --old /path/to/checkout-of-ad95147 [--root ../shared/data] [--rounds 8] [--steps 200]

Both loops train their own LeNet-5 (same init) with fused SGD and a per-step one-cycle schedule, batch
128, on the preprocessed MNIST tensors; round by round, A B A B, so that the ratio holds on a busy
machine. The older checkout's ``lenet/engine.py`` (``train_one_epoch``) is loaded from its file.
"""

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import lenet.core.errors
import lenet.core.metrics
from lenet.core.data import Split, load_dataset
from lenet.core.models import create_model
from lenet.core.optim import Scheduler, build_optimizer
from lenet.core.schedules import onecycle
from lenet.training.callbacks import Callbacks
from lenet.training.loop import FitSettings, train_epoch
from lenet.training.state import TrainState


def old_loop(checkout: Path):
    sys.modules.setdefault("lenet.errors", lenet.core.errors)  # the old module's imports, at their new homes
    sys.modules.setdefault("lenet.metrics", lenet.core.metrics)
    spec = importlib.util.spec_from_file_location("old_engine", checkout / "lenet" / "engine.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.train_one_epoch


def recipe(total_steps: int):
    torch.manual_seed(0)
    model = create_model("lenet5").to(memory_format=torch.channels_last)
    optimizer = build_optimizer(
        model,
        {"_target_": "torch.optim.SGD", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
        torch.device("cpu"),
    )
    return model, optimizer, onecycle(optimizer, total_steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", type=Path, required=True)
    parser.add_argument("--root", type=Path, default=Path("../shared/data"))
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    train_one_epoch = old_loop(args.old)
    train = load_dataset("mnist", args.root, False, "pad", [0.1307], [0.3081], torch.device("cpu")).train
    chunk = args.steps * args.batch_size
    total = (args.rounds + 1) * args.steps
    old_model, old_opt, old_sched = recipe(total)
    model, optimizer, schedule = recipe(total)
    run = TrainState(model, optimizer, Scheduler(schedule, "step"), F.cross_entropy, torch.Generator().manual_seed(0))
    old_gen = torch.Generator().manual_seed(0)
    times = {"old": [], "new": []}
    for r in range(args.rounds + 1):  # round 0 warms both up
        part = Split(train.images[(r * chunk) % 50000 :][:chunk], train.labels[(r * chunk) % 50000 :][:chunk])
        start = time.perf_counter()
        train_one_epoch(
            old_model, F.cross_entropy, old_opt, part.images, part.labels, args.batch_size, old_gen, scheduler=old_sched
        )
        old_ms = 1000 * (time.perf_counter() - start) / args.steps
        start = time.perf_counter()
        train_epoch(run, FitSettings(train=part, test=part, epochs=1, batch_size=args.batch_size), Callbacks())
        new_ms = 1000 * (time.perf_counter() - start) / args.steps
        if r:
            times["old"].append(old_ms)
            times["new"].append(new_ms)
    report = {
        k: {"median_ms_per_step": statistics.median(v), "each_round": [round(x, 3) for x in v]}
        for k, v in times.items()
    }
    report["new_over_old"] = report["new"]["median_ms_per_step"] / report["old"]["median_ms_per_step"]
    report["threads"] = torch.get_num_threads()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
