"""Turn a sweep into a verdict: a table per variant, paired tests over seeds, and a plot.

    python -m lenet.compare multirun/2026-11-28/14-10-55

Jobs are grouped by the overrides that differ between them, except ``seed``; each group is a
variant. Writes ``comparison.md``, ``comparison.csv`` and ``comparison.png`` into the sweep dir.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
import textwrap
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Optional

import yaml

from lenet.run.outcome import Outcome, Status, read_outcome
from lenet.run.sweep_dir import split_override, sweep_jobs
from lenet.run.tracking import read_metrics

SEED_KEY = "seed"
DEFAULT_METRIC = "test_acc"
ALPHA = 0.05  # significance level of the paired tests


@dataclass
class Job:
    """One job of the sweep as its files describe it."""

    path: Path
    overrides: dict[str, str]
    outcome: Outcome
    metrics: list[dict[str, Any]]

    @property
    def summary(self) -> Optional[dict[str, Any]]:
        return dict(self.outcome.summary) or None

    @property
    def status(self) -> str:
        return self.outcome.status.value

    @property
    def completed(self) -> bool:
        return self.outcome.status == Status.completed

    def final(self, key: str) -> Optional[float]:
        """The last epoch's value of metrics.jsonl key ``key`` (the summary's ``final_<key>`` without metrics)."""
        if self.metrics and self.metrics[-1].get(key) is not None:
            return self.metrics[-1][key]
        return (self.summary or {}).get(f"final_{key}")

    def best(self, key: str) -> Optional[float]:
        """The best epoch's value of ``key``: the lowest for losses, else the highest."""
        values = [row[key] for row in self.metrics if row.get(key) is not None]
        if not values:
            return (self.summary or {}).get(f"best_{key}")
        return min(values) if lower_is_better(key) else max(values)

    @property
    def seed(self) -> Optional[str]:
        return self.overrides.get(SEED_KEY) or (
            str(self.summary["seed"]) if self.summary and "seed" in self.summary else None
        )


@dataclass
class Variant:
    """The jobs of a sweep that differ only in their seed."""

    label: str
    settings: dict[str, str]
    jobs: list[Job] = field(default_factory=list)

    @property
    def done(self) -> list[Job]:
        return [j for j in self.jobs if j.completed]

    @property
    def not_done(self) -> list[Job]:
        return [j for j in self.jobs if not j.completed]

    def values(self, key: str) -> list[float]:
        return [j.summary[key] for j in self.done if j.summary.get(key) is not None]

    def finals(self, key: str) -> list[float]:
        return [v for j in self.done if (v := j.final(key)) is not None]

    def bests(self, key: str) -> list[float]:
        return [v for j in self.done if (v := j.best(key)) is not None]


def lower_is_better(key: str) -> bool:
    """Whether a smaller value of metrics.jsonl key ``key`` is the better one."""
    return "loss" in key or key == "seconds"


def is_fraction(key: str) -> bool:
    """Whether ``key`` holds a fraction shown in percent (accuracies and the like)."""
    return not lower_is_better(key) and key != "lr"


def find_sweeps(folder: Path) -> list[Path]:
    """The sweep dirs in ``folder``: itself when it is one (Hydra's multirun.yaml), else each one inside it."""
    markers = ("multirun.yaml", "sweep.json")
    if any((folder / m).is_file() for m in markers):
        return [folder]
    inside = sorted({p.parent for m in markers for p in folder.glob(f"**/{m}")})
    return inside or [folder]  # no marker: jobs alone (copied out of their sweep) are one sweep


def load_jobs(sweep_dir: Path) -> list[Job]:
    """Every job under ``sweep_dir`` with its overrides, summary and per-epoch metrics."""
    jobs = []
    for path in sweep_jobs(sweep_dir):
        overrides = yaml.safe_load((path / ".hydra" / "overrides.yaml").read_text()) or []
        jobs.append(Job(path, dict(map(split_override, overrides)), read_outcome(path), read_metrics(path)))
    return jobs


