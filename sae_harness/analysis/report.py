"""Runs as the reports read them: a run directory loaded (final_info.json, the training log, the
summary, who it is), the per-phase means of the training diagnostics, the baseline beside a run,
what is missing, and the text tables that plot.py, notes and sweep.py print. Pure Python (json and
the schema): figures live in plot.py, which imports this."""

import json
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

from sae_harness.analysis.compare import baseline_run, compare, welch
from sae_harness.analysis.formatting import fmt, fmt_delta, fmt_spread, spread_of
from sae_harness.evals.registry import REFERENCE
from sae_harness.run import profiles
from sae_harness.run.schema import (
    EVAL_BLOCKS,
    EVAL_OF_BLOCK,
    METRICS,
    SEEDS,
    block_status,
    combine_summaries,
    config_differences,
    entry,
    evals_asked,
    info_training_key,
    is_baseline,
    metric_asked,
    per_seed_summaries,
    run_identity,
    run_number,
    summarize,
)

PHASES = (("early", 0.0, 1 / 3), ("middle", 1 / 3, 2 / 3), ("late", 2 / 3, 1.0))
SEPARATION = (
    ("sep_cos_mean", "mean |cos| of co-firing decoder pairs"),
    ("sep_cos_p95", "95th pct |cos| of co-firing decoder pairs"),
    ("sep_frac_above_thr", "fraction of co-firing pairs with n_ij > threshold"),
    ("sep_pairs_penalized", "pairs with c_ij > 0 (count)"),
)
MECHANISM = (  # synth profile: the true parent / child latent pairs against all other pairs (sae_harness/run/synth.py: mechanism)
    ("mech_hier_cofire", "mech_other_cofire", "co-firing n_ij"),
    ("mech_hier_cos", "mech_other_cos", "decoder |cos|"),
    ("mech_hier_share", None, "share of P on\nparent/child pairs"),
)
NAN = float("nan")


class RunError(Exception):
    """A run directory that cannot be read; the message is the one line shown."""


@dataclass
class Run:
    name: str
    path: Path
    info: dict
    log: list
    bad_log_lines: int
    profile: str
    variant: str
    config: dict
    summary: dict
    seeds: list

    @property
    def number(self):
        number = run_number(self.name)
        return 10**9 if number is None else number

    @property
    def label(self):
        return f"{self.name} ({self.variant}{f', {len(self.seeds)} seeds' if len(self.seeds) > 1 else ''})"


def load_run(path):
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"{path}: not a directory")
    info_path = path / "final_info.json"
    if not info_path.is_file():
        raise RunError(f"{path}: no final_info.json")
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunError(f"{info_path}: not valid JSON ({e})") from None
    if not isinstance(info, dict):
        raise RunError(f"{info_path}: not a JSON object")
    if info_training_key(info) is None:
        raise RunError(f"{info_path}: no 'training results for layer N' block")
    seeds = info.get(SEEDS, {}).get("values", []) if isinstance(info.get(SEEDS), dict) else []
    log_path = path / "training_log.jsonl"
    if not log_path.exists() and seeds:  # several seeds: the first seed's curves
        first = info[SEEDS].get("per_seed", {}).get(str(seeds[0]), {})
        log_path = path / first.get("dir", f"seed_{seeds[0]}") / "training_log.jsonl"
    log, bad = read_log(log_path)
    ident = run_identity(info)
    name = path.resolve().name
    return Run(name, path, info, log, bad, ident["profile"], ident["variant"], ident["config"], summarize(info), seeds)


def read_log(path):
    """(rows, number of unreadable lines); a missing log is an empty one."""
    rows, bad = [], 0
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return rows, bad
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad += 1
    return rows, bad


def series(log, key, scale=1.0):
    """The logged values of key as floats, NaN where absent, null or not a number."""
    out = []
    for row in log:
        value = row.get(key)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        out.append(float(value) * scale if ok and math.isfinite(value) else NAN)
    return out


def progress(log):
    """Progress 0..1 per row: the logged value, else step / last step."""
    p = series(log, "progress")
    if all(math.isnan(v) for v in p):
        steps = series(log, "step")
        last = max((s for s in steps if not math.isnan(s)), default=NAN)
        p = [s / last if last and last > 0 else NAN for s in steps]
    return p


