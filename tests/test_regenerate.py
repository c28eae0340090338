"""Every committed reading regenerates from the per-run records it was computed from, through the one
analysis design (sae_harness/analysis/compare.py): each sweep's comparisons (Welch, paired by seed,
over worlds, against), each frontier and each matched reading. A change to the pairing, the interval,
Holm or the matched transform that moves a committed number fails here."""

import json
import math
from pathlib import Path

import pytest

import sweep
from sae_harness.analysis import frontier, matched
from sae_harness.analysis.compare import compare, welch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
SWEEPS = sorted(p for p in RESULTS.glob("*.json") if "arms" in (r := json.loads(p.read_text())) and "runs" in r and "ys" not in r)
FRONTIERS = sorted(RESULTS.glob("*_frontier.json"))
MATCHED = sorted(p for p in RESULTS.glob("*_matched*.json"))


def tiered(paths: list[Path]) -> list:
    """The smallest file of each kind in the fast tier, every other one in the slow tier (each takes
    5-12 s on a 2-core CPU: together over a minute)."""
    smallest = min(paths, key=lambda p: p.stat().st_size)
    return [pytest.param(p, id=p.stem, marks=() if p == smallest else pytest.mark.slow) for p in paths]


def differing(new, old, path="") -> list[str]:
    """Where two JSON trees differ: numbers beyond 1e-9 relative (float summation order), anything else exactly."""
    if isinstance(new, dict) and isinstance(old, dict):
        out = [f"{path}/{k}: only in {'the committed file' if k in old else 'the regenerated one'}" for k in set(new) ^ set(old)]
        return out + [d for k in set(new) & set(old) for d in differing(new[k], old[k], f"{path}/{k}")]
    if isinstance(new, list) and isinstance(old, list) and len(new) == len(old):
        return [d for i, (a, b) in enumerate(zip(new, old)) for d in differing(a, b, f"{path}[{i}]")]
    if isinstance(new, float) or isinstance(old, float):
        ok = isinstance(new, (int, float)) and isinstance(old, (int, float)) and math.isclose(new, old, rel_tol=1e-9, abs_tol=1e-12)
        return [] if ok else [f"{path}: {new!r} vs committed {old!r}"]
    return [] if new == old else [f"{path}: {new!r} vs committed {old!r}"]


def as_json(x):
    return json.loads(json.dumps(x))


def test_the_oracle_catches_a_moved_number():
    assert differing({"a": [1.0, {"b": 0.5}]}, {"a": [1.0, {"b": 0.5 + 1e-15}]}) == []
    assert differing({"a": [1.0, {"b": 0.5}]}, {"a": [1.0, {"b": 0.5001}]}) == ["/a[1]/b: 0.5 vs committed 0.5001"]


@pytest.mark.parametrize("path", tiered(SWEEPS))
def test_a_sweeps_comparisons_regenerate_from_its_records(path):
    result = json.loads(path.read_text())
    per_seed = {}
    for run in result["runs"]:
        per_seed.setdefault(run["arm"], {})[run["seed"]] = run["summary"]
    problems = []
    for arm, entry in result["arms"].items():
        base = entry.get("baseline")
        if "paired_vs_baseline" in entry and base in per_seed:
            problems += differing(as_json(compare(per_seed[arm], per_seed[base])), entry["paired_vs_baseline"], f"{arm}/paired")
        if "vs_baseline" in entry and base in result["arms"]:
            problems += differing(as_json(welch(entry["summary"], result["arms"][base]["summary"])), entry["vs_baseline"], f"{arm}/welch")
    for against, rows in (result.get("against") or {}).items():
        for arm, entry in rows.items():
            problems += differing(as_json(compare(per_seed[arm], per_seed[against])), entry["paired_vs_baseline"], f"{arm} vs {against}")
    if "over_worlds" in result:
        problems += differing(as_json(sweep.worlds_comparisons(result["runs"])), result["over_worlds"], "over_worlds")
    assert not problems, problems[:5]


def files(spec) -> list[Path]:
    return [ROOT / p for p in ([spec] if isinstance(spec, str) else spec)]


@pytest.mark.parametrize("path", tiered(FRONTIERS))
def test_a_frontier_regenerates_from_its_sweeps(path):
    result = json.loads(path.read_text())
    curve_runs = [run for p in files(result["curves_file"]) for run in json.loads(p.read_text())["runs"]]
    arm_runs = frontier.merged_runs([json.loads(p.read_text()) for p in files(result["arms_file"])])
    new = as_json(frontier.reading(curve_runs, arm_runs, result["x"], result["ys"], result.get("against") or []))
    keys = ("arms", "contrasts", "curves", "points", "baseline") if "contrasts" in result else ("arms", "curves", "points", "baseline")
    problems = [d for k in keys for d in differing(new[k], result[k], k)]
    assert not problems, problems[:5]


@pytest.mark.parametrize("path", tiered(MATCHED))
def test_a_matched_reading_regenerates_from_its_sweeps(path):
    result = json.loads(path.read_text())
    runs = []
    for spec in result["curves_file"]:
        file, _, only = spec.partition("#")
        runs += [run for run in json.loads((ROOT / file).read_text())["runs"] if not only or run["arm"] == only]
    arms = json.loads((ROOT / result["arms_file"]).read_text())
    new = as_json(matched.reading(dict(runs=runs), arms, result["x"], result["y"]))
    problems = [d for k in ("curve", "arms") for d in differing(new[k], result[k], k)]
    assert not problems, problems[:5]
