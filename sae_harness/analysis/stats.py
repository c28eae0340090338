"""Statistics of a run's numbers over seeds and between two runs: mean and spread, the standard
error of a mean of eval means, Welch's interval, the paired interval and Holm's correction. Pure
Python (scipy and statsmodels only inside the intervals and Holm).

Arms run at the same seed share the SAE's initialisation and the batch order, so a comparison
between arms is paired: the interval is that of the mean per-seed difference (paired t), which is
narrower than Welch's whenever seeds move both arms together. Several secondary metrics compared at
once get Holm-adjusted p-values (family-wise error at the stated level, no independence assumed)."""

import contextlib
import math
import warnings


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


@contextlib.contextmanager
def _nearly_identical_ok():
    """scipy warns of precision loss when values are nearly identical (L0 of TopK arms, equal to k
    up to rounding); the interval it gives is then as narrow as the data, which is what it should be."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Precision loss occurred in moment calculation", RuntimeWarning)
        yield


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
    if std_a == 0 and std_b == 0:
        return {"delta": delta, "lo": delta, "hi": delta, "df": None, "within_noise": delta == 0, "level": level}
    from scipy.stats import ttest_ind  # scipy comes with scikit-learn (SAEBench); no torch

    with _nearly_identical_ok():
        test = ttest_ind(list(b), list(a), equal_var=False)
        ci = test.confidence_interval(level)
    lo, hi = float(ci.low), float(ci.high)  # plain floats: the result goes into JSON
    return {"delta": delta, "lo": lo, "hi": hi, "df": float(test.df), "within_noise": lo <= 0 <= hi, "level": level}


def t_interval(diffs, level: float = 0.95) -> dict | None:
    """The one-sample t interval for the mean of diffs (scipy.stats.ttest_1samp): {"delta", "lo",
    "hi", "df", "p", "n", "within_noise", "level"} (p two-sided, for mean 0). lo / hi / df / p are
    None with fewer than two values; with identical values the interval is the point delta. None
    for no value. Every interval of a difference here is this one, over the units that vary."""
    diffs = [float(d) for d in diffs]
    n = len(diffs)
    if n == 0:
        return None
    delta = sum(diffs) / n
    out = {"delta": delta, "lo": None, "hi": None, "df": None, "p": None, "n": n, "within_noise": None, "level": level}
    if n < 2:
        return out
    if max(diffs) == min(diffs):
        return out | {"lo": delta, "hi": delta, "df": n - 1, "p": 1.0 if delta == 0 else 0.0, "within_noise": delta == 0}
    from scipy.stats import ttest_1samp  # scipy comes with scikit-learn (SAEBench); no torch

    with _nearly_identical_ok():
        test = ttest_1samp(diffs, 0.0)
        ci = test.confidence_interval(level)
    lo, hi = float(ci.low), float(ci.high)  # plain floats: the result goes into JSON
    return out | {"lo": lo, "hi": hi, "df": n - 1, "p": float(test.pvalue), "within_noise": lo <= 0 <= hi}


def paired_interval(a: dict, b: dict, level: float = 0.95) -> dict | None:
    """Paired t interval for the mean over units of b[unit] - a[unit], over the units both have
    (a unit: a seed, or a (world, seed)). a, b: {unit: value}; t_interval of the differences."""
    units = sorted(set(a) & set(b))
    return t_interval([b[u] - a[u] for u in units], level)


def holm(pvalues: dict) -> dict:
    """Holm-Bonferroni adjusted p-values, {name: p} -> {name: adjusted p}; None stays None
    (statsmodels' multipletests, method "holm": reject where adjusted p <= alpha, which holds the
    family-wise error rate at alpha with no independence assumed)."""
    known = [(name, p) for name, p in pvalues.items() if p is not None]
    if not known:
        return dict.fromkeys(pvalues)
    from statsmodels.stats.multitest import multipletests

    adjusted = multipletests([p for _, p in known], method="holm")[1]
    by_name = {name: float(min(1.0, q)) for (name, _), q in zip(known, adjusted)}
    return {name: by_name.get(name) for name in pvalues}


def interval_over_worlds(diffs_by_world: dict, level: float = 0.95) -> dict | None:
    """The difference of two arms with worlds as a random factor: {world: [paired differences, one
    per SAE seed]} -> each world's mean difference, then a t interval over the world means (df =
    worlds - 1), so the interval covers a new world, not only new seeds of these worlds. Also the
    spread between worlds (std of the world means) and within them (the pooled std of the
    differences around their world's mean). {"delta", "lo", "hi", "df", "p", "n_worlds", "seeds",
    "between_world_sd", "within_world_sd", "world_means", "within_noise", "level"}; None without a world."""
    means = {w: sum(d) / len(d) for w, d in diffs_by_world.items() if d}
    if not means:
        return None
    over = t_interval([means[w] for w in sorted(means)], level)
    residuals = [x - means[w] for w, d in diffs_by_world.items() if d for x in d]
    dof = sum(len(d) - 1 for d in diffs_by_world.values() if d)
    within = math.sqrt(sum(r * r for r in residuals) / dof) if dof > 0 else None
    between = math.sqrt(sum((m - over["delta"]) ** 2 for m in means.values()) / (len(means) - 1)) if len(means) > 1 else None
    return {k: v for k, v in over.items() if k != "n"} | dict(
        n_worlds=len(means),
        seeds=sorted({len(d) for d in diffs_by_world.values() if d}),
        between_world_sd=between,
        within_world_sd=within,
        world_means={str(w): m for w, m in sorted(means.items())},
    )
