"""python -m lenet.evaluate RUN_DIR: a run's weights on its test set, with pictures of what it gets wrong.

Writes into the run dir: ``evaluation.json`` (test loss and accuracy, per-class accuracy, the
confusion matrix), ``confusion_matrix.png`` and ``misclassified.png`` (a grid of the misclassified
test images with their true and predicted labels); with ``--weights best``, the same names ending in
``_best``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from lenet.core.errors import UserError
from lenet.core.losses import build_loss
from lenet.core.metrics import build_metrics
from lenet.run.assemble import load_configured
from lenet.run.files import check_writable_name, save_figure, write_text
from lenet.tools.inference import Run, add_loading_arguments, load_run
from lenet.training.loop import evaluate as evaluate_model

GRID_COLUMNS = 10
MAX_SHOWN = 100  # misclassified images in the grid
OUTPUTS = (("evaluation", "json"), ("confusion_matrix", "png"), ("misclassified", "png"))


def run_cwd(run_dir: Path) -> Path:
    """Where the run was started (relative data.root values are relative to it); the run dir when unknown."""
    from omegaconf import OmegaConf

    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    try:
        cwd = OmegaConf.select(OmegaConf.load(hydra_file), "hydra.runtime.cwd") if hydra_file.is_file() else None
    except Exception:  # not YAML, not Hydra's: where the run started is unknown
        cwd = None
    return Path(cwd) if isinstance(cwd, str) and cwd else run_dir


def evaluate_run(run: Run, data_root: Optional[Path] = None, batch_size: int = 1000) -> dict[str, Any]:
    """Test loss, accuracy, per-class accuracy and confusion matrix of ``run``'s weights; writes the PNGs too."""
    suffix = "_best" if run.weights == "best.pth" else ""  # the best weights' files beside the final ones'
    outputs = [run.run_dir / f"{name}{suffix}.{kind}" for name, kind in OUTPUTS]
    for path in outputs:  # before any work: a link or a folder at one of its names is refused
        check_writable_name(path)
    data = run.cfg.data
    root = data_root or Path(data.root).expanduser()
    if not root.is_absolute():
        root = run_cwd(run.run_dir) / root
    test = load_configured(data, root, run.device, download=False).test
    loss_fn = build_loss(run.cfg.loss)
    with torch.inference_mode():
        result = evaluate_model(run.model, loss_fn, test, batch_size, metrics=build_metrics(["per_class_accuracy"]))
        predicted = torch.cat(
            [run.model(test.images[i : i + batch_size]).argmax(1) for i in range(0, len(test), batch_size)]
        ).cpu()
    labels = test.labels.cpu()
    classes = data.num_classes
    confusion = torch.bincount(labels * classes + predicted, minlength=classes * classes).view(classes, classes)
    report = {
        "test_loss": result["test_loss"],
        "test_acc": result["test_acc"],
        "per_class_accuracy": {k.rsplit("_", 1)[1]: v for k, v in result.items() if k.startswith("test_per_class")},
        "confusion_matrix": confusion.tolist(),
        "misclassified": int((predicted != labels).sum()),
        "test_images": len(labels),
        "weights": run.weights,
    }
    write_text(outputs[0], json.dumps(report, indent=2) + "\n")
    _plot_confusion(confusion.numpy(), outputs[1])
    wrong = (predicted != labels).nonzero().flatten()[:MAX_SHOWN]
    _plot_misclassified(run, test.images[wrong].cpu(), labels[wrong], predicted[wrong], outputs[2])
    return report


def _plot_confusion(confusion: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = len(confusion)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * classes, 0.8 + 0.5 * classes), layout="constrained")
    shown = np.log1p(confusion)  # the diagonal dwarfs the mistakes on a linear scale
    ax.imshow(shown, cmap="Blues")
    for true in range(classes):
        for pred in range(classes):
            if confusion[true, pred]:
                light = shown[true, pred] > shown.max() * 0.6
                ax.text(
                    pred,
                    true,
                    str(confusion[true, pred]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if light else "black",
                )
    ax.set(
        xlabel="predicted",
        ylabel="true",
        xticks=range(classes),
        yticks=range(classes),
        title=f"confusion matrix ({int(confusion.sum() - np.trace(confusion))} of {int(confusion.sum())} wrong)",
    )
    try:
        save_figure(fig, path, dpi=120)
    finally:
        plt.close(fig)


def _plot_misclassified(
    run: Run, images: torch.Tensor, true: torch.Tensor, predicted: torch.Tensor, path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(1, -(-len(images) // GRID_COLUMNS))
    fig, axes = plt.subplots(rows, GRID_COLUMNS, figsize=(GRID_COLUMNS * 1.1, rows * 1.3), squeeze=False)
    mean = torch.tensor(run.cfg.data.mean).view(-1, 1, 1)
    std = torch.tensor(run.cfg.data.std).view(-1, 1, 1)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, t, p in zip(axes.flat, images, true.tolist(), predicted.tolist()):
        pixels = (image.float() * std + mean).clamp(0, 1).permute(1, 2, 0).squeeze(-1).numpy()
        ax.imshow(pixels, cmap="gray" if pixels.ndim == 2 else None)
        ax.set_title(f"{t} as {p}", fontsize=8, color="crimson")
    if not len(images):
        axes.flat[0].set_title("no misclassified test image")
    fig.suptitle(f"misclassified test images (true as predicted), first {len(images)}", fontsize=10)
    try:
        save_figure(fig, path, dpi=100)
    finally:
        plt.close(fig)


def main(argv: Optional[list[str]] = None) -> None:
    """Command line: evaluate a run dir, print the figures, write the files."""
    parser = argparse.ArgumentParser(prog="python -m lenet.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run's output dir (outputs/DATE/TIME or multirun/.../N)")
    parser.add_argument("--data-root", type=Path, help="where the dataset is, if not where the run found it")
    add_loading_arguments(parser)
    args = parser.parse_args(argv)
    try:
        report = evaluate_run(
            load_run(args.run_dir, args.device, trust=args.trust, weights=args.weights), args.data_root
        )
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    worst = sorted(report["per_class_accuracy"].items(), key=lambda kv: kv[1])[:3]
    print(
        f"test accuracy {100 * report['test_acc']:.2f}%  test loss {report['test_loss']:.4f}  "
        f"({report['misclassified']} of {report['test_images']} wrong)"
    )
    print("weakest classes: " + ", ".join(f"{c} {100 * a:.2f}%" for c, a in worst))
    print(f"wrote evaluation.json, confusion_matrix.png and misclassified.png in {args.run_dir}")


if __name__ == "__main__":
    main()
