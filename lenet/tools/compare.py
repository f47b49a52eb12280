"""Turn a sweep into a verdict: a table per variant, paired tests over seeds, and a plot.

    python -m lenet.compare multirun/2026-11-28/14-10-55

Jobs are grouped by the keys the sweep varied, except ``seed``; each group is a variant. Writes
``comparison.md``, ``comparison.csv`` and ``comparison.png`` into the sweep dir. An Optuna search is
reported as the search it is: its trials ranked, and its best trial.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from itertools import combinations
from pathlib import Path
from typing import Any, Optional

from lenet.core.errors import UserError
from lenet.run.files import check_writable_name, write_text
from lenet.tools.comparison_plot import DEFAULT_METRIC, plot
from lenet.tools.jobs import (
    Job,
    Variant,
    find_sweeps,
    group_variants,
    is_fraction,
    is_search,
    load_jobs,
    lower_is_better,
    varied_keys,
)
from lenet.tools.stats import MIN_SEEDS, PairedTest, confidence_interval, mean_std, paired_test

BEST_SHOWN = 10
OUTPUTS = ("comparison.md", "comparison.csv", "comparison.png")  # trials of a search drawn in the figure


def _bounds(metric: str) -> tuple[float, float]:
    return (0.0, 1.0) if is_fraction(metric) else (0.0, math.inf) if lower_is_better(metric) else (-math.inf, math.inf)


def summarise(variant: Variant, metric: str = DEFAULT_METRIC) -> dict[str, Any]:
    """One row of the comparison: the variant's settings and statistics of ``metric``."""
    final, best = variant.finals(metric), variant.bests(metric)
    final_mean, final_std = mean_std(final)
    best_mean, best_std = mean_std(best)
    low, high = confidence_interval(final, _bounds(metric))
    threads = sorted({int(t) for t in variant.values("num_threads")})
    params = variant.values("num_params")
    return {
        "variant": variant.label,
        **variant.settings,
        "n": len(variant.done),
        "n_failed": len(variant.not_done),
        f"final_{metric}_mean": final_mean,
        f"final_{metric}_std": final_std,
        f"final_{metric}_ci95_low": low,
        f"final_{metric}_ci95_high": high,
        f"best_{metric}_mean": best_mean,
        f"best_{metric}_std": best_std,
        "epoch_seconds": mean_std(variant.values("seconds_per_epoch"))[0],
        "num_params": int(params[0]) if params else None,
        "num_threads": "/".join(map(str, threads)) or None,
    }


def csv_row(row: dict[str, Any], metric: str) -> dict[str, Any]:
    """A table row for the CSV: a fraction's statistics in percent, as in the Markdown, with ``_pct`` names."""
    if not is_fraction(metric):
        return row
    statistic = (f"final_{metric}_", f"best_{metric}_")
    return {
        (f"{k}_pct" if k.startswith(statistic) else k): (100 * v if k.startswith(statistic) else v)
        for k, v in row.items()
    }


def _value(x: float, metric: str) -> str:
    if math.isnan(x):
        return "n/a"
    return f"{100 * x:.2f}" if is_fraction(metric) else f"{x:.4g}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table(rows: list[dict[str, Any]], metric: str = DEFAULT_METRIC) -> str:
    """The rows as a Markdown table, fractions (accuracies) in percent."""
    unit = " %" if is_fraction(metric) else ""
    name = "test acc" if metric == DEFAULT_METRIC else metric
    header = (
        f"| variant | n | failed | final {name}{unit} (mean ± std) | 95% CI | best {name}{unit} | epoch s "
        "| threads | params |"
    )
    lines = [header, "|---|---:|---:|---|---|---|---:|---:|---:|"]
    for r in rows:
        low, high = r[f"final_{metric}_ci95_low"], r[f"final_{metric}_ci95_high"]
        ci = f"n/a (n < {MIN_SEEDS})" if math.isnan(low) else f"{_value(low, metric)}–{_value(high, metric)}"
        seconds = "n/a" if math.isnan(r["epoch_seconds"]) else f"{r['epoch_seconds']:.2f}"
        lines.append(
            f"| {_cell(r['variant'])} | {r['n']} | {r['n_failed']} "
            f"| {_value(r[f'final_{metric}_mean'], metric)} ± {_value(r[f'final_{metric}_std'], metric)} | {ci} "
            f"| {_value(r[f'best_{metric}_mean'], metric)} ± {_value(r[f'best_{metric}_std'], metric)} "
            f"| {seconds} | {r['num_threads'] or 'n/a'} | {r['num_params'] or 'n/a'} |"
        )
    return "\n".join(lines)


def paired_tests(variants: list[Variant], metric: str) -> list[PairedTest]:
    """Every pair of variants compared on their shared seeds (pairs sharing none are left out)."""
    finals = {id(v): {j.seed: x for j in v.done if (x := j.final(metric)) is not None} for v in variants}
    span = 1.0 if is_fraction(metric) else math.inf
    tests = [
        paired_test(a.label, finals[id(a)], b.label, finals[id(b)], is_fraction(metric), span)
        for a, b in combinations(variants, 2)
    ]
    return [t for t in tests if t is not None]


def _tests_section(tests: list[PairedTest], metric: str) -> list[str]:
    if not tests:
        return []
    name = "test accuracy" if metric == DEFAULT_METRIC else metric
    lines = [f"## Paired tests of final {name} over seeds", ""] + [f"- {t.sentence()}" for t in tests]
    made = sum(t.not_tested is None for t in tests)
    if made > 1:
        lines.append(f"- {made} tests: with a Bonferroni correction a p below {0.05 / made:.3g} is needed.")
    return lines + [""]


