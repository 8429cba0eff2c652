"""Paired comparisons: the difference of two variants on the seeds (or label draws) both ran,
with its 95% t-interval, so that an ordering is claimed only where the interval excludes 0."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping


def paired_difference(a: Mapping[int, float], b: Mapping[int, float]) -> dict | None:
    """``a[s] - b[s]`` over the seeds ``s`` both hold: {"seeds", "differences", "n", "mean",
    "ci95" ([lo, hi], Student's t with n - 1 degrees of freedom; None with fewer than 2),
    "excludes_zero"}; None when no seed is shared."""
    from scipy import stats

    seeds = sorted(set(a) & set(b))
    diffs = [a[s] - b[s] for s in seeds]
    if not diffs:
        return None
    mean = statistics.fmean(diffs)
    ci = None
    if len(diffs) >= 2:
        half = float(stats.t.ppf(0.975, len(diffs) - 1)) * statistics.stdev(diffs) / math.sqrt(
            len(diffs))
        ci = [mean - half, mean + half]
    return {"seeds": seeds, "differences": diffs, "n": len(diffs), "mean": mean, "ci95": ci,
            "excludes_zero": ci is not None and (ci[0] > 0 or ci[1] < 0)}
