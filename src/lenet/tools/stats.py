"""The statistics of a comparison, all through ``scipy.stats``, none that claims more than its data hold.

An interval needs at least MIN_SEEDS values with some spread, and stays within the metric's range; a
paired test needs MIN_SEEDS shared seeds whose differences vary. Otherwise the report says, in words,
what it did not test and why.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Optional

MIN_SEEDS = 3  # the fewest values an interval or a test is computed from
LEVEL = 0.95
ALPHA = 0.05  # significance level of the paired tests


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN where undefined)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def confidence_interval(
    values: list[float], bounds: tuple[float, float] = (-math.inf, math.inf), level: float = LEVEL
) -> tuple[float, float]:
    """The Student-t interval of the mean, within ``bounds``; NaN with fewer than MIN_SEEDS values.

    Values without spread give the interval of their one value.
    """
    from scipy import stats

    if len(values) < MIN_SEEDS:
        return math.nan, math.nan
    mean, sem = statistics.fmean(values), stats.sem(values)
    if sem == 0:
        return mean, mean
    low, high = stats.t.interval(level, len(values) - 1, loc=mean, scale=sem)
    return max(float(low), bounds[0]), min(float(high), bounds[1])


@dataclass
class PairedTest:
    """A final metric of two variants compared seed by seed."""

    a: str
    b: str
    seeds: list[str]
    mean_difference: float  # b - a, in the metric's own unit (a fraction for accuracies)
    ci_low: float = math.nan
    ci_high: float = math.nan
    t: float = math.nan
    p: float = math.nan
    not_tested: Optional[str] = None  # why no test was made
    percent: bool = True  # shown in percentage points

    @property
    def significant(self) -> bool:
        return self.not_tested is None and self.p < ALPHA

    def _amount(self, x: float) -> str:
        return f"{100 * x:+.2f} pp" if self.percent else f"{x:+.4g}"

    def sentence(self) -> str:
        """The comparison in one sentence, with the verdict or why there is none."""
        diff = self._amount(self.mean_difference)
        if self.not_tested is not None:
            return f"{self.b} vs {self.a}: {diff} over {len(self.seeds)} shared seeds; not tested: {self.not_tested}."
        verdict = f"{'' if self.significant else 'not '}significant at the {ALPHA:.0%} level"
        return (
            f"{self.b} vs {self.a}: {diff} (95% CI {self._amount(self.ci_low)} to {self._amount(self.ci_high)}) over "
            f"{len(self.seeds)} shared seeds; paired t-test t = {self.t:.2f}, p = {self.p:.3g}: {verdict}."
        )


def paired_test(
    a_label: str, a: dict[str, float], b_label: str, b: dict[str, float], percent: bool, span: float = math.inf
) -> Optional[PairedTest]:
    """Paired t-test of ``b - a`` over their shared seeds (seed -> value); None when they share none.

    ``span`` bounds the difference's interval (1 for fractions: a difference of accuracies lies in [-1, 1]).
    """
    from scipy import stats

    seeds = sorted(set(a) & set(b) - {None}, key=lambda s: (len(s), s))
    if not seeds:
        return None
    diffs = [b[s] - a[s] for s in seeds]
    test = PairedTest(a_label, b_label, seeds, statistics.fmean(diffs), percent=percent)
    if len(seeds) < MIN_SEEDS:
        test.not_tested = (
            f"{MIN_SEEDS} shared seeds are needed, {len(seeds)} {'is' if len(seeds) == 1 else 'are'} too few"
        )
    elif statistics.pvariance(diffs) == 0:
        test.not_tested = "the difference is the same on every seed, so there is no spread to test it against"
    else:
        result = stats.ttest_rel([b[s] for s in seeds], [a[s] for s in seeds])
        test.t, test.p = float(result.statistic), float(result.pvalue)
        test.ci_low, test.ci_high = confidence_interval(diffs, (-span, span))
    return test