def _threads_note(jobs: list[Job]) -> list[str]:
    counts = sorted({int(t) for j in jobs if j.completed and (t := j.outcome.value("num_threads")) is not None})
    if len(counts) < 2:
        return []
    return [
        f"The jobs ran with different CPU thread counts ({', '.join(map(str, counts))}): results on the CPU depend "
        "on it, so compare jobs of one count (device.num_threads pins it).",
        "",
    ]


def _problems(jobs: list[Job], sweep_dir: Path) -> list[str]:
    failed = [j for j in jobs if not j.completed or j.problems]
    if not failed:
        return []
    lines = ["## Jobs that did not complete, or whose files could not be read", ""]
    for job in failed:
        settings = ",".join(f"{k}={v}" for k, v in job.overrides.items())
        what = [f"**{job.status}**: {job.outcome.error or 'the job ended without recording a result'}"] * (
            not job.completed
        )
        lines.append(f"- `{job.path.relative_to(sweep_dir)}` ({_cell(settings)}): " + "; ".join(what + job.problems))
    return lines + [""]


def _search_lines(jobs: list[Job], variants: list[Variant], metric: str) -> tuple[list[str], list[Variant]]:
    """What a search's report says in place of tests, and its trials, the best first (those without a result last)."""
    done = [v for v in variants if v.finals(metric)]
    ranked = sorted(done, key=lambda v: v.finals(metric)[0], reverse=not lower_is_better(metric))
    lines = [
        f"This sweep is an Optuna search: each of its {len(jobs)} trials is one configuration, so its "
        "variants are trials and nothing is tested between them.",
        "",
    ]
    if ranked:
        best = ranked[0]
        lines += [
            f"Best trial by final {metric}: {_cell(best.label)}, {_value(best.finals(metric)[0], metric)}"
            f"{' %' if is_fraction(metric) else ''} ({best.jobs[0].path.name}).",
            "",
        ]
    return lines, ranked + [v for v in variants if v not in done]


def compare(sweep_dir: Path, out_dir: Optional[Path] = None, metric: str = DEFAULT_METRIC) -> str:
    """Write comparison.md/.csv/.png for the sweep in ``sweep_dir``, by ``metric``; return the Markdown report."""
    out_dir = out_dir or sweep_dir
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file; give a folder to write the report into")
    for name in OUTPUTS:  # before any work: a link or a folder at one of its names is refused
        check_writable_name(out_dir / name)
    jobs = load_jobs(sweep_dir)
    if not jobs:
        raise SystemExit(f"error: no jobs under {sweep_dir} (looked for */.hydra/overrides.yaml); pass a multirun dir")
    known = {key for job in jobs for row in job.metrics for key in row}
    if known and metric not in known:
        raise SystemExit(
            f"error: no epoch of these jobs records {metric!r}; metrics.jsonl keys: {', '.join(sorted(known))}"
        )
    variants = group_variants(jobs, varied_keys(jobs, sweep_dir))
    lines = [f"# Comparison of {sweep_dir}", "", f"{len(jobs)} jobs, {len(variants)} variants.", ""]
    shown = variants
    if is_search(sweep_dir):
        said, variants = _search_lines(jobs, variants, metric)
        lines += said
        shown = variants[:BEST_SHOWN]
    rows = [summarise(v, metric) for v in variants]
    lines += [markdown_table(rows, metric), ""]
    ranked = [r for r in rows if not math.isnan(r[f"final_{metric}_mean"])]
    ranked.sort(key=lambda r: r[f"final_{metric}_mean"], reverse=not lower_is_better(metric))
    if len(ranked) > 1 and not is_search(sweep_dir):
        lines += [
            f"Ranked by mean final {metric}, best first: " + " > ".join(_cell(r["variant"]) for r in ranked) + ".",
            "",
        ]
        lines += _tests_section(paired_tests(variants, metric), metric)
    lines += _threads_note(jobs) + _problems(jobs, sweep_dir)
    report = "\n".join(lines)
    _write(out_dir, report, [csv_row(r, metric) for r in rows])
    plot(shown, out_dir / "comparison.png", metric, title=str(sweep_dir))
    return report


def _write(out_dir: Path, report: str, rows: list[dict[str, Any]]) -> None:
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    writer.writeheader()
    writer.writerows(rows)
    write_text(out_dir / "comparison.md", report)
    write_text(out_dir / "comparison.csv", table.getvalue())


def main(argv: Optional[list[str]] = None) -> None:
    """Command line: ``python -m lenet.compare SWEEP_DIR [--out DIR] [--metric KEY]``."""
    console_script = Path(sys.argv[0]).name == "lenet-compare"
    prog = "lenet-compare" if console_script else "python -m lenet.compare"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "sweep_dir",
        type=Path,
        help="a sweep dir, e.g. multirun/2026-11-28/14-10-55; a folder of several: one report each",
    )
    parser.add_argument("--out", type=Path, default=None, help="where to write the report (default: the sweep dir)")
    parser.add_argument(
        "--metric",
        default=DEFAULT_METRIC,
        help="a metrics.jsonl key to compare by, e.g. test_top5 or test_loss (default: test_acc)",
    )
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        raise SystemExit(f"error: {args.sweep_dir} is not a directory")
    sweeps = find_sweeps(args.sweep_dir)
    if len(sweeps) > 1:  # seeds are paired within a sweep, never across sweeps: one report each
        print(f"{args.sweep_dir} holds {len(sweeps)} sweeps: one report for each", file=sys.stderr)
    for sweep in sweeps:
        out = args.out / sweep.relative_to(args.sweep_dir) if args.out and len(sweeps) > 1 else args.out
        try:
            print(compare(sweep, out, args.metric))
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(1) from None
        print(f"\nwrote comparison.md, comparison.csv and comparison.png to {out or sweep}\n", file=sys.stderr)


if __name__ == "__main__":
    main()
