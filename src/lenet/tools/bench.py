"""Speed of the harness against the usual torchvision DataLoader script: steps, whole processes, time to an accuracy.

    lenet-bench [--root data] [--device cpu] [--batch-size 64] [--steps 300] [--rounds 3] [--json]
    lenet-bench process [--epochs 2] [--train train.py]   # whole processes: train.py vs the usual script
    lenet-bench process --logger wandb                    # both logging to W&B (offline)
    lenet-bench process --recipe default --epochs 10      # the main job (train.py as users run it) vs the script
    lenet-bench reference [--epochs 2]                    # the usual script alone
    lenet-bench reach --target 0.99 --override device=cuda ...  # time for train.py to reach an accuracy
    lenet-bench interleaved --candidate "trainer.batch_size=128" --candidate "trainer.batch_size=256" \
        [--epochs 2] [--rounds 3] [--override KEY=VALUE ...]  # candidates' train.py, round after round

(or ``python -m lenet.bench ...``). ``--root`` holds MNIST/raw (default ``data``, as train.py's
``data.root``); the modes that run ``train.py`` take the one in the current directory unless
``--train`` names another: run them from a lenet checkout. The steps mode needs only the data.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch

from lenet.run.outcome import read_summary
from lenet.run.tracking import read_metrics
from lenet.tools.step_bench import bench_steps, machine, reference_run


def _train_script(path: Path) -> Path:
    if not path.is_file():
        raise SystemExit(
            f"error: {path} does not exist: this mode runs train.py; run it from a lenet checkout or pass --train PATH"
        )
    return path.resolve()


def bench_process(
    root: Path,
    epochs: int,
    batch_size: int,
    rounds: int,
    device: str,
    workers: int,
    logger: str = "none",
    train: Path = Path("train.py"),
    recipe: str = "seed",
) -> dict[str, Any]:
    """Wall time of whole processes: ``train.py`` vs the usual script, alternating.

    ``recipe="seed"``: train.py with the usual script's settings (Adam, no schedule, its batch, resized images,
    every training image); ``"default"``: train.py as a user runs it (the main job), only the data, epochs,
    seed and logger given. Round ``r`` runs both with seed ``r``, so the accuracies compare over as many seeds
    as rounds. With ``logger="wandb"`` both log to W&B offline: train.py with ``logger=wandb``, the usual
    script in-process.
    """
    import tempfile

    results: dict[str, list] = {"usual": [], "harness": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            usual_cmd = [
                sys.executable,
                "-m",
                "lenet.bench",
                "reference",
                "--root",
                str(root),
                "--epochs",
                str(epochs),
                "--batch-size",
                str(batch_size),
                "--device",
                device,
                "--workers",
                str(workers),
                "--seed",
                str(r),
            ]
            if logger == "wandb":  # the usual script logs to W&B too: both sides do the same
                usual_cmd += ["--wandb-dir", str(Path(tmp) / f"usual{r}")]
            start = time.perf_counter()
            out = subprocess.run(usual_cmd, capture_output=True, text=True, check=True).stdout
            results["usual"].append(
                {
                    "seconds": time.perf_counter() - start,
                    "final_test_acc": json.loads(out.splitlines()[-1])["final_test_acc"],
                }
            )
            run_dir = Path(tmp) / f"run{r}"
            same_as_usual = [
                f"trainer.batch_size={batch_size}",
                "optimizer=adam",
                "scheduler=none",
                "data.resize=resize",
                "data.val_size=0",  # the usual script trains on every training image and validates on none
                "trainer.best=null",
            ]
            harness_cmd = [
                sys.executable,
                str(train),
                f"data.root={root}",
                f"trainer.epochs={epochs}",
                *(same_as_usual if recipe == "seed" else []),
                f"logger={logger}",
                f"device={device}",
                f"seed={r}",
                f"hydra.run.dir={run_dir}",
            ]
            start = time.perf_counter()
            subprocess.run(harness_cmd, capture_output=True, text=True, check=True)
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
    report["setup"] = {
        "epochs": epochs,
        "batch_size": batch_size,
        "rounds": rounds,
        "device": device,
        "logger": logger,
        "recipe": recipe,
        **machine(),
    }
    return report


def time_to_accuracy(run_dir: Path, target: float) -> dict[str, Any]:
    """From a finished run's files: the first epoch at ``target`` test accuracy and the seconds to its end.

    ``seconds`` count from the process's start: its start-up to the first step, then each epoch's
    training and evaluation (checkpoint writes between epochs, a few ms, are left out);
    ``training_seconds`` only the epochs'.
    """
    summary, rows = read_summary(run_dir) or {}, read_metrics(run_dir)
    startup = summary.get("startup_seconds") or summary.get("setup_seconds") or 0.0
    training, reached = 0.0, None
    for row in rows:
        training += row["seconds"]
        if row["test_acc"] >= target:
            reached = {"epoch": row["epoch"], "seconds": startup + training, "training_seconds": training}
            break
    return {
        "target": target,
        "reached": reached,
        "final_test_acc": summary.get("final_test_acc"),
        "epochs": len(rows),
        "seconds_per_epoch": summary.get("seconds_per_epoch"),
        "startup_seconds": summary.get("startup_seconds"),
        "cuda_graphs": summary.get("cuda_graphs"),
        "cuda_graphs_off": summary.get("cuda_graphs_off"),
        "compile_seconds": summary.get("compile_seconds"),
    }


def bench_reach(overrides: list[str], target: float, train: Path = Path("train.py")) -> dict[str, Any]:
    """Run ``train.py OVERRIDES`` once (W&B off) and report when it reached ``target`` test accuracy."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [sys.executable, str(train), "logger=none", *overrides, f"hydra.run.dir={run_dir}"]
        start = time.perf_counter()
        subprocess.run(cmd, check=True)
        report = time_to_accuracy(run_dir, target)
    report.update(overrides=overrides, process_seconds=time.perf_counter() - start, **machine())
    return report


