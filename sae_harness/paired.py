"""Paired comparisons and Holm's correction.

Arms run at the same seed share the SAE's initialisation and the batch order, so a comparison
between arms is paired: the interval is that of the mean per-seed difference (paired t), which is
narrower than Welch's whenever seeds move both arms together. Several secondary metrics compared at
once get Holm-adjusted p-values (family-wise error at the stated level, no independence assumed).
"""

import math


def paired_interval(a: dict, b: dict, level: float = 0.95) -> dict | None:
    """Paired t interval for mean over seeds of b[seed] - a[seed], over the seeds both have.

    a, b: {seed: value}. Returns {"delta", "lo", "hi", "df", "p", "n", "within_noise", "level"}
    (p two-sided, for delta = 0); lo / hi / df / p are None with fewer than two shared seeds, and
    with identical differences the interval is the point delta. None when no seed is shared."""
    seeds = sorted(set(a) & set(b))
    diffs = [b[s] - a[s] for s in seeds]
    n = len(diffs)
    if n == 0:
        return None
    delta = sum(diffs) / n
    out = {"delta": delta, "lo": None, "hi": None, "df": None, "p": None, "n": n, "within_noise": None, "level": level}
    if n < 2:
        return out
    sd = math.sqrt(sum((d - delta) ** 2 for d in diffs) / (n - 1))
    se = sd / math.sqrt(n)
    if se == 0:
        return out | {"lo": delta, "hi": delta, "df": n - 1, "p": 1.0 if delta == 0 else 0.0, "within_noise": delta == 0}
    from scipy.stats import t  # scipy comes with scikit-learn (SAEBench)

    half = t.ppf(0.5 + level / 2, n - 1) * se
    p = 2 * t.sf(abs(delta) / se, n - 1)
    return out | {"lo": delta - half, "hi": delta + half, "df": n - 1, "p": p, "within_noise": delta - half <= 0 <= delta + half}


def holm(pvalues: dict) -> dict:
    """Holm-Bonferroni adjusted p-values, {name: p} -> {name: adjusted p}; None stays None.

    Sorted ascending, the i-th smallest of m gets max over j <= i of (m - j) * p_(j), capped at 1:
    reject where adjusted p <= alpha, which holds the family-wise error rate at alpha."""
    known = sorted((p, name) for name, p in pvalues.items() if p is not None)
    m = len(known)
    adjusted, running = {}, 0.0
    for i, (p, name) in enumerate(known):
        running = max(running, min(1.0, (m - i) * p))
        adjusted[name] = running
    return {name: adjusted.get(name) for name in pvalues}
