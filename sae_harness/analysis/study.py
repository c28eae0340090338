"""A study is one file: a spec (TOML, read into the dataclasses below) that says what runs (its sweeps:
profile, arms, worlds, seeds, eval seed, options) and how they are read (its registered contrasts,
the Holm family and the decision rule). Committing the spec before the runs is the registration:
git dates it. `python study.py run SPEC` runs its sweeps (resumable, seed by seed); `python study.py
read SPEC` computes every contrast from the sweeps' run records and writes the verdict, a sentence
per registered contrast made by the rule below, never typed.

    name = "lm_variants"
    registered = "2026-12-06"
    question = "Does the term add anything to Matryoshka on the language model?"

    [[sweeps]]
    name = "lm_variants"                 # results/lm_variants.json holds its run records
    profile = "embedded"
    arms = ["none", "matryoshka", "matryoshka_progressive"]
    seeds = [42, 43, 44, 45, 46]
    options = { llm_dtype = "bfloat16", sae_dtype = "bfloat16" }

    [[contrasts]]
    name = "lm"
    metric = "absorption_full"
    arm = "matryoshka_progressive"
    against = "matryoshka"
    records = ["lm_variants"]            # the sweeps (results JSONs) the two arms' runs come from
    unit = "seed"                        # or "world": seeds nested in worlds, worlds the random factor
    reading = "raw"                      # or "matched": at plain TopK's x on the named curve

    [rule]
    holm = "metrics"                     # Holm over each contrast's metrics, or a list of contrast names

The rule, one for every study: a contrast's effect is established when its 95% interval excludes 0
and its Holm-adjusted p is at most alpha; "better" or "worse" by the metric's direction; a better
effect must also pass the contrast's guards (each a contrast of its own that must not read worse:
by its interval, or by its Holm p). Otherwise it is within noise, and the sentence says whether the
unadjusted interval alone excluded 0."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sae_harness.analysis import compare as C
from sae_harness.analysis.formatting import fmt_interval, fmt_p
from sae_harness.analysis.records import ResultsError, RunRecord, read_runs
from sae_harness.analysis.stats import holm, mean_std
from sae_harness.evals.registry import HIGHER, LOWER


@dataclass(frozen=True)
class Sweep:
    """One sweep.py study part: its runs go to results/<name>.json."""

    name: str
    profile: str
    arms: list[str]
    seeds: list[int]
    worlds: list[int] = field(default_factory=list)
    """data_seed values (--grid data_seed=...); none: the profile's one world."""
    eval_seed: int = 42
    options: dict = field(default_factory=dict)
    """Other experiment options, passed to every run (--llm_dtype bfloat16, ...)."""


@dataclass(frozen=True)
class Curve:
    """Plain TopK over training length: results JSONs (file.json, or file.json#arm for one arm)."""

    name: str
    results: list[str]


@dataclass(frozen=True)
class Guard:
    """A contrast the verdict also needs: it must not read worse than 0, by its interval (the end
    on the worse side does not pass 0) or by Holm (not worse with Holm p <= alpha)."""

    metric: str
    arm: str
    against: str
    reading: Literal["raw", "matched"] = "raw"
    by: Literal["interval", "holm", "spread"] = "interval"


@dataclass(frozen=True)
class Contrast:
    name: str
    metric: str
    arm: str
    against: str
    records: list[str]
    """The sweeps (results/<name>.json) whose runs hold both arms, merged: a study run seed by seed
    across sessions may have several."""
    unit: Literal["seed", "world"] = "seed"
    reading: Literal["raw", "matched"] = "raw"
    curve: str = ""
    x: str = ""
    """With reading matched: the curve (a Curve's name) and the reconstruction metric on its x axis."""
    guards: list[Guard] = field(default_factory=list)
    """interval: the guard's by says how it is read; screen: by its mean and spread."""
    secondary: list[str] = field(default_factory=list)
    """Registered secondary metrics, read the same way beside the primary (no verdict of their own)."""
    sensitivity: list[str] = field(default_factory=list)
    """Metrics read the same way to see how the primary's measure leans (labelled as sensitivity
    readings, never a verdict): e.g. absorption_any with lost parents counted as absorbed."""


