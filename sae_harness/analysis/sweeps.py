"""A sweep's reading: from its run records to results/<name>.json (each arm's combined summary, its
comparisons with the baseline at its grid point, with arms given by --against, over worlds and
the schedule contrasts, a baseline borrowed from another sweep), and the JSON and its table written.

What the sweep knows about its arms from experiment.py (which arms differ only by their schedules,
which options are an arm's own) comes in as a Design; the package never imports experiment.py."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

from sae_harness.analysis.compare import baseline_arm as compare_baseline
from sae_harness.analysis.compare import compare, is_baseline, welch
from sae_harness.analysis.formatting import results_markdown
from sae_harness.analysis.records import ResultsError, read_results, write_results
from sae_harness.run.rundir import read_info, write_atomic
from sae_harness.run.schema import BASELINE_VARIANT, METRICS, arm_name, combine_summaries, config_differences, per_seed_summaries, summarize

INTERVAL_NOTE = "vs_baseline: arm mean - baseline mean, Welch's t 95% interval (unequal variances); within_noise = the interval includes 0"
PAIRED_NOTE = (
    "paired_vs_baseline: mean over shared seeds of (arm - baseline) at each seed (same initialisation and batches), paired t 95% interval; "
    "p two-sided; p_holm Holm-adjusted over the non-reference metrics of that comparison"
)
SPREAD_NOTE = "std: sample standard deviation over seeds (n - 1); values: one per seed, in seed order"
OVER_WORLDS_NOTE = (
    "over_worlds: with --grid data_seed=..., each arm (its other options fixed) against plain TopK at the same world and seed; "
    "the paired differences averaged over seeds within each world, then a t 95% interval over the world means (df = worlds - 1): "
    "worlds are the random factor. between_world_sd / within_world_sd: the spread of the world means and of the differences within a world; "
    "world_means: each world's mean difference. 'A - B' entries: the schedule contrasts (schedule_contrasts), A against B the same way"
)


@dataclass(frozen=True)
class Design:
    """What experiment.py's ARMS and Config say about a sweep's arms."""

    schedule_contrasts: list = field(default_factory=list)
    """(A, B) pairs of arms that differ only in their schedules, A on the idea's."""
    arm_options: frozenset = frozenset()
    """Options that are an arm's own (role ARM in Config), not a grid point's."""

    def point(self, overrides: dict) -> dict:
        """The grid point of an arm's overrides: the options plain TopK has too, so each arm is
        paired with plain TopK at its point."""
        return {k: v for k, v in overrides.items() if k not in self.arm_options}


def schedule_contrasts(arms: dict) -> list[tuple[str, str]]:
    """(A, B) for every two arms (name -> experiment.Arm) with a term that differ only in their
    schedules, A the one on the idea's schedules (weight and threshold over p): does the
    progression itself help, at the same term and dose? For experiment.ARMS: progressive -
    static_matched, progressive - static."""
    arms = {v: arm for v, arm in arms.items() if arm.term is not None}
    scheduled = [v for v, a in arms.items() if (a.weight, a.threshold) == ("schedule", "schedule")]
    return [
        (a, b)
        for a in scheduled
        for b, arm in arms.items()
        if b != a and dataclasses.replace(arm, weight="schedule", threshold="schedule") == arms[a]
    ]


def design_of(idea) -> Design:
    """The Design of the experiment module idea (experiment.py): its ARMS' schedule contrasts and
    the Config options that are an arm's own."""
    from sae_harness.run.checks import ARM, fields_with

    return Design(schedule_contrasts=schedule_contrasts(idea.ARMS), arm_options=frozenset(fields_with(idea.Config, ARM)))


def over_worlds(records: list[dict], design: Design) -> dict:
    """{arm name without its data_seed: its comparison over worlds with plain TopK at the same other
    options}, from the records of a sweep gridded over data_seed; and for each schedule contrast,
    {"A - B": A against B at the same other options}."""
    groups = {}  # (variant, its overrides but the world) -> runs
    for record in records:
        others = tuple((k, v) for k, v in record["overrides"].items() if k != "data_seed")
        groups.setdefault((record["variant"], others), []).append(record)

    def units(runs):
        return {(r["world"], r["seed"]): r["summary"] for r in runs}

    out = {}
    for (variant, others), runs in groups.items():
        base = next((rs for (v, o), rs in groups.items() if is_baseline(v) and design.point(dict(o)) == design.point(dict(others))), None)
        if not is_baseline(variant) and base:
            out[arm_name(variant, dict(others))] = compare(units(runs), units(base), "world")
    for a, b in design.schedule_contrasts:
        for (variant, others), runs in groups.items():
            if variant == a and (b, others) in groups:
                out[f"{arm_name(a, dict(others))} - {arm_name(b, dict(others))}"] = compare(units(runs), units(groups[b, others]), "world")
    return out


