"""The mechanism over many SAEs: for the true parent / child latent pairs of a synth world against
all other pairs (sae_harness/run/synth.py logs them during training), their co-firing, decoder |cos|
and share of the penalty, per third of training, for every (world, seed) of a sweep's arms.

- per run: the mean of each logged quantity over each third of training (report.phase_means);
- per arm: mean ± std of those over its runs (worlds x seeds);
- each arm against plain TopK at the same (world, seed): the paired differences averaged within
  each world, a t interval over the world means (stats.interval_over_worlds).

    python study.py mechanism --results results/synth_worlds_narrow.json \\
        --arms none,progressive --out results/synth_worlds_narrow_mechanism

reads the runs' training logs (their run_dir in the results JSON); writes <out>.json, <out>.md and
<out>.png (a panel per quantity: each arm's mean over its runs against training progress, the band
its runs' spread).
"""

from __future__ import annotations

import math
from pathlib import Path

from sae_harness.analysis.compare import baseline_arm, differences, interval
from sae_harness.analysis.formatting import fmt, fmt_contrast
from sae_harness.analysis.report import MECHANISM, PHASES, phase_means, read_log
from sae_harness.analysis.stats import mean_std
from sae_harness.run.schema import arm_over_worlds

QUANTITIES = tuple((key, label.replace("\n", " ")) for hier, other, label in MECHANISM for key in (hier, other) if key)


def runs_of(result: dict, arms: list[str], root: Path) -> dict:
    """{arm name without its world: [(world, seed, training log rows)]} for the named arms."""
    out = {}
    for run in result["runs"]:
        if (name := arm_over_worlds(run)) in arms:
            log, _ = read_log(root / run["run_dir"] / "training_log.jsonl")
            if log:
                out.setdefault(name, []).append((run["world"], run["seed"], log))
    return out


def reading(by_arm: dict) -> dict:
    phases = [name for name, _, _ in PHASES]
    per_run = {arm: {(w, s): {key: phase_means(log, key) for key, _ in QUANTITIES} for w, s, log in runs} for arm, runs in by_arm.items()}
    base = baseline_arm({arm: (arm, {}) for arm in per_run})
    out = {}
    for arm, units in per_run.items():
        entry = {}
        for key, label in QUANTITIES:
            for j, phase in enumerate(phases):
                values = [m[key][j] for m in units.values() if m[key][j] is not None]
                mean, std = mean_std(values)
                cell = dict(label=label, mean=mean, std=std, n=len(values))
                if base and arm != base:  # paired by (world, seed), worlds the random factor
                    against = {unit: m[key][j] for unit, m in per_run[base].items() if m[key][j] is not None}
                    cell["vs_baseline"] = interval(
                        differences(against, {unit: m[key][j] for unit, m in units.items() if m[key][j] is not None}), "world"
                    )
                entry[f"{key}/{phase}"] = cell
        out[arm] = entry
    return dict(baseline=base, phases=phases, quantities=[k for k, _ in QUANTITIES], method=__doc__.split("\n\n")[1].strip(), arms=out)


def markdown(result: dict) -> str:
    """A row per quantity and third of training, a column per arm: mean ± std (n runs), and for an
    arm other than plain TopK its difference at the same (world, seed) with the interval over worlds."""
    arms = list(result["arms"])
    lines = ["| quantity, third of training | " + " | ".join(f"`{a}`" for a in arms) + " |", "|---" * (len(arms) + 1) + "|"]
    for key in result["quantities"]:
        for phase in result["phases"]:
            cells = []
            for arm in arms:
                c = result["arms"][arm][f"{key}/{phase}"]
                cell = f"{fmt(c['mean'])} ± {fmt(c['std'])} (n={c['n']})"
                if (v := c.get("vs_baseline")) and v.get("lo") is not None:
                    cell += f"; Δ {fmt_contrast(v)}"
                cells.append(cell)
            label = result["arms"][arms[0]][f"{key}/{phase}"]["label"]
            lines.append(f"| {key} ({label}), {phase} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _nanmean(values) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan
