"""Speed of the harness's training path against the usual torchvision DataLoader pipeline.

    python -m lenet.bench [--device cpu] [--batch-size 64] [--steps 300] [--rounds 3] [--json]
    python -m lenet.bench process [--epochs 2]     # whole processes: train.py vs the usual script
    python -m lenet.bench process --logger wandb   # both logging to W&B (offline)
    python -m lenet.bench reference [--epochs 2]   # the usual script alone
    python -m lenet.bench reach --target 0.99 --override device=cuda ...  # time for train.py to reach an accuracy

The usual pipeline is torchvision's MNIST with Resize(32), ToTensor and Normalize applied per
sample, batched by a DataLoader; the harness keeps the preprocessed set as tensors on the device.
Both train the same model with the same optimizer and batch size, in one process, alternating, so
that the ratio holds even on a busy machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn.functional as F

from lenet.core.data import load_dataset
from lenet.train.loop import train_one_epoch
from lenet.core.models import create_model
from lenet.core.optim import build_optimizer
from lenet.run.threads import available_cores
from lenet.run.tracking import read_metrics, read_summary

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
REPO = Path(__file__).resolve().parents[1]


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


def reference_run(root: Path, epochs: int, batch_size: int, device: torch.device, workers: int, seed: int,
                  wandb_dir: Optional[Path] = None) -> float:  # fmt: skip
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


def bench_steps(root: Path, device: torch.device, batch_size: int, steps: int, rounds: int, workers: int,
                warmup: int = 20) -> dict[str, Any]:  # fmt: skip
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
    train, _ = load_dataset("mnist", root, False, "resize", MNIST_MEAN, MNIST_STD, device)
    setup_seconds = time.perf_counter() - setup_start
    torch.manual_seed(0)
    model = create_model("lenet5").to(device, memory_format=torch.channels_last)  # as train.py builds it
    optimizer = build_optimizer(model, {"_target_": "torch.optim.Adam", "lr": 1e-3}, device)  # as train.py builds it
    generator = torch.Generator().manual_seed(0)
    chunk = steps * batch_size

    def harness_steps(offset: int) -> int:
        images, labels = train.images[offset : offset + chunk], train.labels[offset : offset + chunk]
        train_one_epoch(model, F.cross_entropy, optimizer, images, labels, batch_size, generator)
        return len(labels)

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
    report["setup"] = {"device": str(device), "batch_size": batch_size, "steps": steps, "rounds": rounds,
                       "workers": workers, **machine()}  # fmt: skip
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


def bench_process(root: Path, epochs: int, batch_size: int, rounds: int, device: str, workers: int,
                  logger: str = "none") -> dict[str, Any]:  # fmt: skip
    """Wall time of whole processes: ``train.py`` (seed path settings) vs the usual script, alternating.

    Round ``r`` runs both with seed ``r``, so the accuracies compare over as many seeds as rounds. With
    ``logger="wandb"`` both log to W&B offline: train.py with ``logger=wandb``, the usual script in-process.
    """
    import tempfile

    results: dict[str, list] = {"usual": [], "harness": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            usual_cmd = [sys.executable, "-m", "lenet.bench", "reference", "--root", str(root), "--epochs", str(epochs),
                         "--batch-size", str(batch_size), "--device", device, "--workers", str(workers), "--seed", str(r)]  # fmt: skip
            if logger == "wandb":  # the usual script logs to W&B too: both sides do the same
                usual_cmd += ["--wandb-dir", str(Path(tmp) / f"usual{r}")]
            start = time.perf_counter()
            out = subprocess.run(usual_cmd, capture_output=True, text=True, check=True, cwd=REPO).stdout
            results["usual"].append(
                {
                    "seconds": time.perf_counter() - start,
                    "final_test_acc": json.loads(out.splitlines()[-1])["final_test_acc"],
                }
            )
            run_dir = Path(tmp) / f"run{r}"
            harness_cmd = [sys.executable, str(REPO / "train.py"), f"data.root={root}", f"trainer.epochs={epochs}",
                           f"trainer.batch_size={batch_size}", "optimizer=adam", "scheduler=none", "data.resize=resize",
                           f"logger={logger}", f"device={device}", f"seed={r}", f"hydra.run.dir={run_dir}"]  # fmt: skip
            start = time.perf_counter()
            subprocess.run(harness_cmd, capture_output=True, text=True, check=True, cwd=REPO)
            summary = read_summary(run_dir)
            seconds = time.perf_counter() - start
            results["harness"].append(
                {
                    "seconds": seconds,
                    "final_test_acc": summary["final_test_acc"],
                    "startup_seconds": summary.get("startup_seconds"),
                    "seconds_per_epoch": summary.get("seconds_per_epoch"),
                }
            )
    report: dict[str, Any] = {}
    for name, runs in results.items():
        report[name] = {
            "seconds": statistics.median(r["seconds"] for r in runs),
            "seconds_each_round": [r["seconds"] for r in runs],
            "final_test_acc_each_round": [r["final_test_acc"] for r in runs],
            "final_test_acc_mean": statistics.mean(r["final_test_acc"] for r in runs),
        }
    report["harness"]["startup_seconds_each_round"] = [r["startup_seconds"] for r in results["harness"]]
    report["harness"]["seconds_per_epoch_each_round"] = [r["seconds_per_epoch"] for r in results["harness"]]
    report["speedup"] = report["usual"]["seconds"] / report["harness"]["seconds"]
    report["setup"] = {"epochs": epochs, "batch_size": batch_size, "rounds": rounds, "device": device,
                       "logger": logger, **machine()}  # fmt: skip
    return report


def time_to_accuracy(run_dir: Path, target: float) -> dict[str, Any]:
    """From a finished run's files: the first epoch at ``target`` test accuracy and the seconds to its end.

    Seconds count from the process's start: its start-up to the first step, then each epoch's
    training and evaluation (checkpoint writes between epochs, a few ms, are left out).
    """
    summary, rows = read_summary(run_dir) or {}, read_metrics(run_dir)
    elapsed = summary.get("startup_seconds") or summary.get("setup_seconds") or 0.0
    reached = None
    for row in rows:
        elapsed += row["seconds"]
        if row["test_acc"] >= target:
            reached = {"epoch": row["epoch"], "seconds": elapsed}
            break
    return {"target": target, "reached": reached, "final_test_acc": summary.get("final_test_acc"),
            "epochs": len(rows), "seconds_per_epoch": summary.get("seconds_per_epoch"),
            "startup_seconds": summary.get("startup_seconds")}  # fmt: skip


def bench_reach(overrides: list[str], target: float) -> dict[str, Any]:
    """Run ``train.py OVERRIDES`` once (W&B off) and report when it reached ``target`` test accuracy."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [sys.executable, str(REPO / "train.py"), "logger=none", *overrides, f"hydra.run.dir={run_dir}"]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=REPO)
        report = time_to_accuracy(run_dir, target)
    report.update(overrides=overrides, process_seconds=time.perf_counter() - start, **machine())
    return report


