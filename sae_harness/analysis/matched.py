"""Each arm read at plain TopK's absorption for the same explained variance (the matched-
reconstruction reading). Absorption tracks reconstruction: a plain TopK trained less reconstructs
worse and absorbs less, so "lower absorption" alone may be "less trained". The reading:

- plain TopK's curve, per seed: its (x, y) points over training lengths (a sweep such as
  `python sweep.py --name synth_curves --variants none --grid epochs=1,2,3,4`), plus the default
  `none` arm's point at that seed; x is explained variance, y absorption (any two metrics);
- an arm's SAE at seed s with (x_s, y_s) is compared with curve_s(x_s), plain TopK's y at the same
  x on that seed's curve (linear between neighbouring points; none outside the curve's range);
- the difference y_s - curve_s(x_s), paired over seeds: mean and paired t 95% interval
  (stats.paired_interval). Below 0 for a lower-is-better y: less absorption than plain TopK
  reaches at that reconstruction.

    python study.py matched --curves results/synth_curves.json --arms results/synth_ablation.json \\
        --out results/synth_curves_matched

--curves takes several sweeps (their runs merged), e.g. short and long training lengths run apart;
`file.json#arm` takes one arm of a sweep, e.g. the default-length `none` of an ablation whose other
arms are not plain TopK, for arms compared with a baseline run apart (sweep.py --baseline x.json).

writes <out>.json and <out>.png (the curves and every arm's seeds).
"""

from __future__ import annotations

from sae_harness.analysis.compare import differences, interval, read_at
from sae_harness.analysis.records import runs_of
from sae_harness.analysis.stats import mean_std


def points(result: dict, x: str, y: str, arm: str | None = None) -> dict:
    """{arm: {seed: (x, y)}} from a sweep's results JSON (its "runs"), runs with both metrics only."""
    out = {}
    for run in runs_of(result, arm):
        if (xv := run.value(x)) is not None and (yv := run.value(y)) is not None:
            out.setdefault(run.arm, {})[run.seed] = (xv, yv)
    return out


def curves_by_seed(curve_arms: dict) -> dict:
    """{seed: [(x, y), ...]}: every curve arm's point at that seed."""
    out = {}
    for by_seed in curve_arms.values():
        for seed, xy in by_seed.items():
            out.setdefault(seed, []).append(xy)
    return out


def matched(curves: dict, arm: dict) -> dict:
    """The arm ({seed: (x, y)}) against plain TopK's curves ({seed: [(x, y), ...]}): per seed the
    curve's y at the arm's x, the difference, and the paired interval over the seeds read."""
    at_curve, own, outside = {}, {}, []
    for seed, (x, y) in sorted(arm.items()):
        if seed not in curves:
            continue
        reference = read_at(curves[seed], x)
        if reference is None:
            outside.append(seed)
            continue
        at_curve[seed], own[seed] = reference, y
    return dict(
        per_seed={s: dict(x=arm[s][0], y=own[s], curve_y=at_curve[s], delta=own[s] - at_curve[s]) for s in own},
        paired=interval(differences(at_curve, own), "seed"),
        outside_curve=outside,
        points={s: dict(x=x, y=y) for s, (x, y) in sorted(arm.items())},
        x=mean_std([arm[s][0] for s in arm]),
        y=mean_std([arm[s][1] for s in arm]),
    )


def reading(curve_result: dict, arms_result: dict, x: str, y: str, baseline: str = "none") -> dict:
    curve_arms = points(curve_result, x, y)
    arms = points(arms_result, x, y)
    if baseline in arms:  # the default-length plain TopK is the curve's last point
        curve_arms = curve_arms | {f"{baseline} (default length)": arms[baseline]}
    curves = {seed: xy for seed, xy in curves_by_seed(curve_arms).items() if len(xy) >= 2}  # a seed the curve sweep ran
    return dict(
        x=x,
        y=y,
        method="per seed: the arm's y minus plain TopK's y at the arm's x on that seed's curve (linear between training lengths); "
        "paired t 95% interval over seeds; seeds whose x falls outside the curve are left out (outside_curve)",
        curve={arm: {str(s): xy for s, xy in sorted(by_seed.items())} for arm, by_seed in curve_arms.items()},
        arms={arm: matched(curves, by_seed) for arm, by_seed in arms.items() if arm != baseline},
    )


def arm_label(arm: str, paired: dict | None) -> str:
    if not paired or paired["lo"] is None:
        return arm
    verdict = "within noise" if paired["within_noise"] else ("below" if paired["hi"] < 0 else "above")
    return f"{arm}: {paired['delta']:+.3f} [{paired['lo']:+.3f}, {paired['hi']:+.3f}] vs the curve ({verdict}, n={paired['n']})"
