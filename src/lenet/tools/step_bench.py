"""Training steps per second: the harness's path (tensors on the device) against the usual DataLoader pipeline.

The usual pipeline is torchvision's MNIST with Resize(32), ToTensor and Normalize applied per
sample, batched by a DataLoader; the harness keeps the preprocessed set as tensors on the device.
Both train the same model with the same optimizer and batch size, in one process, alternating, so
that the ratio holds even on a busy machine. ``reference_run`` is the usual script end to end.
"""

from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn.functional as F

from lenet.core.data import Split, load_dataset
from lenet.core.models import create_model
from lenet.core.optim import Scheduler, build_optimizer
from lenet.core.schedules import constant
from lenet.run.threads import available_cores
from lenet.training.callbacks import Callbacks
from lenet.training.loop import FitSettings, train_epoch
from lenet.training.state import TrainState

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


# ----------------------------------------------------------------------------- the usual pipeline


def usual_loaders(root: Path, batch_size: int, workers: int, seed: int) -> tuple[Any, Any]:
    """torchvision MNIST with per-sample Resize(32)/ToTensor/Normalize, through DataLoaders."""
    from torchvision import datasets, transforms

    transform = transforms.Compose(
        [transforms.Resize(32), transforms.ToTensor(), transforms.Normalize((MNIST_MEAN,), (MNIST_STD,))]
    )
    train = datasets.MNIST(str(root), train=True, download=False, transform=transform)
    test = datasets.MNIST(str(root), train=False, download=False, transform=transform)
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        train, batch_size=batch_size, shuffle=True, num_workers=workers, generator=generator
    )
    test_loader = torch.utils.data.DataLoader(test, batch_size=1000, num_workers=workers)
    return loader, test_loader


def usual_train_steps(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: Iterator, steps: int, device: torch.device
) -> int:
    """The usual loop body, ``steps`` times; returns the number of images seen."""
    model.train()
    seen = 0
    for _ in range(steps):
        x, y = next(batches)
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        seen += len(y)
    return seen


def usual_evaluate(model: torch.nn.Module, loader: Any, device: torch.device) -> float:
    """Test accuracy the usual way: batch by batch from the DataLoader."""
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            correct += (model(x).argmax(1) == y).sum().item()
            total += len(y)
    return correct / total


def reference_run(
    root: Path,
    epochs: int,
    batch_size: int,
    device: torch.device,
    workers: int,
    seed: int,
    wandb_dir: Optional[Path] = None,
) -> float:
    """The usual script end to end: train ``epochs`` with Adam(1e-3), test after each; final accuracy.

    With ``wandb_dir`` it also logs to W&B (offline, in that folder) the usual way: W&B imported and run
    in the training process, one row per epoch.
    """
    run = None
    if wandb_dir is not None:
        import wandb  # after torch, as in most scripts (isort puts torch before wandb)

        config = {"epochs": epochs, "batch_size": batch_size, "lr": 1e-3, "seed": seed}
        run = wandb.init(project="lenet-bench", dir=str(wandb_dir), mode="offline", config=config)
    torch.manual_seed(seed)
    loader, test_loader = usual_loaders(root, batch_size, workers, seed)
    model = create_model("lenet5").to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    accuracy = 0.0
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        usual_train_steps(model, optimizer, iter(loader), len(loader), device)
        accuracy = usual_evaluate(model, test_loader, device)
        print(f"epoch {epoch}/{epochs}  test_acc {100 * accuracy:.2f}%  {time.perf_counter() - start:.1f}s", flush=True)
        if run is not None:
            run.log({"epoch": epoch, "test_acc": accuracy})
    if run is not None:
        run.summary["final_test_acc"] = accuracy
        run.finish()
    return accuracy


# ----------------------------------------------------------------------------- measurement


class PeakMemory:
    """Peak memory while the block runs: the CUDA allocator's peak on a GPU, else the process's peak RSS.

    On Linux the kernel's peak-RSS counter is reset when the block starts (``/proc/self/clear_refs``).
    """

    def __init__(self, device: torch.device):
        self.device, self.peak_bytes = device, 0

    @staticmethod
    def _peak_rss() -> int:
        with open("/proc/self/status") as f:
            line = next(line for line in f if line.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated()
        else:
            self.peak_bytes = self._peak_rss()


def _timed(device: torch.device, fn: Callable[[], int]) -> tuple[float, int, int]:
    with PeakMemory(device) as memory:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        images = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return seconds, images, memory.peak_bytes


def bench_steps(
    root: Path, device: torch.device, batch_size: int, steps: int, rounds: int, workers: int, warmup: int = 20
) -> dict[str, Any]:
    """Images per second of both pipelines over ``steps`` training steps, alternating for ``rounds``."""
    torch.manual_seed(0)
    loader, _ = usual_loaders(root, batch_size, workers, seed=0)
    usual_model = create_model("lenet5").to(device)
    usual_opt = torch.optim.Adam(usual_model.parameters(), lr=1e-3)

    def endless() -> Iterator:
        while True:
            yield from loader

    usual_batches = endless()
    usual_train_steps(usual_model, usual_opt, usual_batches, warmup, device)

    setup_start = time.perf_counter()
    train = load_dataset("mnist", root, False, "resize", MNIST_MEAN, MNIST_STD, device).train
    setup_seconds = time.perf_counter() - setup_start
    torch.manual_seed(0)
    model = create_model("lenet5").to(device, memory_format=torch.channels_last)  # as train.py builds it
    optimizer = build_optimizer(model, {"_target_": "torch.optim.Adam", "lr": 1e-3}, device)  # as train.py builds it
    scheduler = Scheduler(constant(optimizer), interval="epoch")  # the lr as given, as in the usual loop
    run = TrainState(model, optimizer, scheduler, F.cross_entropy, torch.Generator().manual_seed(0))
    chunk = steps * batch_size

    def harness_steps(offset: int) -> int:
        part = Split(train.images[offset : offset + chunk], train.labels[offset : offset + chunk])
        train_epoch(run, FitSettings(train=part, test=part, epochs=1, batch_size=batch_size), Callbacks())
        return len(part)

    if warmup:
        harness_steps(0)
    results: dict[str, list] = {"usual": [], "harness": []}
    for r in range(rounds):
        results["usual"].append(
            _timed(device, lambda: usual_train_steps(usual_model, usual_opt, usual_batches, steps, device))
        )
        offset = (r * chunk) % max(1, len(train) - chunk)
        results["harness"].append(_timed(device, lambda offset=offset: harness_steps(offset)))

    report: dict[str, Any] = {}
    for name, runs in results.items():
        rates = [images / seconds for seconds, images, _ in runs]
        report[name] = {
            "images_per_second": statistics.median(rates),
            "images_per_second_each_round": rates,
            "peak_memory_mb": max(peak for _, _, peak in runs) / 2**20,
        }
    report["harness"]["preload_seconds"] = setup_seconds
    # what each keeps resident for the data: uint8 images (usual) vs preprocessed float32 (harness)
    usual_data = loader.dataset.data.nbytes + loader.dataset.targets.nbytes
    report["usual"]["data_memory_mb"] = usual_data / 2**20
    report["harness"]["data_memory_mb"] = (train.images.nbytes + train.labels.nbytes) / 2**20
    report["speedup"] = report["harness"]["images_per_second"] / report["usual"]["images_per_second"]
    report["setup"] = {
        "device": str(device),
        "batch_size": batch_size,
        "steps": steps,
        "rounds": rounds,
        "workers": workers,
        **machine(),
    }
    return report


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    info = {
        "cpu_cores": available_cores(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info
