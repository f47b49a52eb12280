"""The table a recipe is chosen from: per variant of a sweep, validation accuracy (what chooses) and test accuracy.

    python bench/recipe_table.py multirun/recipe [--sort val|time] [--markdown]

Variants are grouped by the sweep's swept keys except the seed (lenet.tools.jobs). For each: the jobs that
completed, the mean final validation accuracy (the choice is made on it, never on the test set), then the
final test accuracy (mean and the lowest seed: what is reported) and the mean seconds per epoch as the
sweep measured it (jobs ran side by side: compare speed with `python -m lenet.bench interleaved`).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from lenet.tools.jobs import group_variants, load_jobs, varied_keys


def table(sweep: Path) -> list[dict]:
    """One row per variant."""
    jobs = load_jobs(sweep)
    rows = []
    for variant in group_variants(jobs, varied_keys(jobs, [sweep])):
        val, test = variant.finals("val_acc"), variant.finals("test_acc")
        rows.append(
            {
                "variant": variant.label,
                "done": f"{len(variant.done)}/{len(variant.jobs)}",
                "val": statistics.fmean(val) if val else float("nan"),
                "val_sd": statistics.stdev(val) if len(val) > 1 else float("nan"),
                "test": statistics.fmean(test) if test else float("nan"),
                "test_min": min(test) if test else float("nan"),
                "epoch_s": statistics.fmean(variant.values("seconds_per_epoch")) if variant.done else float("nan"),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--sort", choices=["val", "time"], default="val")
    args = parser.parse_args()
    rows = table(args.sweep)
    key = (lambda r: -r["val"] if r["val"] == r["val"] else 1) if args.sort == "val" else (lambda r: r["epoch_s"])
    print("| variant | done | final val acc % (mean ± sd) | final test acc % (mean, lowest seed) | epoch s |")
    print("|---|---:|---|---|---:|")
    for r in sorted(rows, key=key):
        print(
            f"| {r['variant']} | {r['done']} | {100 * r['val']:.2f} ± {100 * r['val_sd']:.2f} "
            f"| {100 * r['test']:.2f}, {100 * r['test_min']:.2f} | {r['epoch_s']:.2f} |"
        )


if __name__ == "__main__":
    main()