def group_variants(jobs: list[Job]) -> list[Variant]:
    """Group jobs by the overrides that differ between them, leaving out the seed."""
    keys: list[str] = []
    for job in jobs:
        keys += [k for k in job.overrides if k not in keys]
    varied = [k for k in keys if k != SEED_KEY and len({job.overrides.get(k) for job in jobs}) > 1]
    variants: dict[tuple, Variant] = {}
    for job in jobs:
        settings = {k: job.overrides.get(k, "(default)") for k in varied}
        label = ",".join(f"{k}={v}" for k, v in settings.items()) or "all jobs"
        variants.setdefault(tuple(settings.items()), Variant(label, settings)).jobs.append(job)
    return list(variants.values())


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN where undefined)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def confidence_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """Student-t confidence interval of the mean; NaN with fewer than two values."""
    if len(values) < 2:
        return math.nan, math.nan
    from scipy import stats

    mean, std = mean_std(values)
    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * std / math.sqrt(len(values))
    return mean - half, mean + half


@dataclass
class PairedTest:
    """A final metric of two variants compared seed by seed."""

    a: str
    b: str
    seeds: list[str]
    mean_difference: float  # b - a, in the metric's own unit (a fraction for accuracies)
    ci_low: float
    ci_high: float
    t: float
    p: float
    percent: bool = True  # shown in percentage points

    @property
    def significant(self) -> bool:
        return self.p < ALPHA

    def _amount(self, x: float) -> str:
        return f"{100 * x:+.2f} pp" if self.percent else f"{x:+.4g}"

    def sentence(self) -> str:
        diff = self._amount(self.mean_difference)
        if math.isnan(self.p):
            return f"{self.b} vs {self.a}: {diff}, identical on all {len(self.seeds)} shared seeds; nothing to test."
        verdict = (
            f"significant at the {ALPHA:.0%} level" if self.significant else f"not significant at the {ALPHA:.0%} level"
        )
        return (
            f"{self.b} vs {self.a}: {diff} (95% CI {self._amount(self.ci_low)} to {self._amount(self.ci_high)}) over "
            f"{len(self.seeds)} shared seeds; paired t-test t = {self.t:.2f}, p = {self.p:.3g}: {verdict}."
        )


def paired_test(a: Variant, b: Variant, metric: str = DEFAULT_METRIC) -> Optional[PairedTest]:
    """Paired t-test of a final metric over the seeds both variants completed; None if none shared."""
    from scipy import stats

    acc_a = {j.seed: v for j in a.done if (v := j.final(metric)) is not None}
    acc_b = {j.seed: v for j in b.done if (v := j.final(metric)) is not None}
    seeds = sorted(set(acc_a) & set(acc_b) - {None}, key=lambda s: (len(s), s))
    if not seeds:
        return None
    diffs = [acc_b[s] - acc_a[s] for s in seeds]
    mean = statistics.fmean(diffs)
    low, high = confidence_interval(diffs)
    t = p = math.nan
    if len(seeds) > 1 and statistics.stdev(diffs) > 0:
        t, p = (float(v) for v in stats.ttest_rel([acc_b[s] for s in seeds], [acc_a[s] for s in seeds]))
    elif len(seeds) > 1 and mean != 0:  # the same nonzero difference on every seed
        t, p, low, high = math.copysign(math.inf, mean), 0.0, mean, mean
    return PairedTest(a.label, b.label, seeds, mean, low, high, t, p, is_fraction(metric))


def _pct(x: float, digits: int = 2) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.{digits}f}"


def _value(x: float, metric: str) -> str:
    return _pct(x) if is_fraction(metric) else ("n/a" if math.isnan(x) else f"{x:.4g}")


