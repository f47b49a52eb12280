"""Turn sweeps into a verdict: a table per variant, paired tests over seeds, a figure and the curves behind it.

    python -m lenet.compare multirun/2026-11-28/14-10-55
    python -m lenet.compare multirun/A multirun/B --out report --title "Pooling" --format pdf

Jobs are grouped by the keys the sweeps varied, except ``seed``; each group is a variant. Several sweeps
are pooled when they share their resolved config but for those keys: more seeds, or a new variant beside
an old baseline, and seeds are paired wherever both variants have them. The figures are of the test set;
the best epoch each run reports was chosen on its validation split (``selected_on``). Writes
``comparison.md``, ``comparison.csv`` (one row per variant), ``comparison_curves.csv`` (one row per
variant, seed, epoch and metric) and the figure. An Optuna search is reported as the search it is: its
trials ranked by its objective, and its best trial's test accuracy.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from itertools import combinations
from pathlib import Path
from typing import Any, Optional, Sequence

from lenet.core.errors import UserError
from lenet.core.metrics import minimised
from lenet.run.files import check_writable_name, write_text
from lenet.tools.comparison_plot import DEFAULT_METRIC, plot
from lenet.tools.jobs import (
    Job,
    Variant,
    check_poolable,
    find_sweeps,
    group_variants,
    is_fraction,
    is_search,
    load_jobs,
    varied_keys,
)
from lenet.tools.stats import MIN_SEEDS, PairedTest, confidence_interval, mean_std, paired_test

BEST_SHOWN = 10  # trials of a search drawn in the figure
FORMATS = ("png", "pdf", "svg")
TABLES = ("comparison.md", "comparison.csv", "comparison_curves.csv")


def _bounds(metric: str) -> tuple[float, float]:
    return (0.0, 1.0) if is_fraction(metric) else (0.0, math.inf) if minimised(metric) else (-math.inf, math.inf)


def summarise(variant: Variant, metric: str = DEFAULT_METRIC) -> dict[str, Any]:
    """One row of the comparison: the variant's settings and statistics of ``metric``."""
    final, at_best = variant.finals(metric), variant.at_best(metric)
    final_mean, final_std = mean_std(final)
    best_mean, best_std = mean_std(at_best)
    low, high = confidence_interval(final, _bounds(metric))
    threads = sorted({int(t) for t in variant.values("num_threads")})
    params = variant.values("num_params")
    return {
        "variant": variant.label,
        **variant.settings,
        "n": len(variant.done),
        "n_failed": len(variant.not_done),
        "n_pruned": len(variant.pruned),
        f"final_{metric}_mean": final_mean,
        f"final_{metric}_std": final_std,
        f"final_{metric}_ci95_low": low,
        f"final_{metric}_ci95_high": high,
        f"best_epoch_{metric}_mean": best_mean,
        f"best_epoch_{metric}_std": best_std,
        "epoch_seconds": mean_std(variant.values("seconds_per_epoch"))[0],
        "num_params": int(params[0]) if params else None,
        "num_threads": "/".join(map(str, threads)) or None,
        "sweeps": "; ".join(sorted({str(j.sweep) for j in variant.jobs})),
    }


def csv_row(row: dict[str, Any], metric: str) -> dict[str, Any]:
    """A table row for the CSV: a fraction's statistics in percent, as in the Markdown, with ``_pct`` names."""
    if not is_fraction(metric):
        return row
    statistic = (f"final_{metric}_", f"best_epoch_{metric}_")
    return {
        (f"{k}_pct" if k.startswith(statistic) else k): (100 * v if k.startswith(statistic) else v)
        for k, v in row.items()
    }


def _value(x: float, metric: str) -> str:
    if x is None or math.isnan(x):
        return "n/a"
    return f"{100 * x:.2f}" if is_fraction(metric) else f"{x:.4g}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _metric_name(metric: str) -> str:
    return {"test_acc": "test acc", "val_acc": "val acc"}.get(metric, metric)


