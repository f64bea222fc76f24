"""The report's statistics: mean ± std over seeds, and the paired difference of two backbones
seed by seed with a paired t-test's verdict."""

import math
import statistics

#: Student's t, two-sided 95%, by degrees of freedom (1..30; 1.96 beyond): a paired difference
#: of n seeds is beyond noise when |mean| > t(n - 1) standard errors (a paired t-test at 5%).
T_95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042)


def t_95(df: int) -> float:
    return T_95[df - 1] if df <= len(T_95) else 1.96


def mean_std(values) -> tuple:
    """(mean, sample standard deviation or None for fewer than two values)."""
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else None)


def format_mean_std(values) -> str:
    if not values:
        return "–"
    mean, std = mean_std(values)
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def format_difference(mean, std) -> str:
    """A paired difference as "+mean ± std" ("+mean" for one pair, "–" for none)."""
    if mean is None:
        return "–"
    return f"{mean:+.2f}" if std is None else f"{mean:+.2f} ± {std:.2f}"


def paired_difference(ours: dict, baseline: dict) -> tuple:
    """Seed by seed (keys present in both): (mean, std, n, verdict) of ours - baseline. Beyond
    noise means |mean| > t(n - 1) standard errors of the mean difference (T_95)."""
    diffs = [ours[k] - baseline[k] for k in sorted(ours) if k in baseline]
    if not diffs:
        return None, None, 0, "no pair of seeds"
    mean, std = mean_std(diffs)
    if std is None:
        return mean, None, 1, "n = 1: the noise is unknown"
    t = t_95(len(diffs) - 1)
    bound = t * std / math.sqrt(len(diffs))
    within = abs(mean) <= bound
    return mean, std, len(diffs), (f"{'within' if within else 'beyond'} noise (|mean| "
                                   f"{'≤' if within else '>'} {t:g} SE = {bound:.2f})")

