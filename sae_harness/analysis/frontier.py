"""The frontier of a sweep over worlds: each arm's absorption (and any other y) against its
explained variance, read raw and at plain TopK's explained variance, with worlds as the random
factor. The matched reading (as sae_harness.analysis.matched, per (world, seed) instead of per seed):

- plain TopK's curve at each (world, seed): its (x, y) over training lengths (a sweep such as
  `python sweep.py --name c --variants none --grid data_seed=42,43,44 --grid epochs=1,2,4,12`)
  plus the sweep's own plain TopK at the default length;
- an arm's SAE at (world, seed) with (x, y) against the curve's y at x on that (world, seed)'s curve
  (linear between training lengths; left out, and counted, where x is outside the curve or the
  curve sweep did not run that (world, seed));
- the differences averaged over seeds within each world, a t interval over the world means
  (stats.interval_over_worlds), Holm over the y metrics of each arm. The raw reading is the same
  with plain TopK's default-length SAE at that (world, seed) in place of the curve.
- with --against A[,B...]: for each of them, every other arm minus it, raw and matched (each arm's
  shift off the curve minus A's at the same (world, seed)), with the spread of those paired
  differences over (world, seed) (the screen's yardstick where two worlds give no useful interval).
- --arms takes several sweeps over the same worlds and seeds (a registered test's new arms beside
  the study that already ran the arms it is compared with). An arm that repeats a (world, seed) an
  earlier sweep of the list ran for it is read as its own arm, `arm@sweep` (not plain TopK, not on
  the curve): plain TopK re-run on another machine is then the machine's own effect, and an arm
  paired with it is compared within one machine. An arm on new (world, seed) only (more seeds of a
  study, in a sweep of their own) joins the first earlier arm of its name, `arm` or `arm@sweep`, that
  did not run them.

    python study.py frontier --curves results/synth_worlds_narrow_curve.json \\
        --arms results/synth_worlds_narrow.json --out results/synth_worlds_narrow_frontier
    python study.py frontier --curves results/synth_worlds_cpu_curve.json \\
        --arms results/synth_worlds_cpu.json results/registered_cpu.json \\
        --against matryoshka@registered_cpu,none@registered_cpu --out results/registered_cpu_frontier

writes <out>.json, <out>.md (the table) and <out>.png (a panel per y: a point per (world, seed) and
arm, plain TopK's curves as lines).
"""

from __future__ import annotations

from sae_harness.analysis.compare import baseline_arm, differences, interval, shifts
from sae_harness.analysis.compare import curves as compare_curves
from sae_harness.analysis.formatting import fmt_contrast
from sae_harness.analysis.records import ok_value
from sae_harness.analysis.stats import holm, mean_std
from sae_harness.run.schema import METRICS, arm_over_worlds, is_baseline

X = "synth_explained_variance"
YS = ("synth_absorption_any", "synth_absorption", "synth_mcc")
DIRECTION = {m.name: m.direction for m in METRICS}
MARKERS = "osD^vP*X"


def value(run: dict, metric: str) -> float | None:
    return ok_value(run["summary"].get(metric))


def arm_points(runs: list[dict], metrics) -> dict:
    """{arm name without its world: {(world, seed): {metric: value}}}, runs with every metric only."""
    out = {}
    for run in runs:
        values = {m: value(run, m) for m in metrics}
        if None not in values.values():
            out.setdefault(arm_over_worlds(run), {})[run["world"], run["seed"]] = values
    return out


def plain_curves(curve_runs: list[dict], arm_runs: list[dict], x: str, y: str) -> dict:
    """{(world, seed): [(x, y), ...]}: plain TopK over training lengths, and at the sweep's own length."""
    out = {}
    plain = [r for r in curve_runs if is_baseline(r["variant"])]
    plain += [r for r in arm_runs if is_baseline(r["variant"]) and set(r["overrides"]) <= {"data_seed"}]
    for run in plain:
        if (xv := value(run, x)) is not None and (yv := value(run, y)) is not None:
            out.setdefault((run["world"], run["seed"]), []).append((xv, yv))
    return {unit: sorted(xy) for unit, xy in out.items()}


def column(units: dict, metric: str) -> dict:
    """{(world, seed): value} of one metric from an arm's points."""
    return {unit: v[metric] for unit, v in units.items()}