def bench_interleaved(
    candidates: list[list[str]], overrides: list[str], rounds: int, train: Path = Path("train.py")
) -> dict[str, Any]:
    """Whole processes of ``train.py`` for each candidate (a list of overrides), one of each per round, in turn:
    each one's seconds per epoch and process seconds (medians over rounds), measured in the same minutes."""
    import tempfile

    measured: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(candidates))}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for i, candidate in enumerate(candidates):
                run_dir = Path(tmp) / f"{i}-{r}"
                cmd = [sys.executable, str(train), "logger=none", *overrides, *candidate, f"hydra.run.dir={run_dir}"]
                start = time.perf_counter()
                subprocess.run(cmd, capture_output=True, text=True, check=True)
                seconds = time.perf_counter() - start
                summary = read_summary(run_dir) or {}
                measured[i].append(
                    {
                        "process_seconds": seconds,
                        "seconds_per_epoch": summary.get("seconds_per_epoch"),
                        "final_test_acc": summary.get("final_test_acc"),
                    }
                )
    report: dict[str, Any] = {"candidates": [], **machine()}
    for i, candidate in enumerate(candidates):
        runs = measured[i]
        report["candidates"].append(
            {
                "overrides": candidate,
                "process_seconds": statistics.median(x["process_seconds"] for x in runs),
                "seconds_per_epoch": statistics.median(x["seconds_per_epoch"] for x in runs),
                "seconds_per_epoch_each_round": [x["seconds_per_epoch"] for x in runs],
                "process_seconds_each_round": [x["process_seconds"] for x in runs],
            }
        )
    report["rounds"], report["overrides"] = rounds, overrides
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
        f"whole process, {s['epochs']} epochs, the usual script's batch {s['batch_size']}, {s['rounds']} rounds, "
        f"{s['cpu_cores']} cores, logger={s['logger']} (both scripts), train.py "
        + ("with the usual script's settings" if s["recipe"] == "seed" else "as users run it (its default recipe)")
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
    prog = "lenet-bench" if Path(sys.argv[0]).name == "lenet-bench" else "python -m lenet.bench"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "mode", nargs="?", default="steps", choices=["steps", "process", "reference", "reach", "interleaved"]
    )
    parser.add_argument("--root", type=Path, default=Path("data"), help="folder holding MNIST/raw (default: data)")
    parser.add_argument(
        "--train",
        type=Path,
        default=Path("train.py"),
        help="process and reach modes: the train.py to run (default: the current directory's)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=300, help="training steps per round (steps mode)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs (process and reference modes)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="seed of the usual script (reference mode)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers of the usual pipeline")
    parser.add_argument(
        "--logger",
        default="none",
        choices=["none", "wandb"],
        help="process mode: both scripts log to W&B offline (train.py with logger=wandb)",
    )
    parser.add_argument("--wandb-dir", type=Path, help="reference mode: log to W&B offline in this folder")
    parser.add_argument(
        "--recipe",
        default="seed",
        choices=["seed", "default"],
        help="process mode: train.py with the usual script's settings (seed), or as a user runs it (default)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--target", type=float, default=0.99, help="reach mode: the test accuracy to reach")
    parser.add_argument(
        "--override", action="append", default=[], help="reach and interleaved modes: a train.py override (repeat)"
    )
    parser.add_argument(
        "--candidate", action="append", default=[], help="interleaved mode: one candidate's overrides (repeat)"
    )
    args = parser.parse_args(argv)
    if args.mode == "interleaved":
        candidates = [c.split() for c in args.candidate]
        report = bench_interleaved(candidates, [f"data.root={args.root.resolve()}", *args.override], args.rounds)
        if args.json:
            print(json.dumps(report, indent=2))
            return
        print(f"interleaved, {args.rounds} rounds, {report['cpu_cores']} cores, torch {report['torch']}")
        for c in report["candidates"]:
            print(
                f"  {' '.join(c['overrides']) or '(default)':60s} {c['seconds_per_epoch']:6.2f} s/epoch   "
                f"{c['process_seconds']:6.1f} s process (medians)"
            )
        return
    if args.mode == "reach":
        print(json.dumps(bench_reach(args.override, args.target, _train_script(args.train))))
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
        report = bench_process(
            root,
            args.epochs,
            args.batch_size,
            args.rounds,
            args.device,
            args.workers,
            args.logger,
            _train_script(args.train),
            args.recipe,
        )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        (_print_steps if args.mode == "steps" else _print_process)(report)


if __name__ == "__main__":
    main()