def markdown_table(rows: list[dict[str, Any]], metric: str = DEFAULT_METRIC, chosen_on: str = "val_acc") -> str:
    """The rows as a Markdown table, fractions (accuracies) in percent."""
    unit = " %" if is_fraction(metric) else ""
    name = _metric_name(metric)
    header = (
        f"| variant | n | failed | pruned | final {name}{unit} (mean ± std) | 95% CI "
        f"| {name}{unit} at the best epoch (chosen on {chosen_on}) | epoch s | threads | params |"
    )
    lines = [header, "|---|---:|---:|---:|---|---|---|---:|---:|---:|"]
    for r in rows:
        low, high = r[f"final_{metric}_ci95_low"], r[f"final_{metric}_ci95_high"]
        ci = f"n/a (n < {MIN_SEEDS})" if math.isnan(low) else f"{_value(low, metric)}–{_value(high, metric)}"
        seconds = "n/a" if math.isnan(r["epoch_seconds"]) else f"{r['epoch_seconds']:.2f}"
        lines.append(
            f"| {_cell(r['variant'])} | {r['n']} | {r['n_failed']} | {r['n_pruned']} "
            f"| {_value(r[f'final_{metric}_mean'], metric)} ± {_value(r[f'final_{metric}_std'], metric)} | {ci} "
            f"| {_value(r[f'best_epoch_{metric}_mean'], metric)} ± {_value(r[f'best_epoch_{metric}_std'], metric)} "
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


def _selection_note(jobs: list[Job]) -> tuple[str, list[str]]:
    """On which key the runs chose their best epoch, and a sentence when that is the test set or not one key."""
    chosen = sorted({str(j.summary.get("selected_on")) for j in jobs if j.completed})
    on = chosen[0] if len(chosen) == 1 else "each run's own key"
    lines = []
    if any(c.startswith("test_") for c in chosen):
        lines = [
            f"The best epochs were chosen on the test set ({', '.join(chosen)}): what they report is optimistically "
            "biased; the final epoch's figures are not.",
            "",
        ]
    return on, lines


def _problems(jobs: list[Job], pooled: bool) -> list[str]:
    failed = [j for j in jobs if (not j.completed and not j.pruned) or j.problems]
    if not failed:
        return []
    lines = ["## Jobs that did not complete, or whose files could not be read", ""]
    for job in failed:
        settings = ",".join(f"{k}={v}" for k, v in job.overrides.items() if not k.startswith("callbacks.optuna"))
        what = [f"**{job.status}**: {job.outcome.error or 'the job ended without recording a result'}"] * (
            not job.completed
        )
        where = str(job.path) if pooled else str(job.path.relative_to(job.sweep))
        lines.append(f"- `{where}` ({_cell(settings)}): " + "; ".join(what + job.problems))
    return lines + [""]


def _search_section(jobs: list[Job], variants: list[Variant], sweep_dir: Path) -> tuple[list[str], list[Variant]]:
    """An Optuna search's report: its trials ranked by its objective, the best one's test accuracy; and the trials in
    that order (those without a value: pruned, failed, last)."""
    objective, direction = _search_objective(sweep_dir)

    def value(variant: Variant) -> Optional[float]:  # what the search was told for the trial
        job = variant.jobs[0]
        return job.outcome.value(objective) if job.completed else None

    ranked = sorted((v for v in variants if value(v) is not None), key=value, reverse=direction == "maximize")
    order = ranked + [v for v in variants if value(v) is None]
    names = list(variants[0].settings) if variants else []
    lines = [
        f"This sweep is an Optuna search: each of its {len(jobs)} trials is one configuration, so nothing is tested "
        f"between them. It chose by {objective} ({direction}); the test set played no part in it.",
        "",
        f"| rank | trial | {' | '.join(_cell(k) for k in names) or 'settings'} | status | {objective} "
        "| final test acc % |",
        "|---:|---:|" + "---|" * max(1, len(names)) + "---|---:|---:|",
    ]
    for rank, variant in enumerate(order, start=1):
        job, x = variant.jobs[0], value(variant)
        settings = " | ".join(_cell(str(v)) for v in variant.settings.values()) or "-"
        shown = "n/a" if x is None else _value(x, objective.removeprefix("final_"))
        lines.append(
            f"| {rank if x is not None else '-'} | {job.path.name} | {settings} | {job.status} | {shown} "
            f"| {_value(job.final('test_acc'), 'test_acc')} |"
        )
    lines.append("")
    if ranked:
        best = ranked[0]
        lines += [
            f"Best trial: {best.jobs[0].path.name} ({_cell(best.label)}), {objective} {value(best):.4g}; its final "
            f"weights on the test set: {_value(best.jobs[0].final('test_acc'), 'test_acc')} % (reported, never "
            "chosen on).",
            "",
        ]
    return lines, order


def _search_objective(sweep_dir: Path) -> tuple[str, str]:
    """The objective and direction a search recorded (optimization_results.yaml, else its multirun.yaml)."""
    from omegaconf import OmegaConf

    for name, keys in (
        ("optimization_results.yaml", ("objective", "direction")),
        ("multirun.yaml", ("hydra.sweeper.objective", "hydra.sweeper.direction")),
    ):
        try:
            config = OmegaConf.load(sweep_dir / name)
            objective, direction = (OmegaConf.select(config, k, default=None) for k in keys)
        except Exception:  # missing or unreadable: the next record, else the defaults
            continue
        if objective and direction:
            return str(objective), str(direction)
    return "final_val_acc", "maximize"


def curves(variants: list[Variant]) -> list[dict[str, Any]]:
    """Every job's per-epoch values, one row per variant, sweep, seed, epoch and metric (a long table)."""
    rows = []
    for variant in variants:
        for job in variant.jobs:
            for row in job.metrics:
                for key, value in row.items():
                    if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                        rows.append(
                            {
                                "variant": variant.label,
                                "sweep": str(job.sweep),
                                "job": job.path.name,
                                "seed": job.seed,
                                "status": job.status,
                                "epoch": row.get("epoch"),
                                "metric": key,
                                "value": value,
                            }
                        )
    return rows


def relabel(variants: list[Variant], labels: Sequence[str]) -> None:
    """Give variants the names ``labels`` says (``VARIANT=TEXT``, e.g. ``pooling=avg=Average pooling``)."""
    known = {v.label: v for v in variants}
    for entry in labels:
        match = next((label for label in sorted(known, key=len, reverse=True) if entry.startswith(f"{label}=")), None)
        if match is None:
            raise UserError(f"--labels {entry!r} names no variant: give VARIANT=TEXT with one of {', '.join(known)}")
        known[match].label = entry[len(match) + 1 :]


def compare(
    sweep_dir: Path | Sequence[Path],
    out_dir: Optional[Path] = None,
    metric: str = DEFAULT_METRIC,
    title: Optional[str] = None,
    labels: Sequence[str] = (),
    file_format: str = "png",
) -> str:
    """Write the comparison of the sweep(s) in ``sweep_dir`` by ``metric`` into ``out_dir``; return the Markdown report.

    Several sweeps are pooled (``check_poolable``); ``out_dir`` defaults to the sweep dir, or ``comparison/`` in the
    current folder for several.
    """
    sweeps = [Path(sweep_dir)] if isinstance(sweep_dir, (str, Path)) else [Path(s) for s in sweep_dir]
    pooled = len(sweeps) > 1
    out_dir = out_dir or (Path("comparison") if pooled else sweeps[0])
    if file_format not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {file_format!r}")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file; give a folder to write the report into")
    for name in (*TABLES, f"comparison.{file_format}"):  # before any work: a link or a folder at one of its names
        check_writable_name(out_dir / name)
    jobs = [job for sweep in sweeps for job in load_jobs(sweep)]
    if not jobs:
        raise UserError(
            f"no jobs under {', '.join(map(str, sweeps))} (looked for */.hydra/overrides.yaml); pass a multirun dir"
        )
    known = {key for job in jobs for row in job.metrics for key in row}
    if known and metric not in known:
        raise UserError(f"no epoch of these jobs records {metric!r}; metrics.jsonl keys: {', '.join(sorted(known))}")
    keys = varied_keys(jobs, sweeps)
    if pooled:
        check_poolable(jobs, keys)
    variants = group_variants(jobs, keys)
    relabel(variants, labels)
    where = ", ".join(map(str, sweeps))
    lines = [f"# {title or 'Comparison'}", "", f"{len(jobs)} jobs of {where}, {len(variants)} variants.", ""]
    chosen_on, selection_lines = _selection_note(jobs)
    search = not pooled and is_search(sweeps[0])
    shown = variants
    if search:
        said, variants = _search_section(jobs, variants, sweeps[0])
        lines += said
        shown = variants[:BEST_SHOWN]
    rows = [summarise(v, metric) for v in variants]
    if not search:
        lines += [markdown_table(rows, metric, chosen_on), ""]
        ranked = [r for r in rows if not math.isnan(r[f"final_{metric}_mean"])]
        ranked.sort(key=lambda r: r[f"final_{metric}_mean"], reverse=not minimised(metric))
        if len(ranked) > 1:
            lines += [
                f"Ranked by mean final {metric}, best first: " + " > ".join(_cell(r["variant"]) for r in ranked) + ".",
                "",
            ]
            lines += _tests_section(paired_tests(variants, metric), metric)
    lines += selection_lines + _threads_note(jobs) + _problems(jobs, pooled)
    report = "\n".join(lines)
    _write(out_dir, report, [csv_row(r, metric) for r in rows], curves(variants))
    plot(shown, out_dir / f"comparison.{file_format}", metric, title=title or "")
    return report