def summarise(variant: Variant, metric: str = DEFAULT_METRIC) -> dict[str, Any]:
    """One row of the comparison: the variant's settings and statistics of ``metric``."""
    final, best = variant.finals(metric), variant.bests(metric)
    final_mean, final_std = mean_std(final)
    best_mean, best_std = mean_std(best)
    low, high = confidence_interval(final)
    epoch_seconds = mean_std(variant.values("seconds_per_epoch"))[0]
    params = variant.values("num_params")
    return {
        "variant": variant.label, **variant.settings, "n": len(variant.done), "n_failed": len(variant.not_done),
        f"final_{metric}_mean": final_mean, f"final_{metric}_std": final_std, f"final_{metric}_ci95_low": low,
        f"final_{metric}_ci95_high": high, f"best_{metric}_mean": best_mean, f"best_{metric}_std": best_std,
        "epoch_seconds": epoch_seconds, "num_params": int(params[0]) if params else None,
    }  # fmt: skip


def csv_row(row: dict[str, Any], metric: str) -> dict[str, Any]:
    """A table row for the CSV: a fraction's statistics in percent, as in the Markdown, with ``_pct`` names."""
    if not is_fraction(metric):
        return row
    statistic = (f"final_{metric}_", f"best_{metric}_")
    return {(f"{k}_pct" if k.startswith(statistic) else k): (100 * v if k.startswith(statistic) else v)
            for k, v in row.items()}  # fmt: skip


def markdown_table(rows: list[dict[str, Any]], metric: str = DEFAULT_METRIC) -> str:
    """The rows as a Markdown table, fractions (accuracies) in percent."""
    name = ("final test acc %" if metric == DEFAULT_METRIC else f"final {metric}") + (
        " %" if is_fraction(metric) and metric != DEFAULT_METRIC else ""
    )
    best = "best test acc %" if metric == DEFAULT_METRIC else f"best {metric}"
    header = f"| variant | n | failed | {name} (mean ± std) | 95% CI | {best} | epoch s | params |"
    lines = [header, "|---|---:|---:|---|---|---|---:|---:|"]
    for r in rows:
        low, high = r[f"final_{metric}_ci95_low"], r[f"final_{metric}_ci95_high"]
        ci = "n/a" if math.isnan(low) else f"{_value(low, metric)}–{_value(high, metric)}"
        seconds = "n/a" if math.isnan(r["epoch_seconds"]) else f"{r['epoch_seconds']:.2f}"
        params = "n/a" if r["num_params"] is None else str(r["num_params"])
        lines.append(
            f"| {r['variant']} | {r['n']} | {r['n_failed']} "
            f"| {_value(r[f'final_{metric}_mean'], metric)} ± {_value(r[f'final_{metric}_std'], metric)} | {ci} "
            f"| {_value(r[f'best_{metric}_mean'], metric)} ± {_value(r[f'best_{metric}_std'], metric)} "
            f"| {seconds} | {params} |"
        )
    return "\n".join(lines)


def _curves(variant: Variant, metric: str) -> list[list[float]]:
    return [[row[metric] for row in j.metrics] for j in variant.done if j.metrics and metric in j.metrics[0]]


def _plotted(values: list[float], metric: str) -> list[float]:
    # accuracies as test error in percent: on a log axis the last epochs' 0.1-point differences show
    return [100 * (1 - v) for v in values] if is_fraction(metric) else values


