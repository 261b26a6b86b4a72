"""Statistics over repeated runs: mean, sample std, Student-t confidence interval, Welch's comparison.

Every function takes plain sequences of floats (fractions or anything else: the unit is the caller's) and returns
``None`` for a figure that is undefined for the sample (a std or interval from one value).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from dasuite.lazy import lazy_import

sps = lazy_import("scipy.stats")  # loaded by the first statistic, not by `dasuite --help`

__all__ = ["Comparison", "Replicates", "Summary", "mean_or_none", "replicate_stats", "summarize", "welch"]


@dataclass(frozen=True)
class Summary:
    """``n`` values, their ``mean``, sample ``std`` (ddof=1) and the ``ci`` half-width
    ``t_{(1+c)/2, n-1} * std / sqrt(n)`` at confidence c; std and ci are None for n < 2, everything but n for n = 0."""

    n: int
    mean: float | None
    std: float | None
    ci: float | None


@dataclass(frozen=True)
class Comparison:
    """Welch's comparison of two samples a (a group) and b (the baseline).

    ``diff`` = mean(a) - mean(b); ``se`` = sqrt(s_a^2/n_a + s_b^2/n_b); ``df`` = the Welch-Satterthwaite degrees of
    freedom se^4 / ((s_a^2/n_a)^2/(n_a-1) + (s_b^2/n_b)^2/(n_b-1)); ``ci`` = t_{(1+c)/2, df} * se (0 when both samples
    are constant); ``p_value``: two-sided Welch t-test (``scipy.stats.ttest_ind(equal_var=False)``), None when it is
    undefined (two equal constant samples). All but ``diff`` are None when n < 2 on either side.
    """

    n_a: int
    n_b: int
    diff: float | None
    ci: float | None
    df: float | None
    p_value: float | None


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")


def mean_or_none(values: Sequence[float | None]) -> float | None:
    """The mean of ``values``, or None when any value is None (undefined) or there are none."""
    if not values or any(v is None for v in values):
        return None
    return float(np.mean(np.asarray(values, dtype=np.float64)))


def summarize(values: Sequence[float], confidence: float = 0.95) -> Summary:
    """n, mean, sample std (ddof=1) and the Student-t CI half-width of ``values``."""
    _check_confidence(confidence)
    x = np.asarray(values, dtype=np.float64)
    n = int(x.size)
    if n == 0:
        return Summary(0, None, None, None)
    mean = float(x.mean())
    if n < 2:
        return Summary(n, mean, None, None)
    std = float(x.std(ddof=1))
    ci = float(sps.t.ppf(0.5 + confidence / 2.0, n - 1) * std / math.sqrt(n))
    return Summary(n, mean, std, ci)


def welch(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Comparison:
    """Compare sample ``a`` with baseline ``b`` (see ``Comparison`` for the formulas)."""
    _check_confidence(confidence)
    xa, xb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    na, nb = int(xa.size), int(xb.size)
    diff = float(xa.mean() - xb.mean()) if na and nb else None
    if na < 2 or nb < 2:
        return Comparison(na, nb, diff, None, None, None)
    va, vb = xa.var(ddof=1) / na, xb.var(ddof=1) / nb
    se = math.sqrt(va + vb)
    if se == 0.0:
        df, ci = None, 0.0
    else:
        df = float((va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1)))
        ci = float(sps.t.ppf(0.5 + confidence / 2.0, df) * se)
    with warnings.catch_warnings():  # scipy warns about precision loss for (nearly) constant samples
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(sps.ttest_ind(xa, xb, equal_var=False).pvalue)
    return Comparison(na, nb, diff, ci, df, None if math.isnan(p) else p)


@dataclass(frozen=True)
class Replicates:
    """Statistics of one group over its independent replicates (``units``). Without folds each run is a replicate;
    with folds a replicate (seed) is the average of its folds, over the seeds that have every fold in ``folds``
    (``missing``: the folds each other seed lacks; it is excluded), and ``fold_means`` are per fold the means over
    the seeds used. ``samples``: per key the replicates' defined values; ``stats``: their ``Summary``;
    ``undefined``: per key how many replicates leave it undefined (None)."""

    units: list[str]
    samples: dict[str, list[float]]
    stats: dict[str, Summary]
    undefined: dict[str, int]
    folds: list[int]
    missing: dict[str, list[int]]
    fold_means: dict[int, dict[str, float | None]]


def replicate_stats(runs: Sequence[tuple[str, int | None, Mapping[str, float | None]]], keys: Sequence[str],
                    confidence: float = 0.95) -> Replicates:
    """``runs``: (replicate label e.g. "seed0", fold or None, values by key); either every run has a fold, each
    (label, fold) at most once, or none has. A seed's fold-average of a key is None when a fold leaves it undefined."""
    folds = sorted({fold for _, fold, _ in runs if fold is not None})
    labels, units = [u for u, _, _ in runs], [v for _, _, v in runs]
    missing: dict[str, list[int]] = {}
    fold_means: dict[int, dict[str, float | None]] = {}
    if folds:
        by_unit: dict[str, dict[int, Mapping[str, float | None]]] = {}
        for unit, fold, values in runs:
            by_unit.setdefault(unit, {})[fold] = values
        complete = {u: f for u, f in by_unit.items() if len(f) == len(folds)}
        missing = {u: [i for i in folds if i not in f] for u, f in by_unit.items() if u not in complete}
        labels = list(complete)
        units = [{k: mean_or_none([f[i].get(k) for i in folds]) for k in keys} for f in complete.values()]
        fold_means = {
            i: {k: mean_or_none([f[i][k] for f in complete.values() if f[i].get(k) is not None]) for k in keys}
            for i in folds
        }
    samples = {k: [u[k] for u in units if u.get(k) is not None] for k in keys}
    return Replicates(labels, samples, {k: summarize(v, confidence) for k, v in samples.items()},
                      {k: len(units) - len(v) for k, v in samples.items()}, folds, missing, fold_means)