def has_data(values):
    return any(not math.isnan(v) for v in values)


def phase_means(log, key):
    """Mean of key over the rows of each third of training (None where nothing logged)."""
    p, values = progress(log), series(log, key)
    means = []
    for i, (_, lo, hi) in enumerate(PHASES):
        last = i == len(PHASES) - 1
        chosen = [v for x, v in zip(p, values) if not math.isnan(v) and lo <= x and (x < hi or (last and x <= hi))]
        means.append(sum(chosen) / len(chosen) if chosen else None)
    return means


def separation_table(runs):
    """Per-phase means of the separation measures, one block of rows per run."""
    width = max([len(run.label) for run in runs] + [20]) + 2  # a long run name keeps its gap
    header = f"{'run':<{width}}{'measure':<22}" + "".join(f"{n:>10}" for n, _, _ in PHASES)
    lines = [header]
    for run in runs:
        for key, _ in SEPARATION:
            means = phase_means(run.log, key)
            lines.append(f"{run.label:<{width}}{key:<22}" + "".join(f"{fmt(m):>10}" for m in means))
    return "\n".join(lines)


def find_baseline(run, candidates):
    """The `none` run of the same profile to show beside run (compare.baseline_run): run_0 for
    gemma-2-2b when it qualifies, else the one whose key config matches best, then the lowest number."""
    by_name = {c.name: c for c in candidates if c.path.resolve() != run.path.resolve()}
    picked = baseline_run(run.name, run.info, [(c.name, c.info) for c in by_name.values()])
    return by_name[picked[0]] if picked else None


REFERENCES = {  # profile -> the committed sweep whose plain TopK and default arm a single run is drawn beside
    profiles.EMBEDDED: "anchors_e4",
    profiles.SYNTH: "synth_worlds_cpu",
    profiles.SYNTH_NARROW: "synth_worlds_narrow",
}
REFERENCE_ARMS = ("none", "progressive")
COMPARABLE = ("dict_size", "k", "tokens", "epochs", "batch_size", "layer", "lm_name", "data_seed")
"""A committed run stands beside this one only where these options agree (same sizes, length, world)."""
RESULTS = Path(__file__).resolve().parents[2] / "results"


def references(info, results=RESULTS) -> tuple[str, list[tuple[str, dict]]]:
    """(what they are, [(label, summary over its seeds)]) of the committed reference runs of a run's profile (plain TopK
    and the default arm of REFERENCES' sweep) whose COMPARABLE options equal this run's; [] where the
    profile has none or no committed run is comparable (a run of other sizes, length or world)."""
    from sae_harness.analysis.records import ResultsError, read_results, runs_of

    identity = run_identity(info)
    name = REFERENCES.get(identity["profile"])
    if name is None:
        return "", []
    try:
        records = runs_of(read_results(Path(results) / f"{name}.json"))
    except ResultsError:
        return "", []
    mine = identity["config"]
    same = [r for r in records if all(str(r.config.get(k)) == str(mine.get(k)) for k in COMPARABLE)]
    out, seeds = [], set()
    for arm in REFERENCE_ARMS:
        runs = [r for r in same if r.arm_across_worlds == arm]
        if runs:
            out.append((f"ref {arm}", combine_summaries([r.summary for r in runs])))
            seeds |= {r.seed for r in runs}
    return (f"ref: results/{name}.json, seeds {', '.join(map(str, sorted(seeds)))}" if out else ""), out


def eval_metric_ok(run):
    """True when at least one eval block holds results (not skipped, not errored)."""
    return any(isinstance(run.info.get(k), dict) and "skipped" not in run.info[k] and "error" not in run.info[k] for k in EVAL_BLOCKS)


def shown_metrics(summaries) -> list:
    """The headline metrics some summary has (ok, skipped or failed): a profile's panels leave out
    the other profiles' evals (the synth profile's ground truth on a language model, and back)."""
    shown = [m for m in METRICS if any((s.get(m.name) or {}).get("status", "missing") != "missing" for s in summaries)]
    return shown or list(METRICS)


def eval_block_status(info, key):
    status = block_status(info.get(key))
    return "not run" if status == "missing" else status