@dataclass(frozen=True)
class Rule:
    kind: Literal["interval", "screen"] = "interval"
    """interval: the registered test (an interval and Holm, below). screen: a cheap pass before a
    registered test, too few worlds for an interval: a contrast passes when its mean paired difference
    lies on the better side of 0 by more than the spread (std) of those differences over the (world,
    seed) units, and no guard's mean lies on the worse side by more than its spread; at most `keep`
    arms go on, the largest mean first."""
    keep: int = 0
    """screen: how many passing arms go on (0: every one)."""
    alpha: float = 0.05
    holm: str | list[str] = "metrics"
    """"metrics": each contrast's Holm over its comparison's non-reference metrics; a list of contrast
    names: Holm over their p-values (the family registered)."""


@dataclass(frozen=True)
class Study:
    name: str
    question: str
    registered: str
    sweeps: list[Sweep]
    contrasts: list[Contrast]
    rule: Rule = Rule()
    curves: list[Curve] = field(default_factory=list)
    text: str = ""
    """The registration's words, as committed."""
    status: str = "registered"
    """registered, or superseded: <by what>."""


class StudyError(ResultsError):
    """A spec that cannot be read or does not hold together: one line, exit status 2."""


def _build(cls, data: dict, where: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise StudyError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(names))})")
    try:
        return cls(**data)
    except TypeError as e:
        raise StudyError(f"{where}: {e}") from None