def plot(variants: list[Variant], path: Path, metric: str = DEFAULT_METRIC, title: str = "") -> None:
    """Two panels: ``metric`` per epoch (mean over seeds, ± 1 std where n >= 2) and each variant's final values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    label = "test accuracy" if metric == DEFAULT_METRIC else metric
    axis_label = f"{'test error' if metric == DEFAULT_METRIC else f'1 - {metric}'} (%, log scale)" if is_fraction(
        metric) else label  # fmt: skip
    curves_of = {id(v): _curves(v, metric) for v in variants}
    shown = [v for v in variants if curves_of[id(v)]]
    fig, (curve_ax, final_ax) = plt.subplots(
        1, 2, figsize=(11, 4.2 + 0.25 * len(shown)), layout="constrained", gridspec_kw={"width_ratios": [3, 2]}
    )
    most_epochs = 0
    for variant in shown:
        curves = curves_of[id(variant)]
        epochs = min(len(c) for c in curves)
        most_epochs = max(most_epochs, epochs)
        per_epoch = [_plotted([c[e] for c in curves], metric) for e in range(epochs)]
        mean = [statistics.fmean(v) for v in per_epoch]
        std = [statistics.stdev(v) if len(v) > 1 else None for v in per_epoch]
        xs = list(range(1, epochs + 1))
        name = f"{variant.label} (n={len(curves)})"
        if epochs <= 5:  # few points: bars at each, instead of a band nobody can read
            curve_ax.errorbar(xs, mean, yerr=[s or 0 for s in std] if std[0] is not None else None, marker="o",
                              capsize=3, label=name)  # fmt: skip
        else:
            line = curve_ax.plot(xs, mean, marker="o", markersize=3, label=name)[0]
            if std[0] is not None:
                curve_ax.fill_between(xs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                                      color=line.get_color(), alpha=0.2)  # fmt: skip
    if most_epochs <= 12:
        curve_ax.set_xticks(range(1, most_epochs + 1))
    else:
        curve_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    curve_ax.set_xlim(0.5, most_epochs + 0.5)
    if is_fraction(metric) or lower_is_better(metric):
        curve_ax.set_yscale("log")
        for axis in (curve_ax.yaxis.set_major_formatter, curve_ax.yaxis.set_minor_formatter):
            axis(ScalarFormatter())  # plain numbers: 0.8, 1, 2 rather than powers of ten
    with_std = any(len(curves_of[id(v)]) > 1 for v in shown)
    curve_ax.set(xlabel="epoch", ylabel=axis_label,
                 title=f"per epoch: mean over seeds{' ± 1 std' if with_std else ''}")  # fmt: skip
    curve_ax.grid(alpha=0.3, which="both")

    for row, variant in enumerate(shown):
        finals = _plotted(variant.finals(metric), metric)
        colour = f"C{row}"
        final_ax.scatter(finals, [row] * len(finals), color=colour, alpha=0.6, s=18, zorder=3)
        low, high = confidence_interval(finals)
        mean = statistics.fmean(finals) if finals else math.nan
        if not math.isnan(low):
            final_ax.errorbar([mean], [row], xerr=[[mean - low], [high - mean]], color=colour, capsize=4, zorder=2)
        final_ax.scatter([mean], [row], color=colour, marker="D", s=40, zorder=4)
    final_ax.set_yticks(range(len(shown)), [textwrap.fill(v.label, 28) for v in shown], fontsize=8)
    final_ax.set_ylim(len(shown) - 0.5, -0.5)  # first variant on top
    final_ax.set(xlabel=axis_label.replace(", log scale", ""), title="final epoch: seeds, mean ◆, 95% CI")
    final_ax.grid(alpha=0.3, axis="x")
    handles, labels = curve_ax.get_legend_handles_labels()
    if handles:
        curve_ax.legend(handles, [textwrap.fill(t, 40) for t in labels], fontsize=8, loc="best")
    fig.suptitle(f"{label}: {title}" if title else label, fontsize=11)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def compare(sweep_dir: Path, out_dir: Optional[Path] = None, metric: str = DEFAULT_METRIC) -> str:
    """Write comparison.md/.csv/.png for the sweep in ``sweep_dir``, by ``metric``; return the Markdown report."""
    out_dir = out_dir or sweep_dir
    jobs = load_jobs(sweep_dir)
    if not jobs:
        raise SystemExit(f"error: no jobs under {sweep_dir} (looked for */.hydra/overrides.yaml); pass a multirun dir")
    known = {key for job in jobs for row in job.metrics for key in row}
    if known and metric not in known:
        raise SystemExit(
            f"error: no epoch of these jobs records {metric!r}; metrics.jsonl keys: {', '.join(sorted(known))}"
        )
    variants = group_variants(jobs)
    rows = [summarise(v, metric) for v in variants]
    # only pairs run on at least two shared seeds can be tested (an Optuna search shares none)
    tests = [
        t for a, b in combinations(variants, 2) if (t := paired_test(a, b, metric)) is not None and len(t.seeds) > 1
    ]
    ranked = sorted(
        (r for r in rows if not math.isnan(r[f"final_{metric}_mean"])),
        key=lambda r: r[f"final_{metric}_mean"], reverse=not lower_is_better(metric),
    )  # fmt: skip

    lines = [
        f"# Comparison of {sweep_dir}",
        "",
        f"{len(jobs)} jobs, {len(variants)} variants.",
        "",
        markdown_table(rows, metric),
        "",
    ]
    if len(ranked) > 1:
        lines += [f"Ranked by final {metric}, best first: " + " > ".join(r["variant"] for r in ranked) + ".", ""]
    if tests:
        name = "test accuracy" if metric == DEFAULT_METRIC else metric
        lines += [f"## Paired tests of final {name} over seeds", ""]
        lines += [f"- {t.sentence()}" for t in tests]
        if len(tests) > 1:
            bonferroni = ALPHA / len(tests)
            lines.append(
                f"- {len(tests)} comparisons: with a Bonferroni correction a p below {bonferroni:.3g} is needed."
            )
        lines.append("")
    failed = [j for v in variants for j in v.not_done]
    if failed:
        lines += ["## Jobs that did not complete", ""]
        for job in failed:
            error = job.outcome.error or "the job ended without recording a result"
            settings = ",".join(f"{k}={v}" for k, v in job.overrides.items())
            lines.append(f"- `{job.path.relative_to(sweep_dir)}` ({settings}): **{job.status}**: {error}")
        lines.append("")
    report = "\n".join(lines)

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "comparison.md").write_text(report)
    csv_rows = [csv_row(r, metric) for r in rows]
    with open(out_dir / "comparison.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(dict.fromkeys(k for r in csv_rows for k in r)))
        writer.writeheader()
        writer.writerows(csv_rows)
    plot(variants, out_dir / "comparison.png", metric, title=str(sweep_dir))
    return report


def main(argv: Optional[list[str]] = None) -> None:
    """Command line: ``python -m lenet.compare SWEEP_DIR [--out DIR] [--metric KEY]``."""
    console_script = Path(sys.argv[0]).name == "lenet-compare"
    prog = "lenet-compare" if console_script else "python -m lenet.compare"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path,
                        help="a sweep dir, e.g. multirun/2026-11-28/14-10-55; a folder of several: one report each")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="where to write the report (default: the sweep dir)")
    parser.add_argument("--metric", default=DEFAULT_METRIC,
                        help="a metrics.jsonl key to compare by, e.g. test_top5 or test_loss (default: test_acc)")  # fmt: skip
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        raise SystemExit(f"error: {args.sweep_dir} is not a directory")
    sweeps = find_sweeps(args.sweep_dir)
    if len(sweeps) > 1:  # seeds are paired within a sweep, never across sweeps: one report each
        print(f"{args.sweep_dir} holds {len(sweeps)} sweeps: one report for each", file=sys.stderr)
    for sweep in sweeps:
        out = args.out / sweep.relative_to(args.sweep_dir) if args.out and len(sweeps) > 1 else args.out
        print(compare(sweep, out, args.metric))
        print(f"\nwrote comparison.md, comparison.csv and comparison.png to {out or sweep}\n", file=sys.stderr)


if __name__ == "__main__":
    main()
