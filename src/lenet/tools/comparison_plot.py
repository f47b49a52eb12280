"""The comparison's figure: the metric per epoch (mean over seeds) and each variant's final values.

An accuracy is drawn as the test error in percent on a log axis, where the last epochs' tenths of a
point show; the title names what the panels draw.
"""

from __future__ import annotations

import math
import statistics
import textwrap
from pathlib import Path

from lenet.core.metrics import minimised
from lenet.run.files import save_figure
from lenet.tools.jobs import Variant, is_fraction
from lenet.tools.stats import confidence_interval

DEFAULT_METRIC = "test_acc"


def _text(label: str) -> str:
    """A label as matplotlib draws it literally (a ``$`` would start its mathtext)."""
    return label.replace("$", r"\$")


def _curves(variant: Variant, metric: str) -> list[list[float]]:
    curves = [[row[metric] for row in j.metrics if isinstance(row.get(metric), (int, float))] for j in variant.done]
    return [c for c in curves if c]


def _plotted(values: list[float], metric: str) -> list[float]:
    # accuracies as test error in percent: on a log axis the last epochs' 0.1-point differences show
    return [100 * (1 - v) for v in values] if is_fraction(metric) else values


def plot(variants: list[Variant], path: Path, metric: str = DEFAULT_METRIC, title: str = "") -> None:
    """Two panels: ``metric`` per epoch (mean over seeds, ± 1 std where n >= 2) and each variant's final values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    drawn = ("test error" if metric == DEFAULT_METRIC else f"1 - {metric}") if is_fraction(metric) else metric
    axis_label = f"{drawn} (%, log scale)" if is_fraction(metric) else drawn
    bounds = (0.0, 100.0) if is_fraction(metric) else (0.0, math.inf) if minimised(metric) else (-math.inf, math.inf)
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
        name = f"{_text(variant.label)} (n={len(curves)})"
        if epochs <= 5:  # few points: bars at each, instead of a band nobody can read
            curve_ax.errorbar(
                xs, mean, yerr=[s or 0 for s in std] if std[0] is not None else None, marker="o", capsize=3, label=name
            )
        else:
            line = curve_ax.plot(xs, mean, marker="o", markersize=3, label=name)[0]
            if std[0] is not None:
                curve_ax.fill_between(
                    xs,
                    [m - s for m, s in zip(mean, std)],
                    [m + s for m, s in zip(mean, std)],
                    color=line.get_color(),
                    alpha=0.2,
                )
    if most_epochs <= 12:
        curve_ax.set_xticks(range(1, most_epochs + 1))
    else:
        curve_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    curve_ax.set_xlim(0.5, most_epochs + 0.5)
    if is_fraction(metric) or minimised(metric):
        curve_ax.set_yscale("log")
        for axis in (curve_ax.yaxis.set_major_formatter, curve_ax.yaxis.set_minor_formatter):
            axis(ScalarFormatter())  # plain numbers: 0.8, 1, 2 rather than powers of ten
    with_std = any(len(curves_of[id(v)]) > 1 for v in shown)
    curve_ax.set(xlabel="epoch", ylabel=axis_label, title=f"per epoch: mean over seeds{' ± 1 std' if with_std else ''}")
    curve_ax.grid(alpha=0.3, which="both")

    for row, variant in enumerate(shown):
        finals = _plotted(variant.finals(metric), metric)
        colour = f"C{row}"
        final_ax.scatter(finals, [row] * len(finals), color=colour, alpha=0.6, s=18, zorder=3)
        low, high = confidence_interval(finals, bounds)
        mean = statistics.fmean(finals) if finals else math.nan
        if not math.isnan(low):
            final_ax.errorbar([mean], [row], xerr=[[mean - low], [high - mean]], color=colour, capsize=4, zorder=2)
        final_ax.scatter([mean], [row], color=colour, marker="D", s=40, zorder=4)
    final_ax.set_yticks(range(len(shown)), [textwrap.fill(_text(v.label), 28) for v in shown], fontsize=8)
    final_ax.set_ylim(len(shown) - 0.5, -0.5)  # first variant on top
    final_ax.set(xlabel=axis_label.replace(", log scale", ""), title="final epoch: seeds, mean ◆, 95% CI (n ≥ 3)")
    final_ax.grid(alpha=0.3, axis="x")
    handles, labels = curve_ax.get_legend_handles_labels()
    if handles:
        curve_ax.legend(handles, [textwrap.fill(t, 40) for t in labels], fontsize=8, loc="best")
    fig.suptitle(f"{drawn}: {_text(title)}" if title else drawn, fontsize=11)
    try:
        save_figure(fig, path, dpi=120)
    finally:
        plt.close(fig)
