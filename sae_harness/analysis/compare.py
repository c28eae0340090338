"""One design for every comparison of arms: the numbers a comparison may use, the pairing, the
interval, Holm, the matched reading and the baseline, each written once here.

- **Values**: a metric's value where its status is ok (records.ok_value), keyed by the unit the
  runs share: (world, seed) for records, the seed for a run directory's seeds.
- **Pairing**: arms at one unit share initialisation and batches, so a comparison takes the
  difference at each unit both arms have (a merge on the unit, `differences`).
- **Interval** (`interval`): `unit="seed"`, the t interval of the mean paired difference over the
  units; `unit="world"`, the differences averaged over seeds within each world, then the t interval
  over the world means (worlds the random factor: stats.interval_over_worlds).
- **Holm** over a family of p-values (stats.holm): within one comparison, over its non-reference
  metrics (`compare`); a study's registered family is named in its spec (study.py).
- **The matched reading** is a transform of values, not another comparison (`shifts`): each SAE's y
  minus plain TopK's y at the same x on that unit's curve of plain TopK over training length; the
  shifts then feed the same pairing and interval.
- **The baseline** of a set of arms (`baseline_arm`): plain TopK (schema.BASELINE_VARIANT) with no
  option of its own at the arm's grid point; of a run among the run directories beside it
  (`baseline_run`): plain TopK of the same profile, run_0 first for gemma-2-2b, else the closest
  key config.

Welch's unpaired interval (`welch`) is kept for arms that share no unit (a baseline run apart).
pandas is imported inside the functions: the notes and schema stay pure Python."""

from __future__ import annotations

from sae_harness.analysis.records import ok_value
from sae_harness.analysis.stats import holm, interval_over_worlds, t_interval, welch_interval
from sae_harness.evals.registry import REFERENCE
from sae_harness.run import profiles
from sae_harness.run.schema import METRICS, is_baseline, run_identity, run_number

DIRECTION = {m.name: m.direction for m in METRICS}


def values(by_unit: dict, metric: str) -> dict:
    """{unit: value} of one metric from {unit: summary}, where the metric is ok."""
    out = {}
    for unit, summary in by_unit.items():
        if (v := ok_value((summary or {}).get(metric))) is not None:
            out[unit] = v
    return out


def differences(against: dict, arm: dict):
    """arm - against at each unit both have ({unit: value} each): a merge on the unit, as a pandas
    Series indexed by unit in sorted order. The one pairing."""
    import pandas as pd

    a = pd.DataFrame({"unit": list(against), "against": list(against.values())}, dtype=object)
    b = pd.DataFrame({"unit": list(arm), "arm": list(arm.values())}, dtype=object)
    paired = a.merge(b, on="unit")
    paired = paired.iloc[sorted(range(len(paired)), key=lambda i: paired["unit"].iloc[i])]
    diffs = [float(x) - float(y) for x, y in zip(paired["arm"], paired["against"])]
    return pd.Series(diffs, index=pd.Index(list(paired["unit"]), tupleize_cols=False, dtype=object), dtype=float)


def interval(diffs, unit: str = "seed") -> dict | None:
    """The interval of paired differences (a Series from `differences`): over the units
    (unit="seed"), or over world means with the units' worlds as the random factor (unit="world",
    units (world, seed))."""
    if unit == "seed":
        return t_interval(list(diffs.values))
    if unit == "world":
        by_world = {}
        for (world, _), d in diffs.items():
            by_world.setdefault(world, []).append(float(d))
        return interval_over_worlds(by_world)
    raise ValueError(f"unit must be seed or world, not {unit!r}")


def with_holm(cmps: dict) -> dict:
    """Each comparison with p_holm: Holm over the family's non-reference metrics with a p."""
    adjusted = holm({name: c["p"] for name, c in cmps.items() if DIRECTION.get(name) != REFERENCE and c.get("p") is not None})
    return {name: c | {"p_holm": adjusted.get(name)} for name, c in cmps.items()}


def compare(arm: dict, against: dict, unit: str = "seed", metrics=None) -> dict:
    """{metric: interval of arm - against | {"p_holm"}} from {unit: summary} of each, paired by
    unit; a metric with no shared ok unit is left out. p_holm: Holm over this comparison's
    non-reference metrics (a family of secondary endpoints)."""
    out = {}
    for name in metrics or [m.name for m in METRICS]:
        if (cmp := interval(differences(values(against, name), values(arm, name)), unit)) is not None:
            out[name] = cmp
    return with_holm(out)


def welch(summary: dict, baseline: dict) -> dict:
    """{metric: Welch's interval of summary's mean - baseline's} over the per-seed values each
    summary holds, for the metrics both have (unpaired)."""
    out = {}
    for metric in METRICS:
        a, b = (baseline.get(metric.name) or {}).get("values") or [], (summary.get(metric.name) or {}).get("values") or []
        if a and b:
            out[metric.name] = welch_interval(a, b)
    return out


# ---------------------------------------------------------------- the matched reading


def read_at(curve: list[tuple[float, float]], x: float) -> float | None:
    """y of the piecewise-linear curve through the (x, y) points at x; None outside its range."""
    curve = sorted(curve)
    if not curve or not curve[0][0] <= x <= curve[-1][0]:
        return None
    for (x0, y0), (x1, y1) in zip(curve, curve[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return curve[0][1]  # a single point, x on it


def curves(points: dict) -> dict:
    """{unit: [(x, y), ...]} sorted, from {unit: [(x, y), ...]} of plain TopK at several lengths;
    a unit with fewer than two points has no curve and is left out."""
    return {unit: sorted(xy) for unit, xy in points.items() if len(xy) >= 2}


def shifts(points: dict, unit_curves: dict) -> tuple[dict, list, list]:
    """The matched transform: ({unit: y - curve(x)}, units whose x is outside their curve, units with
    no curve) from an arm's {unit: (x, y)} and {unit: curve}."""
    out, outside, no_curve = {}, [], []
    for unit, (x, y) in sorted(points.items()):
        if unit not in unit_curves:
            no_curve.append(unit)
        elif (reference := read_at(unit_curves[unit], x)) is None:
            outside.append(unit)
        else:
            out[unit] = y - reference
    return out, outside, no_curve


# ---------------------------------------------------------------- the baseline


def baseline_arm(arms: dict, point: dict | None = None) -> str | None:
    """The baseline among arms ({name: (variant, the options it sets)}): plain TopK at point (the
    options that are the grid's, not an arm's own; no option at all when point is None)."""
    return next((name for name, (variant, options) in arms.items() if is_baseline(variant) and options == (point or {})), None)


def baseline_run(name, info, candidates):
    """(name, info) of the baseline for a run among candidates [(name, info)]: variant none, same
    profile, not the run itself; run_0 first for gemma-2-2b; else the closest key config, then
    the lowest run number. None when there is none."""
    ident = run_identity(info)
    same = [
        (n, i)
        for n, i in candidates
        if n != name and run_identity(i)["profile"] == ident["profile"] and is_baseline(run_identity(i)["variant"])
    ]
    if not same:
        return None
    if ident["profile"] == profiles.GEMMA2:
        seed = [c for c in same if c[0] == "run_0"]
        if seed:
            return seed[0]
    keys = ("dict_size", "k", "steps", "tokens", "batch_size", "layer", "lm_name")

    def distance(candidate):
        config = run_identity(candidate[1])["config"]
        number = run_number(candidate[0])
        return (sum(config.get(k) != ident["config"].get(k) for k in keys), 10**9 if number is None else number)

    return min(same, key=distance)