def _table(rows: list[dict[str, Any]]) -> str:
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    writer.writeheader()
    writer.writerows(rows)
    return table.getvalue()


def _write(out_dir: Path, report: str, rows: list[dict[str, Any]], curve_rows: list[dict[str, Any]]) -> None:
    write_text(out_dir / "comparison.md", report)
    write_text(out_dir / "comparison.csv", _table(rows))
    write_text(out_dir / "comparison_curves.csv", _table(curve_rows))


def main(argv: Optional[list[str]] = None) -> None:
    """Command line: ``python -m lenet.compare SWEEP_DIR [SWEEP_DIR ...] [--out DIR] [--metric KEY] ...``."""
    console_script = Path(sys.argv[0]).name == "lenet-compare"
    prog = "lenet-compare" if console_script else "python -m lenet.compare"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "sweep_dirs",
        type=Path,
        nargs="+",
        help="a sweep dir (a folder of several: one report each), or several sweep dirs to pool",
    )
    parser.add_argument("--out", type=Path, default=None, help="where to write the report (default: the sweep dir)")
    parser.add_argument(
        "--metric",
        default=DEFAULT_METRIC,
        help="a metrics.jsonl key to compare by, e.g. test_top5 or test_loss (default: test_acc)",
    )
    parser.add_argument("--title", default=None, help="the report's and the figure's title")
    parser.add_argument(
        "--labels", nargs="+", default=[], metavar="VARIANT=TEXT", help="names for variants, e.g. pooling=avg=Average"
    )
    parser.add_argument("--format", default="png", choices=FORMATS, help="the figure's format (default: png)")
    args = parser.parse_args(argv)
    missing = [str(d) for d in args.sweep_dirs if not d.is_dir()]
    if missing:
        raise SystemExit(f"error: {', '.join(missing)} is not a directory")
    if len(args.sweep_dirs) > 1:
        reports = [(args.sweep_dirs, args.out)]
    else:
        sweeps = find_sweeps(args.sweep_dirs[0])
        if len(sweeps) > 1:  # a folder of sweeps: one report each (name several to pool them)
            print(f"{args.sweep_dirs[0]} holds {len(sweeps)} sweeps: one report for each", file=sys.stderr)
        reports = [
            (sweep, args.out / sweep.relative_to(args.sweep_dirs[0]) if args.out and len(sweeps) > 1 else args.out)
            for sweep in sweeps
        ]
    for sweep, out in reports:
        try:
            print(compare(sweep, out, args.metric, args.title, args.labels, args.format))
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(1) from None
        written = out or (Path("comparison") if isinstance(sweep, list) else sweep)
        print(f"\nwrote comparison.md, .csv, _curves.csv and .{args.format} to {written}\n", file=sys.stderr)


if __name__ == "__main__":
    main()