def missing_report(run):
    """One line per eval that did not give results, per metric absent from a run eval, and
    per problem with the training log."""
    lines = []
    for key in EVAL_BLOCKS:
        status = eval_block_status(run.info, key)
        if status == "not run" and EVAL_OF_BLOCK[key] not in evals_asked(run.info):  # another profile's eval, or left out by --evals
            continue
        if status != "ok":
            lines.append(f"{key.replace(' evaluation results', '')} eval: {status}")
    for metric in METRICS:
        status = entry(run.summary, metric.name)["status"]
        block = metric.sources[0][0]
        if status != "ok" and metric_asked(run.info, metric) and (block not in EVAL_BLOCKS or eval_block_status(run.info, block) == "ok"):
            lines.append(f"{metric.name}: {status}")
    if not run.log:
        lines.append("training_log.jsonl: missing or empty")
    if run.bad_log_lines:
        lines.append(f"training_log.jsonl: {run.bad_log_lines} unreadable line(s) skipped")
    return lines


def metrics_table(runs):
    metrics = shown_metrics([run.summary for run in runs])
    width = max([len(m.name) for m in metrics] + [10]) + 2
    directions = [m.direction + (f" ({m.note})" if m.note else "") for m in metrics]
    dwidth = max(len(d) for d in directions) + 2
    cols = [max(len(run.label), 17) + 2 for run in runs]
    lines = [f"{'metric':<{width}}{'direction':<{dwidth}}" + "".join(f"{run.label:>{c}}" for run, c in zip(runs, cols))]
    for metric, direction in zip(metrics, directions):
        cells = []
        for run, c in zip(runs, cols):
            e = entry(run.summary, metric.name)
            cell = fmt(e["value"]) if e["status"] == "ok" else e["status"].split(":")[0]
            cell += f"±{fmt(e['std'])}" if e["status"] == "ok" and e.get("std") else ""
            cells.append(f"{cell:>{c}}")
        lines.append(f"{metric.name:<{width}}{direction:<{dwidth}}" + "".join(cells))
    return "\n".join(lines)


def summaries_table(items, baseline_name=None):
    """Text table: mean ± std (n) per metric and item, then Δ vs the baseline with its 95% Welch
    interval, "within noise" where the interval includes 0."""
    width = max(len(m.name) for m in METRICS) + 2
    names = [name for name, _ in items]
    metrics = shown_metrics([summary for _, summary in items])
    cells = {m.name: [fmt_spread(summary.get(m.name) or {"status": "missing"}) for _, summary in items] for m in metrics}
    cols = [max([len(n), 24] + [len(row[i]) for row in cells.values()]) + 3 for i, n in enumerate(names)]  # a cell never runs into the next
    lines = [f"{'metric (direction)':<{width + 20}}" + "".join(f"{n:>{c}}" for n, c in zip(names, cols))]
    for metric in metrics:
        lines.append(f"{metric.name:<{width}}{metric.direction:<20}" + "".join(f"{cell:>{c}}" for cell, c in zip(cells[metric.name], cols)))
    base = dict(items).get(baseline_name)
    if base is not None and len(items) > 1:
        lines.append(f"Δ vs {baseline_name} (Welch's t 95% interval):")
        for name, summary in items:
            if name == baseline_name:
                continue
            for metric_name, cmp in welch(summary, base).items():
                lines.append(f"  {name:<28}{metric_name:<{width}}{fmt_delta(cmp)}")
    return "\n".join(lines)


def run_dirs_here(cwd):
    dirs = [p for p in Path(cwd).iterdir() if p.is_dir() and run_number(p.name) is not None]
    return sorted(dirs, key=lambda p: int(p.name.split("_")[1]))


def siblings(run_path, loaded):
    """Loadable run_* directories next to run_path (for baselines); unreadable ones are skipped."""
    out = []
    for path in run_dirs_here(Path(run_path).resolve().parent):
        key = path.resolve()
        if key not in loaded:
            try:
                loaded[key] = load_run(path)
            except RunError:
                loaded[key] = None
        if loaded[key] is not None:
            out.append(loaded[key])
    return out


def run_report(run) -> str:
    """What a run lacks, then its separation diagnostics per phase (printed under its figures)."""
    lines = [f"  missing: {line}" for line in missing_report(run)]
    if run.log:
        lines += ["  feature separation, per-phase means (thirds of training):", textwrap.indent(separation_table([run]), "    ")]
    return "\n".join(lines)


