"""The mechanism over many SAEs: for the true parent / child latent pairs of a synth world against
all other pairs (sae_harness/run/synth.py logs them during training), their co-firing, decoder |cos|
and share of the penalty, per third of training, for every (world, seed) of a sweep's arms.

- per run: the mean of each logged quantity over each third of training (report.phase_means);
- per arm: mean ± std of those over its runs (worlds x seeds);
- each arm against plain TopK at the same (world, seed): the paired differences averaged within
  each world, a t interval over the world means (stats.interval_over_worlds).

    python -m sae_harness.analysis.mechanism --results results/synth_worlds_narrow.json \\
        --arms none,progressive --out results/synth_worlds_narrow_mechanism

reads the runs' training logs (their run_dir in the results JSON); writes <out>.json, <out>.md and
<out>.png (a panel per quantity: each arm's mean over its runs against training progress, the band
its runs' spread).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from sae_harness.analysis.report import MECHANISM, PHASES, phase_means, progress, read_log, series
from sae_harness.analysis.stats import interval_over_worlds, mean_std
from sae_harness.run.schema import arm_over_worlds, is_baseline

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
    base = next((arm for arm in per_run if is_baseline(arm)), None)
    out = {}
    for arm, units in per_run.items():
        entry = {}
        for key, label in QUANTITIES:
            for j, phase in enumerate(phases):
                values = [m[key][j] for m in units.values() if m[key][j] is not None]
                mean, std = mean_std(values)
                cell = dict(label=label, mean=mean, std=std, n=len(values))
                if base and arm != base:
                    diffs = {}
                    for (w, s), m in sorted(units.items()):
                        other = per_run[base].get((w, s), {}).get(key, [None] * len(phases))[j]
                        if m[key][j] is not None and other is not None:
                            diffs.setdefault(w, []).append(m[key][j] - other)
                    cell["vs_baseline"] = interval_over_worlds(diffs)
                entry[f"{key}/{phase}"] = cell
        out[arm] = entry
    return dict(baseline=base, phases=phases, quantities=[k for k, _ in QUANTITIES], method=__doc__.split("\n\n")[1].strip(), arms=out)


def fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3g}"


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
                    cell += f"; Δ {v['delta']:+.3g} [{v['lo']:+.3g}, {v['hi']:+.3g}]" + (" within noise" if v["within_noise"] else "")
                cells.append(cell)
            label = result["arms"][arms[0]][f"{key}/{phase}"]["label"]
            lines.append(f"| {key} ({label}), {phase} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(by_arm: dict, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(MECHANISM), 1, figsize=(9, 3.2 * len(MECHANISM)), sharex=True)
    for ax, (hier, other, label) in zip(axes, MECHANISM):
        for i, (arm, runs) in enumerate(by_arm.items()):
            color = "black" if is_baseline(arm) else f"C{i % 10}"
            for key, style in ((hier, "-"), (other, "--")):
                if not key:
                    continue
                curves = [(progress(log), series(log, key)) for _, _, log in runs]
                p = curves[0][0]  # the runs of a sweep log at the same steps
                rows = [ys for _, ys in curves if len(ys) == len(p)]
                mean = [_nanmean(col) for col in zip(*rows)]
                lo = [min((v for v in col if not math.isnan(v)), default=math.nan) for col in zip(*rows)]
                hi = [max((v for v in col if not math.isnan(v)), default=math.nan) for col in zip(*rows)]
                which = "parent/child pairs" if key == hier else "other pairs"
                ax.plot(p, mean, style, color=color, lw=1.6, label=f"{arm}: {which} (mean of {len(rows)} runs)")
                ax.fill_between(p, lo, hi, color=color, alpha=0.12 if key == hier else 0.06, lw=0)
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    axes[-1].set_xlabel("training progress p (fraction of steps)")
    fig.suptitle(f"{title}\nlines: mean over worlds x seeds; bands: min..max over the runs", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _nanmean(values) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", required=True, help="results JSON of a sweep over worlds on a synth profile")
    parser.add_argument("--arms", default="none,progressive", help="comma list of arm names without the world (none first)")
    parser.add_argument("--out", required=True, help="writes <out>.json, <out>.md and <out>.png")
    args = parser.parse_args(argv)
    try:
        path = Path(args.results)
        result = json.loads(path.read_text())
        arms = [a for a in args.arms.split(",") if a]
        by_arm = runs_of(result, arms, path.resolve().parent.parent)
        missing = [a for a in arms if a not in by_arm]
        if missing:
            raise ValueError(f"no training logs for arm {missing[0]!r} (its runs' directories are under the sweep's runs_dir)")
        by_arm = {a: by_arm[a] for a in arms}
        if not any(row.get(MECHANISM[0][0]) is not None for runs in by_arm.values() for _, _, log in runs for row in log):
            raise ValueError("the training logs carry no mechanism: not a synth profile")
    except (OSError, ValueError, KeyError) as e:
        print(f"mechanism: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    read = reading(by_arm) | dict(results_file=args.results, kind="mechanism")
    out.with_suffix(".json").write_text(json.dumps(read, indent=1))
    out.with_suffix(".md").write_text(markdown(read) + "\n")
    figure(
        by_arm, out.with_suffix(".png"), f"{result.get('name')} ({result.get('profile')}): where the term acts, against the true hierarchy"
    )
    print(markdown(read))
    print(f"wrote {out.with_suffix('.json')}, .md and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
