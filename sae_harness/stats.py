"""Statistics of a run's numbers over seeds and between two runs: mean and spread, the standard
error of a mean of eval means, Welch's interval. Pure Python (scipy only inside welch_interval)."""

import math


def mean_std(values):
    """(mean, sample std with n - 1; None for one value) of a list of numbers; (None, None) when empty."""
    n = len(values)
    if n == 0:
        return None, None
    mean = sum(values) / n
    return mean, (math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None)


def se_of_mean(ses):
    """The standard error of the mean of n independent estimates with standard errors ses:
    sqrt(sum se_i^2) / n; None when any is missing."""
    if not ses or not all(isinstance(x, (int, float)) for x in ses):
        return None
    return math.sqrt(sum(x * x for x in ses)) / len(ses)


def welch_interval(a, b, level=0.95):
    """Welch's t interval for mean(b) - mean(a) (unequal variances): {"delta", "lo", "hi", "df",
    "within_noise"} with within_noise True when the interval includes 0. lo / hi / df are None
    when either side has fewer than two values (no spread to judge noise by); with no spread on
    either side the interval is the point delta."""
    mean_a, std_a = mean_std(list(a))
    mean_b, std_b = mean_std(list(b))
    if mean_a is None or mean_b is None:
        return None
    delta = mean_b - mean_a
    if std_a is None or std_b is None:
        return {"delta": delta, "lo": None, "hi": None, "df": None, "within_noise": None, "level": level}
    va, vb = std_a**2 / len(a), std_b**2 / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return {"delta": delta, "lo": delta, "hi": delta, "df": None, "within_noise": delta == 0, "level": level}
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    from scipy.stats import t  # scipy comes with scikit-learn (SAEBench); no torch

    half = t.ppf(0.5 + level / 2, df) * se
    return {
        "delta": delta,
        "lo": delta - half,
        "hi": delta + half,
        "df": df,
        "within_noise": delta - half <= 0 <= delta + half,
        "level": level,
    }
