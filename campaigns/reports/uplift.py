"""Uplift of recipients over the holdout with a 95% interval: Wald for proportions, Welch for means."""

from __future__ import annotations

import math

from scipy import stats

MIN_GROUP = 30
Z_95 = 1.959963984540054
NOT_SIGNIFICANT = "not significant yet"


def uplift_proportion(*, x1: int, n1: int, x2: int, n2: int) -> dict:
    """p1 − p2 with a 95% Wald interval (normal approximation for a difference of two proportions), and
    the difference relative to the holdout's rate (None when it is 0)."""
    result = {"method": "difference of proportions, 95% Wald (normal approximation) interval"}
    if not n1 or not n2:
        return _undecided(result)
    p1, p2 = x1 / n1, x2 / n2
    se = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    diff = p1 - p2
    result["relative"] = diff / p2 if p2 else None
    return _verdict(result, diff, diff - Z_95 * se, diff + Z_95 * se, min(n1, n2))


def uplift_mean(*, s1: float, ss1: float, n1: int, s2: float, ss2: float, n2: int) -> dict:
    """Difference of means from sums and sums of squares, with a Welch 95% interval, and relative to the
    holdout's mean (None when it is 0)."""
    result = {"method": "difference of means, Welch 95% interval (t, Welch–Satterthwaite df)"}
    if n1 < 2 or n2 < 2:
        return _undecided(result)
    m1, m2 = s1 / n1, s2 / n2
    result["relative"] = (m1 - m2) / m2 if m2 else None
    v1 = max(ss1 - n1 * m1 * m1, 0.0) / (n1 - 1)
    v2 = max(ss2 - n2 * m2 * m2, 0.0) / (n2 - 1)
    a, b = v1 / n1, v2 / n2
    diff = m1 - m2
    if a + b == 0:
        return _verdict(result, diff, diff, diff, min(n1, n2))
    df = (a + b) ** 2 / (a * a / (n1 - 1) + b * b / (n2 - 1))
    half = float(stats.t.ppf(0.975, df)) * math.sqrt(a + b)
    return {**_verdict(result, diff, diff - half, diff + half, min(n1, n2)), "df": df}


def _undecided(result: dict) -> dict:
    """A group too small to compare (empty, or one member for a variance): no figures, no verdict."""
    return {
        **result,
        "diff": None,
        "relative": None,
        "low": None,
        "high": None,
        "significant": False,
        "verdict": NOT_SIGNIFICANT,
    }


def _verdict(result: dict, diff: float, low: float, high: float, smallest: int) -> dict:
    significant = smallest >= MIN_GROUP and (low > 0 or high < 0)
    verdict = "significant at 95%" if significant else NOT_SIGNIFICANT
    return {**result, "diff": diff, "low": low, "high": high, "significant": significant, "verdict": verdict}