def borrowed_baseline(spec: str, records: list[dict], ignore) -> tuple[dict, dict, list | None]:
    """(summary, {seed: summary}, the training options on which it differs from this sweep's runs at
    the same seed, or None) of a baseline run apart: an arm directory of another sweep, or another
    sweep's results JSON (`path`: its own baseline arm; `path#arm`: that arm)."""
    if spec.partition("#")[0].endswith(".json"):
        path, _, arm = spec.partition("#")
        result = read_results(path)
        arm = arm or result.get("baseline")
        if arm not in (result.get("arms") or {}):
            raise ResultsError(f"--baseline {spec}: {path} has no arm {arm or '(no baseline named)'!r}")
        runs = [r for r in result.get("runs", []) if r.get("arm") == arm]
        configs = {r["seed"]: r.get("config") or {} for r in runs}
        differing = set()
        for record in records:
            if (base := configs.get(record["seed"])) is not None:
                differ, partial = config_differences([base, record["config"]], ignore)
                differing |= set(differ) | set(partial)
        return result["arms"][arm]["summary"], {r["seed"]: r["summary"] for r in runs}, sorted(differing)
    try:
        info = read_info(Path(spec))
    except ValueError:
        raise ResultsError(f"--baseline {spec}: final_info.json is not valid JSON") from None
    return summarize(info), per_seed_summaries(info), None


def reading(name: str, records: list[dict], arms: dict, design: Design, baseline: str = "", against=(), ignore=(), command=None) -> dict:
    """results/<name>.json from the sweep's records and its arms ({arm: {variant, overrides, run_dir}},
    in order): each arm's summary over its seeds, compared with plain TopK at its grid point (else the
    sweep's baseline, or one borrowed with --baseline), with each arm of against, and over worlds."""
    per_seed = {arm: {} for arm in arms}  # {arm: {seed: summary}}, for the comparisons paired by seed
    for record in records:
        per_seed[record["arm"]][record["seed"]] = record["summary"]
    result_arms = {arm: entry | dict(summary=combine_summaries(list(per_seed[arm].values()))) for arm, entry in arms.items()}
    baseline_arm = compare_baseline({a: (v["variant"], v["overrides"]) for a, v in arms.items()})
    differences = None
    if baseline_arm is None and baseline:
        summary, base_per_seed, differences = borrowed_baseline(baseline, records, ignore)
        if not any(entry["n"] for entry in summary.values()):
            raise ResultsError(
                f"--baseline {baseline}: no results there (an arm directory or results JSON of a finished sweep is expected)"
            )
        baseline_arm = f"baseline: {baseline}"
        result_arms = {baseline_arm: dict(variant=BASELINE_VARIANT, overrides={}, run_dir=str(baseline), summary=summary)} | result_arms
        per_seed[baseline_arm] = base_per_seed
    for arm, entry in result_arms.items():  # each arm against plain TopK at its own grid point, else the sweep's baseline
        same_point = compare_baseline(
            {a: (v["variant"], design.point(v["overrides"])) for a, v in arms.items()}, design.point(entry["overrides"])
        )
        base = same_point or (None if is_baseline(entry["variant"]) else baseline_arm)
        if base and arm != base:
            entry |= dict(baseline=base, **comparisons(entry["summary"], result_arms[base]["summary"], per_seed[arm], per_seed[base]))
    compared = {}  # {A: {arm: its comparisons with A}}, read as the baseline's are
    for a in against:
        if a not in result_arms:
            raise ResultsError(f"--against {a}: not an arm of this sweep ({', '.join(result_arms)})")
        compared[a] = {
            arm: comparisons(entry["summary"], result_arms[a]["summary"], per_seed[arm], per_seed[a])
            for arm, entry in result_arms.items()
            if arm != a
        }
    worlds = over_worlds(records, design) if any("data_seed" in v["overrides"] for v in arms.values()) else None
    return dict(
        name=name,
        written=time.strftime("%Y-%m-%d %H:%M:%S"),
        command=command,
        profile=next((r["config"].get("profile") for r in records if r["config"].get("profile")), None),
        baseline=baseline_arm,
        **({"baseline_config_differences": differences} if differences is not None else {}),
        interval=INTERVAL_NOTE,
        paired=PAIRED_NOTE,
        spread=SPREAD_NOTE,
        directions={m.name: m.direction for m in METRICS},
        arms=result_arms,
        **({"against": compared} if compared else {}),
        **({"over_worlds": worlds, "interval_over_worlds": OVER_WORLDS_NOTE} if worlds is not None else {}),
        runs=records,
    )


def comparisons(summary: dict, base_summary: dict, per_seed: dict, base_per_seed: dict) -> dict:
    """An arm against another: Welch's interval of the means, and the interval paired by seed."""
    return dict(vs_baseline=welch(summary, base_summary), paired_vs_baseline=compare(per_seed, base_per_seed))


def recompare(result: dict) -> dict:
    """The comparisons with the baseline rebuilt from a results JSON's own per-run records (a sweep
    whose run directories are gone)."""
    per_seed = {}
    for run in result.get("runs", []):
        per_seed.setdefault(run["arm"], {})[run["seed"]] = run["summary"]
    baseline = result.get("baseline")
    if baseline not in result.get("arms", {}) or baseline not in per_seed:
        raise ResultsError(f"{result.get('name')}: no baseline arm with per-run records to compare with")
    for arm, entry in result["arms"].items():
        if arm != baseline:
            entry |= comparisons(entry["summary"], result["arms"][baseline]["summary"], per_seed.get(arm, {}), per_seed[baseline])
    result["paired"] = PAIRED_NOTE
    return result


def write(results: Path, result: dict, name: str | None = None) -> Path:
    """<results>/<name>.json (records.write_results) and <name>.md, its table; name: the result's own
    unless given (an older results JSON may not record it)."""
    results.mkdir(parents=True, exist_ok=True)
    path = write_results(results / f"{name or result['name']}.json", result)
    markdown = results_markdown(result) + "\n"
    write_atomic(path.with_suffix(".md"), lambda tmp: tmp.write_text(markdown))
    return path