def _print_steps(report: dict[str, Any]) -> None:
    s = report["setup"]
    print(f"{s['device']}, batch {s['batch_size']}, {s['steps']} steps x {s['rounds']} rounds, ", end="")
    print(f"{s['cpu_cores']} cores, torch {s['torch']}")
    for name in ("usual", "harness"):
        r = report[name]
        print(
            f"  {name:8s} {r['images_per_second']:9.0f} images/s   peak memory {r['peak_memory_mb']:6.0f} MB"
            f"   training set held as {r['data_memory_mb']:5.0f} MB"
        )
    print(f"  speed-up {report['speedup']:.2f}x (harness / usual, median of rounds)")


def _print_process(report: dict[str, Any]) -> None:
    s = report["setup"]
    print(
        f"whole process, {s['epochs']} epochs, batch {s['batch_size']}, {s['rounds']} rounds, {s['cpu_cores']} cores, "
        f"logger={s['logger']} (both scripts)"
    )
    for name in ("usual", "harness"):
        r = report[name]
        accs = ", ".join(f"{100 * a:.2f}" for a in r["final_test_acc_each_round"])
        print(
            f"  {name:8s} {r['seconds']:6.1f} s   final test acc {100 * r['final_test_acc_mean']:.2f}% (seeds: {accs})"
        )
    startups = [x for x in report["harness"]["startup_seconds_each_round"] if x is not None]
    if startups:
        print(f"  harness start-up to the first training step: {statistics.median(startups):.2f} s")
    print(f"  speed-up {report['speedup']:.2f}x (usual / harness wall time, median of rounds)")


def main(argv: Optional[list[str]] = None) -> None:
    """Command line; see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m lenet.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", default="steps", choices=["steps", "process", "reference", "reach"])
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared" / "data", help="folder holding MNIST/raw")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=300, help="training steps per round (steps mode)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs (process and reference modes)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="seed of the usual script (reference mode)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers of the usual pipeline")
    parser.add_argument("--logger", default="none", choices=["none", "wandb"],
                        help="process mode: both scripts log to W&B offline (train.py with logger=wandb)")  # fmt: skip
    parser.add_argument("--wandb-dir", type=Path, help="reference mode: log to W&B offline in this folder")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--target", type=float, default=0.99, help="reach mode: the test accuracy to reach")
    parser.add_argument("--override", action="append", default=[], help="reach mode: a train.py override (repeat)")
    args = parser.parse_args(argv)
    if args.mode == "reach":
        print(json.dumps(bench_reach(args.override, args.target)))
        return
    device = torch.device(args.device)
    root = args.root.resolve()
    if args.mode == "reference":
        if args.logger == "wandb" and args.wandb_dir is None:
            parser.error("reference mode logs to W&B with --wandb-dir FOLDER")
        accuracy = reference_run(root, args.epochs, args.batch_size, device, args.workers, args.seed, args.wandb_dir)
        print(json.dumps({"final_test_acc": accuracy}))
        return
    if args.mode == "steps":
        report = bench_steps(root, device, args.batch_size, args.steps, args.rounds, args.workers)
    else:
        report = bench_process(root, args.epochs, args.batch_size, args.rounds, args.device, args.workers, args.logger)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        (_print_steps if args.mode == "steps" else _print_process)(report)


if __name__ == "__main__":
    main()