def comparison_report(group) -> str:
    """The runs of one profile side by side: metrics, the config fields that differ, separation."""
    differs, partial = config_differences([run.config for run in group])
    lines = [metrics_table(group), "config fields that differ: " + (", ".join(differs) if differs else "none")]
    lines += ["config fields only some runs record: " + ", ".join(partial)] if partial else []
    lines += ["feature separation, per-phase means (thirds of training):", separation_table([r for r in group if r.log])]
    return "\n".join(lines)


def bar_label(metric, entry: dict, baseline_entry: dict | None, pair: dict | None) -> str:
    """The text above a metric's bar: the value, its spread (± std over n seeds, or the eval's own
    SE for one seed), and against a baseline the difference, whether its 95% Welch interval holds 0,
    and the same for the paired interval where there is one. Each verdict on a line of its own."""
    ok = entry["status"] == "ok"
    text = fmt(entry["value"]) if ok else entry["status"].split(":")[0]
    err, kind = spread_of(entry) if ok else (None, None)
    if err:
        text += f"\n± {fmt(err)} " + (f"(n={entry['n']})" if kind == "std" else "(eval SE)")
    if ok and baseline_entry is not None:
        cmp = welch({metric.name: entry}, {metric.name: baseline_entry}).get(metric.name)
        if cmp is not None:
            text += f"\nΔ {cmp['delta']:+.3g}" + (
                "" if cmp["within_noise"] is None else ("\nwithin noise" if cmp["within_noise"] else "\n95% CI excl. 0")
            )
        if pair is not None and pair.get("lo") is not None and metric.direction != REFERENCE:
            text += "\npaired: " + ("within noise" if pair["within_noise"] else "excl. 0")
    return text


def results_items(path: Path):
    """(items [(arm, summary)], the baseline's summary or None, {arm: paired comparison}, the figure's
    title) of a sweep's results JSON; RunError when it is not one."""
    try:
        result = json.loads(Path(path).read_text())
        arms, baseline = result["arms"], result.get("baseline")
        items = [(arm, entry["summary"]) for arm, entry in arms.items()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise RunError(f"{path}: not a sweep's results JSON ({type(e).__name__}: {e})") from None
    title = f"{result.get('name', Path(path).stem)}: {result.get('profile') or 'unknown profile'}; mean ± std over seeds, dots per seed"
    if baseline:
        title += f"; Δ vs {baseline}, 'within noise' = 95% Welch interval includes 0; paired = paired by seed"
    paired = {arm: entry.get("paired_vs_baseline") for arm, entry in arms.items()}
    return items, arms[baseline]["summary"] if baseline in arms else None, paired, title


def by_profile(runs) -> list:
    """[(profile, its runs in run-number order)], profiles sorted: runs are compared within one only."""
    groups = {}
    for run in runs:
        groups.setdefault(run.profile, []).append(run)
    return [(profile, sorted(group, key=lambda r: (r.number, r.name))) for profile, group in sorted(groups.items())]


def paired_with_baseline(runs):
    """(the baseline among runs or None, {run name: its comparison with it paired by seed})."""
    baseline = next((r for r in runs if is_baseline(r.variant)), None)
    if baseline is None:
        return None, {}
    return baseline, {r.name: compare(per_seed_summaries(r.info), per_seed_summaries(baseline.info)) for r in runs if r is not baseline}


def phase_mean_labels(log, keys) -> list[str]:
    """Per third of training, the mean of each key as a figure's box shows it ("mean 0.05\np95 0.13")."""
    per_key = [phase_means(log, k) for k in keys]
    name = lambda k: ("p95" if k.endswith("p95") else "mean") if len(keys) > 1 else "mean"
    return ["\n".join(f"{name(k)} {fmt(m[j])}" for k, m in zip(keys, per_key)) for j in range(len(PHASES))]


def metric_title(metric) -> str:
    """A metric's name and, on a second line, its direction (or the note of a reference metric)."""
    if metric.direction == REFERENCE:
        return f"{metric.name}\n(reference{', ' + metric.note if metric.note else ''})"
    return f"{metric.name}\n({metric.direction})"