def load(path) -> Study:
    """The Study a spec file holds, checked: every contrast's records, curve and arms named."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as e:
        raise StudyError(f"cannot read {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise StudyError(f"{path} is not valid TOML: {e}") from None
    where = str(path)
    data["sweeps"] = [_build(Sweep, s, f"{where} [[sweeps]]") for s in data.get("sweeps", [])]
    data["curves"] = [_build(Curve, c, f"{where} [[curves]]") for c in data.get("curves", [])]
    contrasts = []
    for c in data.get("contrasts", []):
        c = dict(c, guards=[_build(Guard, g, f"{where} guard") for g in c.get("guards", [])])
        contrasts.append(_build(Contrast, c, f"{where} [[contrasts]]"))
    data["contrasts"] = contrasts
    data["rule"] = _build(Rule, data.get("rule", {}), f"{where} [rule]")
    study = _build(Study, data, where)
    sweeps, curves = {s.name for s in study.sweeps}, {c.name for c in study.curves}
    for c in study.contrasts:
        if missing := [r for r in c.records if r not in sweeps]:
            raise StudyError(
                f"{where}: contrast {c.name} reads {missing[0]!r}, not one of the study's sweeps ({', '.join(sorted(sweeps))})"
            )
        if c.reading == "matched" and (c.curve not in curves or not c.x):
            raise StudyError(f"{where}: contrast {c.name} is read matched but names no curve of the study and x")
    if isinstance(study.rule.holm, list) and (unknown := set(study.rule.holm) - {c.name for c in study.contrasts}):
        raise StudyError(f"{where}: the Holm family names {sorted(unknown)[0]!r}, not a contrast")
    return study


# ---------------------------------------------------------------- reading


class Reader:
    """A study's contrasts read from its sweeps' records (results/<sweep>.json under root)."""

    def __init__(self, study: Study, root):
        self.study, self.root = study, Path(root) / "results"
        self._records, self._curves = {}, {}

    def records(self, c: Contrast) -> list[RunRecord]:
        key = tuple(c.records)
        if key not in self._records:
            self._records[key] = [r for name in c.records for r in read_runs(f"{name}.json", self.root)]
            if not self._records[key]:
                raise StudyError(f"contrast {c.name}: no runs recorded in {', '.join(c.records)}")
        return self._records[key]

    def curve(self, name: str, x: str, y: str) -> dict:
        """{(world, seed): plain TopK's (x, y) points over training length}, units with two or more."""
        if (name, x, y) not in self._curves:
            points = {}
            for spec in next(c for c in self.study.curves if c.name == name).results:
                for r in read_runs(spec, self.root):
                    if C.is_baseline(r.variant) and r.value(x) is not None and r.value(y) is not None:
                        points.setdefault(r.unit, []).append((r.value(x), r.value(y)))
            self._curves[name, x, y] = C.curves(points)
        return self._curves[name, x, y]

    def values(self, c: Contrast, arm: str, metric: str, reading: str) -> dict:
        """{(world, seed): value} of one arm: the metric raw, or its matched shift off plain TopK's curve."""
        runs = [r for r in self.records(c) if r.arm_across_worlds == arm]
        if reading == "raw":
            return {r.unit: v for r in runs if (v := r.value(metric)) is not None}
        points = {r.unit: (r.value(c.x), r.value(metric)) for r in runs if r.value(c.x) is not None and r.value(metric) is not None}
        return C.shifts(points, self.curve(c.curve, c.x, metric))[0]

    def interval(self, c: Contrast, metric=None, arm=None, against=None, reading=None) -> dict | None:
        """arm - against on metric (the contrast's own by default), paired by (world, seed), over c.unit."""
        metric, reading = metric or c.metric, reading or c.reading
        a = self.values(c, against or c.against, metric, reading)
        b = self.values(c, arm or c.arm, metric, reading)
        return C.interval(C.differences(a, b), c.unit)

    def spread(self, c: Contrast, metric=None, arm=None, against=None, reading=None) -> dict:
        """{"mean", "spread", "units"} of the paired differences over the (world, seed) units: the
        screen's yardstick where too few worlds give no useful interval."""
        metric, reading = metric or c.metric, reading or c.reading
        diffs = C.differences(self.values(c, against or c.against, metric, reading), self.values(c, arm or c.arm, metric, reading))
        mean, std = mean_std(list(diffs.values))
        return dict(mean=mean, spread=std, units=len(diffs))

    def family(self, c: Contrast, arm=None, against=None, reading=None) -> dict:
        """Every metric of the comparison, with Holm over its non-reference metrics (compare.with_holm)."""
        out = {m.name: self.interval(c, m.name, arm, against, reading) for m in C.METRICS}
        return C.with_holm({m: i for m, i in out.items() if i is not None})


def read(study: Study, root=".") -> dict:
    """Every contrast's interval and Holm p, its guards and its verdict, from the sweeps' records."""
    reader = Reader(study, root)
    out = {}
    if study.rule.kind == "screen":
        return screen(study, reader)
    for c in study.contrasts:
        entry = dict(contrast=dataclasses.asdict(c), interval=reader.interval(c))
        if study.rule.holm == "metrics":  # each contrast's family: its comparison's non-reference metrics
            entry["p_holm"] = (reader.family(c).get(c.metric) or {}).get("p_holm")
        entry["guards"] = []
        for g in c.guards:
            args = dict(arm=g.arm, against=g.against, reading=g.reading)
            family = reader.family(c, **args) if g.by == "holm" else {}
            entry["guards"].append(
                dict(
                    guard=dataclasses.asdict(g),
                    interval=reader.interval(c, g.metric, **args),
                    holm=(family.get(g.metric) or {}).get("p_holm"),
                )
            )
        entry["secondary"] = {m: reader.interval(c, m) for m in c.secondary}
        entry["sensitivity"] = {m: reader.interval(c, m) for m in c.sensitivity}
        out[c.name] = entry
    if isinstance(study.rule.holm, list):  # the registered family: these contrasts' p-values
        for name, p in holm({name: (out[name]["interval"] or {}).get("p") for name in study.rule.holm}).items():
            out[name]["p_holm"] = p
    for c in study.contrasts:
        out[c.name]["verdict"] = verdict(study, c, out[c.name])
    return heading(study) | dict(contrasts=out)


def heading(study: Study) -> dict:
    """What a verdict file says of its study before its contrasts."""
    return dict(
        study=study.name, question=study.question, registered=study.registered, status=study.status, rule=dataclasses.asdict(study.rule)
    )


def screen(study: Study, reader: Reader) -> dict:
    """The screen's rule (Rule.kind "screen"): each contrast's mean paired difference against its
    spread, its guards the same way, and the arms that go on."""
    out = {}
    for c in study.contrasts:
        entry = dict(contrast=dataclasses.asdict(c), screen=reader.spread(c))
        entry["guards"] = [
            dict(guard=dataclasses.asdict(g), screen=reader.spread(c, g.metric, g.arm, g.against, g.reading)) for g in c.guards
        ]
        out[c.name] = entry | dict(verdict=screen_verdict(c, entry))
    direction = {c.name: C.DIRECTION[c.metric] for c in study.contrasts}
    passing = [
        (out[c.name]["screen"]["mean"] * (1 if direction[c.name] == LOWER else -1), c.arm)
        for c in study.contrasts
        if out[c.name]["verdict"]["outcome"] == "passes"
    ]
    selected = []
    for _, arm in sorted(passing):
        if arm not in selected and (not study.rule.keep or len(selected) < study.rule.keep):
            selected.append(arm)
    return heading(study) | dict(contrasts=out, selected=selected)


def _beyond(direction: str, s: dict, side: str) -> bool:
    """Whether a mean lies on the better (or worse) side of 0 by more than its spread."""
    if s["mean"] is None or s["spread"] is None:
        return False
    sign = -1 if direction == LOWER else 1 if direction == HIGHER else 0
    toward = sign * s["mean"] if side == "better" else -sign * s["mean"]
    return toward > s["spread"]


def screen_verdict(c: Contrast, entry: dict) -> dict:
    direction = C.DIRECTION[c.metric]
    s = entry["screen"]
    what = f"{c.arm} - {c.against}, {c.metric} ({direction}){' at plain TopK' + chr(39) + 's ' + c.x if c.reading == 'matched' else ''}"
    if s["spread"] is None:
        return dict(outcome="no spread", sentence=f"{what}: fewer than two units: no verdict")
    numbers = f"{s['mean']:+.3f} ± {s['spread']:.3f} over {s['units']} (world, seed) units"
    if not _beyond(direction, s, "better"):
        return dict(outcome="fails", sentence=f"{what}: {numbers}: fails (not better by more than its spread)")
    for g, ge in zip(c.guards, entry["guards"]):
        if _beyond(C.DIRECTION[g.metric], ge["screen"], "worse"):
            return dict(outcome="fails", sentence=f"{what}: {numbers}: fails its guard {g.arm} - {g.against} on {g.metric}")
    return dict(outcome="passes", sentence=f"{what}: {numbers}: passes")


def _worse(direction: str, interval: dict) -> bool | None:
    """Whether an interval lies wholly on the metric's worse side of 0 (None without one)."""
    if not interval or interval.get("lo") is None:
        return None
    return interval["lo"] > 0 if direction == LOWER else interval["hi"] < 0 if direction == HIGHER else False


def _better(direction: str, interval: dict) -> bool | None:
    if not interval or interval.get("lo") is None:
        return None
    return interval["hi"] < 0 if direction == LOWER else interval["lo"] > 0 if direction == HIGHER else False


def verdict(study: Study, c: Contrast, entry: dict) -> dict:
    """The rule applied: {"outcome": better / worse / within noise / no interval, "sentence"}."""
    direction = C.DIRECTION[c.metric]
    interval, p_holm = entry["interval"], entry.get("p_holm")
    alpha = study.rule.alpha
    what = f"{c.arm} - {c.against}, {c.metric} ({direction}){' at plain TopK' + chr(39) + 's ' + c.x if c.reading == 'matched' else ''}"
    if interval is None or interval.get("lo") is None:
        return dict(outcome="no interval", sentence=f"{what}: fewer than two {c.unit}s, no interval: no verdict")
    numbers = f"{fmt_interval(interval)}, {_over(c.unit, interval)}, Holm p {fmt_p(p_holm)}"
    held = p_holm is not None and p_holm <= alpha
    if _better(direction, interval) and held:
        failed = [g for g, ge in zip(c.guards, entry["guards"]) if _guard_fails(g, ge, alpha)]
        if failed:
            g = failed[0]
            return dict(
                outcome="within noise",
                sentence=f"{what}: {numbers}: better, but the guard {g.arm} - {g.against} on {g.metric} reads worse: no effect claimed",
            )
        return dict(outcome="better", sentence=f"{what}: {numbers}: better ({direction.split()[0]})")
    if _worse(direction, interval) and held:
        return dict(outcome="worse", sentence=f"{what}: {numbers}: worse ({'higher' if direction == LOWER else 'lower'})")
    alone = _better(direction, interval) or _worse(direction, interval)
    why = f" (the unadjusted interval excludes 0; Holm p above {alpha:g}: not established)" if alone else ""
    return dict(outcome="within noise", sentence=f"{what}: {numbers}: within noise{why}")


def _guard_fails(g: Guard, entry: dict, alpha: float) -> bool:
    direction = C.DIRECTION[g.metric]
    i = entry["interval"]
    if g.by == "holm":
        return bool(_worse(direction, i)) and entry["holm"] is not None and entry["holm"] <= alpha
    if not i or i.get("lo") is None:
        return True  # nothing to show it is not worse
    return i["hi"] < 0 if direction == HIGHER else i["lo"] > 0 if direction == LOWER else False


def _over(unit: str, interval: dict) -> str:
    return f"over {interval['n_worlds']} world means" if unit == "world" else f"paired over {interval['n']} seeds"


def markdown(result: dict, study: Study) -> str:
    """The generated report: the question, a verdict line per contrast, then its guards and secondary readings."""
    lines = [
        f"# {study.name}: {study.question}",
        "",
        f"Registered {study.registered}; status: {study.status}. Generated by `python study.py read` from the records; do not edit.",
        "",
    ]
    if "selected" in result:
        lines += [f"Selected by the screen's rule: {', '.join(f'`{a}`' for a in result['selected']) or 'none'}.", ""]
    for name, entry in result["contrasts"].items():
        lines.append(f"- **{name}**: {entry['verdict']['sentence']}")
        if "screen" in entry:
            for g in entry["guards"]:
                gd, gs = g["guard"], g["screen"]
                lines.append(
                    f"  - guard: {gd['arm']} - {gd['against']}, {gd['metric']} ({C.DIRECTION[gd['metric']]}, {gd['reading']}): {gs['mean']:+.3f} ± {gs['spread']:.3f}"
                )
            continue
        for g in entry["guards"]:
            gd = g["guard"]
            i = g["interval"]
            holm_p = f", Holm p {fmt_p(g['holm'])}" if g["holm"] is not None else ""
            lines.append(
                f"  - guard: {gd['arm']} - {gd['against']}, {gd['metric']} ({C.DIRECTION[gd['metric']]}, {gd['reading']}): {fmt_interval(i)}{holm_p}"
            )
        for kind in ("secondary", "sensitivity"):
            for m, i in entry[kind].items():
                shown = (
                    fmt_interval(i) if i else "not in these runs' records (a measure added after them; python study.py run repeats them)"
                )
                lines.append(f"  - {kind} reading, {m} ({C.DIRECTION[m]}): {shown}")
    return "\n".join(lines)


def summary_table(readings: list[tuple[Study, dict]]) -> str:
    """One row per registered contrast of several studies (the README's evidence table): the study,
    the contrast, the difference with its 95% interval, the Holm p and the outcome by the rule."""
    lines = ["| study | contrast | difference [95% interval] | Holm p | verdict |", "|---|---|---|---|---|"]
    for spec, result in readings:
        for c in spec.contrasts:
            entry = result["contrasts"][c.name]
            what = f"{c.name}: `{c.arm}` − `{c.against}`, {c.metric} ({C.DIRECTION[c.metric]}){' at matched reconstruction' if c.reading == 'matched' else ''}"
            lines.append(
                f"| {spec.name} | {what} | {fmt_interval(entry['interval'])} | {fmt_p(entry.get('p_holm'))} | {entry['verdict']['outcome']} |"
            )
    return "\n".join(lines)