def reading(curve_runs: list[dict], arm_runs: list[dict], x: str = X, ys=YS, against=()) -> dict:
    """against: arm names (or one name) to contrast every other arm with."""
    against = [against] if isinstance(against, str) else list(against)
    arms = arm_points(arm_runs, (x, *ys))
    base_name = baseline_arm({name: (name, {}) for name in arms})
    base = arms.get(base_name, {})
    curves = {y: plain_curves(curve_runs, arm_runs, x, y) for y in ys}
    shifted = {}  # {arm: {y: {(world, seed): y minus plain TopK's curve at the arm's x}}}: the matched transform
    out = {}
    for name, units in arms.items():
        if name == base_name:
            continue
        entry = {y: dict(raw=interval(differences(column(base, y), column(units, y)), "world")) for y in (x, *ys)}
        for y in ys:
            points = {unit: (v[x], v[y]) for unit, v in units.items()}
            shift, outside, no_curve = shifts(points, compare_curves(curves[y]))
            shifted.setdefault(name, {})[y] = shift
            matched = interval(differences(dict.fromkeys(shift, 0.0), shift), "world")
            entry[y] |= dict(matched=matched, outside_curve=[list(u) for u in outside], no_curve=[list(u) for u in no_curve])
        for kind in ("raw", "matched"):  # Holm over the y metrics of this arm, each reading apart
            cmps = {y: entry[y].get(kind) for y in ys}
            adjusted = holm({y: c["p"] for y, c in cmps.items() if c and c.get("p") is not None})
            for y, c in cmps.items():
                if c:
                    c["p_holm"] = adjusted.get(y)
        out[name] = entry
    for a in against:
        if a not in out:
            raise ValueError(f"--against {a!r} is not an arm of this sweep (arms: {', '.join(out)})")
    contrasts = {a: {name: contrast(arms, shifted, name, a, ys) for name in out if name != a} for a in against}
    return dict(
        x=x,
        ys=list(ys),
        baseline=base_name,
        against=against,
        contrasts=contrasts,
        method=__doc__.split("\n\n")[1].strip(),
        curves={y: {f"{w}/{s}": xy for (w, s), xy in sorted(c.items())} for y, c in curves.items()},
        points={name: {f"{w}/{s}": v for (w, s), v in sorted(units.items())} for name, units in arms.items()},
        arms=out,
    )


def contrast(arms: dict, shifted: dict, name: str, against: str, ys) -> dict:
    """name minus against for each y, raw and matched, paired by (world, seed): the interval over
    worlds, and the mean and std of the paired differences over the (world, seed) units."""
    out = {}
    for y in ys:
        entry = {}
        matched = (shifted.get(against, {}).get(y, {}), shifted.get(name, {}).get(y, {}))
        for kind, (a, b) in (("raw", (column(arms[against], y), column(arms[name], y))), ("matched", matched)):
            diffs = differences(a, b)
            mean, spread = mean_std(list(diffs.values))
            entry[kind] = dict(over_worlds=interval(diffs, "world"), mean=mean, spread=spread, units=len(diffs))
        out[y] = entry
    return out


def merged_runs(sweeps: list[dict]) -> list[dict]:
    """The runs of several sweeps over worlds of one profile. A later sweep's arm joins the first arm
    of that name read so far, `arm` or an earlier `arm@sweep`, on none of whose (world, seed) it ran
    (a continuation: more seeds); where every such arm ran one of its (world, seed), it becomes
    `arm@sweep name` (its variant relabelled, so it is neither plain TopK nor on the curve)."""
    profiles = {s.get("profile") for s in sweeps}
    if len(profiles) > 1:
        raise ValueError(f"--arms mixes profiles ({', '.join(sorted(map(str, profiles)))}): their worlds are not the same")
    runs, seen = [], {}  # seen: {(arm, suffix): {(world, seed)}}
    for sweep in sweeps:
        if any("world" not in run for run in sweep["runs"]):
            raise ValueError("a run without a world: these are not sweeps over data_seed")
        units = {}
        for run in sweep["runs"]:
            units.setdefault(arm_over_worlds(run), set()).add((run["world"], run["seed"]))
        suffix = {}  # arm -> "" (the arm as it is) or "@sweep" (a re-run, on the variant)
        for arm, mine in units.items():
            tried = [tag for a, tag in seen if a == arm]
            suffix[arm] = next((tag for tag in tried if not seen[arm, tag] & mine), "" if not tried else f"@{sweep.get('name')}")
            seen.setdefault((arm, suffix[arm]), set()).update(mine)
        for run in sweep["runs"]:
            tag = suffix[arm_over_worlds(run)]
            runs.append(dict(run, variant=run["variant"] + tag) if tag else run)
    return runs


def markdown(result: dict) -> str:
    """A row per arm: its explained variance shift, then each y raw and at plain TopK's explained
    variance, each a difference from plain TopK with its 95% interval over worlds."""
    x, ys = result["x"], result["ys"]
    head = [f"Δ {x} ({DIRECTION[x]})"] + [f"Δ {y} ({DIRECTION[y]}): {kind}" for y in ys for kind in ("raw", "at plain TopK's x")]
    lines = ["| arm | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for name, entry in result["arms"].items():
        cells = [fmt_contrast(entry[x]["raw"])]
        for y in ys:
            outside = len(entry[y]["outside_curve"])
            cells += [
                fmt_contrast(entry[y]["raw"]),
                fmt_contrast(entry[y]["matched"]) + (f" ({outside} beyond the curve)" if outside else ""),
            ]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    for against, rows in result.get("contrasts", {}).items():
        lines += [
            "",
            f"Each arm minus `{against}`, paired by (world, seed): mean ± std over the units (n), then the interval over worlds.",
            "",
        ]
        head = [f"Δ {y} ({DIRECTION[y]}): {kind}" for y in ys for kind in ("raw", "at plain TopK's x")]
        lines += ["| arm | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
        for name, entry in rows.items():
            cells = []
            for y in ys:
                for kind in ("raw", "matched"):
                    c = entry[y][kind]
                    spread = f" ± {c['spread']:.3g}" if c["spread"] is not None else ""
                    cells.append(f"{c['mean']:+.3g}{spread} (n={c['units']}); {fmt_contrast(c['over_worlds'])}" if c["units"] else "n/a")
            lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)
