"""Figures and a text table for SAE runs.

    python plot.py run_1            # figures inside run_1/
    python plot.py run_1 run_2 ...  # the same for each, plus comparison_<profile>.png here
    python plot.py                  # every run_* directory here
    python plot.py results/x.json   # a sweep's comparison figure, results/x.png (sweep.py runs this);
                                    # a sweep over worlds: each arm's difference from plain TopK
                                    # with its interval over worlds, a dot per world

Per run (written into the run directory):
    losses.png      loss terms over training, ortho share of the loss on a twin axis
    schedule.png    the logged orthogonality weight λ2 and co-firing threshold against progress
    separation.png  training-batch separation diagnostics (what the term minimises) against
                    progress, early/middle/late shaded
    mechanism.png   synth profile: co-firing, decoder |cos| and share of the penalty of the true
                    parent/child latent pairs against all other pairs, over training
    metrics.png     headline eval metrics beside the baseline run of the same profile: mean over
                    seeds, error bars ± std, dots per seed; "within noise" where the 95% Welch
                    interval of the difference from the baseline includes 0
A run with several seeds (--seeds) has its training curves in run_i/seed_<s>/; its own figures
show the metrics, and comparisons draw its first seed's curves.
Runs are compared only within one profile: comparison_<profile>.png per profile with two or
more runs. A run directory that is missing or unreadable gets one line on stderr and exit
code 2; what exists for the other runs is still plotted.
"""

import json
import math
import sys
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402

from sae_harness.analysis.formatting import spread_of  # noqa: E402
from sae_harness.analysis.matched import arm_label as matched_label  # noqa: E402
from sae_harness.analysis.report import (  # noqa: E402
    MECHANISM,
    PHASES,
    RunError,
    bar_label,
    by_profile,
    comparison_report,
    eval_metric_ok,
    find_baseline,
    has_data,
    load_run,
    metric_title,
    paired_with_baseline,
    phase_mean_labels,
    progress,
    references,
    results_items,
    run_dirs_here,
    run_report,
    series,
    shown_metrics,
    siblings,
)
from sae_harness.evals.registry import REFERENCE  # noqa: E402
from sae_harness.run.schema import METRICS, config_differences, is_baseline  # noqa: E402
from sae_harness.run.schema import entry as summary_entry  # noqa: E402

DIRECTIONS = {m.name: m.direction for m in METRICS}

PHASE_COLORS = ("#dbe9f6", "#fdf0d5", "#e3f1df")


def log_scale_if_wide(ax, *value_lists, axis="y"):
    """Log scale when the positive values span more than ~1.5 decades; True if set."""
    positive = [v for values in value_lists for v in values if not math.isnan(v) and v > 0]
    if len(positive) < 2 or max(positive) / min(positive) < 30:
        return False
    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    return True


def positive_only(values):
    return [v if v > 0 else math.nan for v in values]


def shade_phases(ax, label=True, long=True):
    """Shade the thirds of training; label them above the axes when label is True."""
    transform = blended_transform_factory(ax.transData, ax.transAxes)
    for (name, lo, hi), color in zip(PHASES, PHASE_COLORS):
        ax.axvspan(lo, hi, color=color, zorder=0, lw=0)
        if label:
            text = f"{name} (p {lo:.2f}-{hi:.2f})" if long else name
            ax.text(
                (lo + hi) / 2, 1.01, text, transform=transform, ha="center", va="bottom", fontsize=9, fontweight="bold", color="#444444"
            )
    ax.set_xlim(0, 1)


def headroom(ax, fraction=0.3):
    """Raise the top of the y axis so text placed near the top does not cover data."""
    lo, hi = ax.get_ylim()
    if ax.get_yscale() == "log":
        ax.set_ylim(lo, hi * (hi / lo) ** fraction)
    else:
        ax.set_ylim(lo, hi + (hi - lo) * fraction)


def note_missing(ax, text):
    ax.text(0.5, 0.5, "\n".join(textwrap.wrap(text, 40)), transform=ax.transAxes, ha="center", va="center", fontsize=10, color="#777777")


def save(fig, path):
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


# ---------------------------------------------------------------- per-run figures


def plot_losses(run):
    log = run.log
    steps = series(log, "step")
    fig, ax = plt.subplots(figsize=(9, 5.2))
    terms = list(dict.fromkeys(k for row in log for k in row if k.endswith("_loss")))  # every term the trainer logged, in its order
    colors = [f"C{i}" for i in range(10) if i != 1]  # C1: the ortho share's axis
    curves = [(k, f"{k.removesuffix('_loss')} (weight x value)", colors[i % 9], "-") for i, k in enumerate(terms)]
    curves += [("loss", "total loss", "black", "--")]
    plotted, absent = [], []
    for key, label, color, style in curves:
        values = series(log, key)
        if has_data(values) and any(v != 0 for v in values if not math.isnan(v)):
            ax.plot(steps, values, style, color=color, label=label, lw=1.6)
            plotted.append(values)
        else:
            absent.append(f"{label}: {'0 throughout' if has_data(values) else 'not logged'}")
    if log_scale_if_wide(ax, *plotted):
        for line in ax.get_lines():
            line.set_ydata(positive_only(list(line.get_ydata())))
        ax.set_ylabel("loss (log scale)")
    else:
        ax.set_ylabel("loss")
    ax.set_xlabel("training step")
    ax.grid(alpha=0.3)
    share = series(log, "ortho_share", scale=100.0)
    handles, labels = ax.get_legend_handles_labels()
    if has_data(share):
        twin = ax.twinx()
        (h,) = twin.plot(steps, share, ":", color="C1", lw=1.8, label="ortho share (right axis)")
        twin.set_ylabel("ortho share of total loss (%)", color="C1")
        twin.tick_params(axis="y", colors="C1")
        twin.set_ylim(bottom=0)
        handles.append(h)
        labels.append(h.get_label())
    else:
        absent.append("ortho share: not logged")
    for text in absent:
        handles.append(plt.Line2D([], [], color="none"))
        labels.append(text)
    ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, fontsize=9, frameon=False)
    ax.set_title(f"{run.label}, {run.profile}: loss terms over training")
    return save(fig, run.path / "losses.png")


def plot_schedule(run):
    log = run.log
    p = progress(run.log)
    lam, thr = series(log, "ortho_lambda"), series(log, "threshold")
    fig, ax = plt.subplots(figsize=(8, 4.8))
    handles = []
    if has_data(lam):
        handles += ax.plot(p, lam, "-", color="C3", lw=2, label="λ2(p), left axis")
    else:
        note_missing(ax, "ortho_lambda not logged")
    ax.set_xlabel("training progress p (fraction of steps)")
    ax.set_ylabel("orthogonality weight λ2", color="C3")
    ax.tick_params(axis="y", colors="C3")
    ax.set_ylim(bottom=0)
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    twin = ax.twinx()
    if has_data(thr):
        handles += twin.plot(p, thr, "--", color="C0", lw=2, label="threshold thr(p), right axis")
        twin.set_ylim(bottom=0)
    else:
        twin.text(0.5, 0.4, "threshold not logged", transform=twin.transAxes, ha="center", color="#777777")
    twin.set_ylabel("co-firing threshold (normalized co-firing)", color="C0")
    twin.tick_params(axis="y", colors="C0")
    if has_data(lam) and all(v == 0 for v in lam if not math.isnan(v)):
        ax.text(0.5, 0.55, "λ2 = 0 throughout: no orthogonality penalty", transform=ax.transAxes, ha="center", color="C3")
    headroom(ax)
    headroom(twin)
    if handles:
        ax.legend(handles=handles, loc="upper right", fontsize=9, framealpha=0.9)
    ax.set_title(f"{run.label}, {run.profile}: orthogonality schedule (as logged)")
    return save(fig, run.path / "schedule.png")


def separation_panels(axes, runs, colors, single):
    """Draw the three separation panels for one run (single) or several, one color each."""
    ax_cos, ax_frac, ax_pairs = axes
    for i, ax in enumerate(axes):
        shade_phases(ax, label=i == 0 or not single, long=single)
        ax.grid(alpha=0.3)
    pair_values, no_log = [], []
    for run, color in zip(runs, colors):
        if not run.log:
            no_log.append(plt.Line2D([], [], color=color, lw=6, alpha=0.4, label=f"{run.label}: no training log"))
            continue
        p = progress(run.log)
        tag = "" if single else f"{run.label}: "
        cos_mean, cos_p95 = series(run.log, "sep_cos_mean"), series(run.log, "sep_cos_p95")
        ax_cos.plot(p, cos_mean, "-", color=color, lw=1.8, label=f"{tag}mean")
        ax_cos.plot(p, cos_p95, "--", color="C1" if single else color, lw=1.5, label=f"{tag}95th percentile")
        if not single:
            ax_cos.lines[-1].set_label("_nolegend_")
        ax_frac.plot(p, series(run.log, "sep_frac_above_thr"), "-", color=color, lw=1.8, label=run.label)
        pairs = series(run.log, "sep_pairs_penalized")
        pair_values.append(pairs)
        ax_pairs.plot(p, pairs, "-", color=color, lw=1.8, label=run.label)
    if log_scale_if_wide(ax_pairs, *pair_values):
        for line in ax_pairs.get_lines():
            line.set_ydata(positive_only(list(line.get_ydata())))
    ax_cos.set_ylabel("|cos| between decoder\ndirections of co-firing pairs")
    ax_cos.set_ylim(bottom=0)
    ax_frac.set_ylabel("fraction of co-firing\npairs above threshold")
    ax_frac.set_ylim(bottom=0)
    ax_pairs.set_ylabel("penalized pairs\n(count, c_ij > 0)")
    for ax in axes:
        headroom(ax)
    if single and any(has_data(series(runs[0].log, k)) for k in ("sep_cos_mean", "sep_cos_p95")):
        ax_cos.legend(loc="best", fontsize=8, framealpha=0.9)
    else:
        handles = [h for h in ax_frac.get_lines()] + no_log
        ax_frac.legend(handles=handles, loc="best", fontsize=8, framealpha=0.9)
    for ax, keys in ((ax_cos, ("sep_cos_mean", "sep_cos_p95")), (ax_frac, ("sep_frac_above_thr",)), (ax_pairs, ("sep_pairs_penalized",))):
        if not any(has_data(series(run.log, k)) for run in runs for k in keys):
            note_missing(ax, f"{', '.join(keys)} not logged")
        elif single:
            annotate_phase_means(ax, runs[0].log, keys)


def annotate_phase_means(ax, log, keys):
    transform = blended_transform_factory(ax.transData, ax.transAxes)
    box = dict(boxstyle="round,pad=0.2", fc="white", ec="none", alpha=0.8)
    for (_, lo, hi), text in zip(PHASES, phase_mean_labels(log, keys)):
        ax.text((lo + hi) / 2, 0.96, text, transform=transform, ha="center", va="top", fontsize=8, color="#333333", bbox=box)


def has_mechanism(run) -> bool:
    return has_data(series(run.log, "mech_hier_cofire")) if run.log else False


def mechanism_panels(axes, runs, colors, single):
    """The synth profile's mechanism: for the latent pairs of true parent -> child edges (solid) and
    all other co-firing pairs (dashed), their co-firing, their decoder |cos|, and the share of the
    penalty P the hierarchy pairs carry (for plain TopK: the share the term would carry)."""
    for ax, (hier, other, label) in zip(axes, MECHANISM):
        shade_phases(ax, label=ax is axes[0], long=single)
        ax.grid(alpha=0.3)
        for run, color in zip(runs, colors):
            if not has_mechanism(run):
                continue
            p, tag = progress(run.log), "" if single else f"{run.label}: "
            ax.plot(p, series(run.log, hier), "-", color=color, lw=1.8, label=f"{tag}parent/child pairs")
            if other:
                ax.plot(p, series(run.log, other), "--", color=color, lw=1.3, label=f"{tag}other pairs")
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        headroom(ax)
    axes[0].legend(loc="best", fontsize=8, framealpha=0.9)


def plot_mechanism(run):
    fig, axes = plt.subplots(3, 1, figsize=(9, 9.5), sharex=True)
    mechanism_panels(axes, [run], ["C0"], single=True)
    axes[-1].set_xlabel("training progress p (fraction of steps)")
    fig.suptitle(
        f"{run.label}, {run.profile}: where the term acts, against the true hierarchy\n(latents matched to features by decoder direction)"
    )
    fig.tight_layout()
    return save(fig, run.path / "mechanism.png")


def plot_separation(run):
    fig, axes = plt.subplots(3, 1, figsize=(9, 9.5), sharex=True)
    separation_panels(axes, [run], ["C0"], single=True)
    axes[-1].set_xlabel("training progress p (fraction of steps); boxes: phase means")
    fig.suptitle(f"{run.label}, {run.profile}: separation on training batches (a diagnostic: the term minimises it)")
    fig.tight_layout()
    return save(fig, run.path / "separation.png")


def metric_panels(axes, items, colors, baseline=None, paired=None):
    """One small bar chart per headline metric the items have (shown_metrics), one bar per (name,
    summary) item: the mean over seeds, error bar ± std (sample, n - 1), a dot per seed; for one
    seed, ± the eval's own standard error where it reports one ("eval SE"). Against the
    baseline summary (None for none), each other bar says Δ and whether its 95% Welch interval
    includes 0 ("within noise"), and where paired ({name: {metric: paired interval}}) holds the
    item's comparison paired by seed, whether that interval does."""
    paired = paired or {}
    for ax, metric in zip(axes, shown_metrics([summary for _, summary in items])):
        values, notes, tops = [], [], [0.0]
        for i, ((name, summary), color) in enumerate(zip(items, colors)):
            entry = summary_entry(summary, metric.name)
            ok = entry["status"] == "ok"
            value = entry["value"] if ok else 0.0
            err, _ = spread_of(entry) if ok else (None, None)  # one seed: the eval's own SE
            values.append(value)
            if not ok:
                notes.append(f"{name}: {entry['status']}")
            ax.bar(i, value, color=color, width=0.6, yerr=err or None, capsize=4, ecolor="#333333")
            seeds = entry.get("values") or []
            if len(seeds) > 1:
                ax.plot([i] * len(seeds), seeds, "o", color="black", ms=3, alpha=0.6, zorder=3)
            tops.append(max([value + (err or 0)] + seeds))
            against = summary_entry(baseline, metric.name) if baseline is not None and summary is not baseline else None
            text = bar_label(metric, entry, against, (paired.get(name) or {}).get(metric.name))
            ax.annotate(
                text,
                (i, max(value + (err or 0), max(seeds, default=0))),
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_xticks(list(range(len(items))))
        ax.set_xticklabels([name for name, _ in items], rotation=30 if len(items) > 3 else 0, fontsize=9)
        ax.set_title(metric_title(metric), fontsize=10)
        ax.set_ylabel(metric.unit, fontsize=9)
        top = max(tops)
        room = 1.6 + 0.15 * min(len(notes), 4)  # keep the labels and status notes clear of the bars
        ax.set_ylim(0, top * room if top > 0 else 1.0)
        ax.grid(axis="y", alpha=0.3)
        if notes:
            text = "\n".join(textwrap.fill(textwrap.shorten(n, 100), 52) for n in notes)
            ax.text(0.02, 0.96, text, transform=ax.transAxes, va="top", fontsize=7, color="#aa3333")


def metric_grid(items, colors, baseline, paired, width: float, row_height: float):
    """A figure of metric_panels, three a row, the spare axes hidden."""
    n_panels = len(shown_metrics([summary for _, summary in items]))
    fig, axes = plt.subplots(math.ceil(n_panels / 3), 3, figsize=(width, row_height * math.ceil(n_panels / 3)))
    axes = list(axes.flat)
    metric_panels(axes, items, colors, baseline, paired)
    for ax in axes[n_panels:]:
        ax.axis("off")
    return fig


def plot_metrics(run, baseline):
    """The run's headline metrics beside its baseline run here (grey) and the committed reference runs
    of its profile (plain TopK and the default arm, mean ± std over their seeds; report.references),
    so a single run is read against something. Δ labels are against the baseline here, else the
    committed plain TopK."""
    what, refs = references(run.info)
    items = refs + ([(baseline.name, baseline.summary)] if baseline else []) + [(run.name, run.summary)]
    colors = ["#c7c7c7", "#a6bddb"][: len(refs)] + (["#999999"] if baseline else []) + ["C0"]
    against = baseline.summary if baseline else (refs[0][1] if refs and refs[0][0] == "ref none" else None)
    fig = metric_grid(items, colors, against, None, 12, 3.3)
    if baseline:
        title = f"dark grey: baseline {baseline.label}"
    elif is_baseline(run.variant):
        title = "this run is a baseline (variant none)"
    else:
        title = f"no baseline (variant none) run of {run.profile} here"
    beside = (
        f"\nlight: committed reference runs of this profile ({what}); Δ against " + ("the baseline" if baseline else "ref none")
        if refs
        else "; no committed reference run of these sizes"
    )
    fig.suptitle(f"{run.label}, {run.profile}: headline metrics; {title}{beside}", fontsize=9)
    fig.tight_layout()
    return save(fig, run.path / "metrics.png")


def plot_run(run, candidates):
    written = []
    if run.log and len(run.seeds) <= 1:  # several seeds: the curves are in each seed_<s>/
        written += [plot_losses(run), plot_schedule(run), plot_separation(run)]
        written += [plot_mechanism(run)] if has_mechanism(run) else []
    if eval_metric_ok(run):
        written.append(plot_metrics(run, find_baseline(run, candidates)))
    print(f"{run.path}: wrote {', '.join(p.name for p in written) or 'nothing'}")
    print(run_report(run))
    return written


# ---------------------------------------------------------------- comparison within a profile


def plot_comparison(profile, runs, out_dir):
    n_panels = len(shown_metrics([r.summary for r in runs]))
    mech = 1 if any(has_mechanism(r) for r in runs) else 0
    rows = 1 + mech + math.ceil(n_panels / 3)
    fig = plt.figure(figsize=(15, 3.6 * rows + 0.6))
    grid = fig.add_gridspec(rows, 3, height_ratios=[1.25] * (1 + mech) + [1] * (rows - 1 - mech))
    sep_axes = [fig.add_subplot(grid[0, j]) for j in range(3)]
    colors = [f"C{i % 10}" for i in range(len(runs))]
    separation_panels(sep_axes, runs, colors, single=False)
    if mech:
        mech_axes = [fig.add_subplot(grid[1, j]) for j in range(3)]
        mechanism_panels(mech_axes, runs, colors, single=False)
        for ax, title in zip(mech_axes, ("true parent/child latent pairs (solid) vs other pairs (dashed)", "", "")):
            ax.set_title(title, fontsize=10, pad=18)
            ax.set_xlabel("training progress p (fraction of steps)")
    for ax in sep_axes:
        ax.set_xlabel("training progress p (fraction of steps)")
    titles = (
        "training batches (diagnostic: what the term minimises)\nco-firing decoder |cos|: mean (solid), p95 (dashed)",
        "co-firing pairs above threshold (colors: runs)",
        "pairs penalized (c_ij > 0)",
    )
    for ax, title in zip(sep_axes, titles):
        ax.set_title(title, fontsize=10, pad=18)
    metric_axes = [fig.add_subplot(grid[1 + mech + i // 3, i % 3]) for i in range(n_panels)]
    baseline, paired = paired_with_baseline(runs)
    metric_panels(metric_axes, [(r.name, r.summary) for r in runs], colors, baseline.summary if baseline else None, paired)
    differs = [k for k in config_differences([r.config for r in runs])[0] if k != "variant"]
    subtitle = (
        f"config differs in: {', '.join(differs[:8])}{' ...' if len(differs) > 8 else ''}" if differs else "same config apart from variant"
    )
    fig.suptitle(
        f"Profile {profile}: {', '.join(r.label for r in runs)}\n(runs of other profiles are not comparable and are not shown; {subtitle})",
        fontsize=12,
    )
    fig.tight_layout()
    return save(fig, Path(out_dir) / f"comparison_{profile}.png")


def plot_summaries(items, baseline, path, title, paired=None):
    """The comparison figure of a sweep: one panel per headline metric, one bar per (name, summary)
    item (mean, ± std, a dot per seed, Δ vs baseline and whether it is within noise, by Welch's
    interval and, where paired holds it, by the paired one)."""
    colors = ["#999999" if summary is baseline else f"C{i % 10}" for i, (_, summary) in enumerate(items)]
    fig = metric_grid(items, colors, baseline, paired, max(12, 1.6 * 3 * len(items)), 3.6)
    fig.suptitle(textwrap.fill(title, 140), fontsize=11)
    fig.tight_layout()
    return save(fig, Path(path))


def compare(runs, out_dir):
    for profile, group in by_profile(runs):
        if len(group) < 2:
            print(f"profile {profile}: only {group[0].name}; no comparison figure")
            continue
        path = plot_comparison(profile, group, out_dir)
        print(f"\nprofile {profile}: wrote {path}")
        print(comparison_report(group))


def plot_worlds(over: dict, path: Path, title: str) -> Path:
    """A sweep over worlds (its over_worlds): a panel per metric, a row per comparison (an arm
    against plain TopK, or a schedule contrast), its difference with the 95% interval over world
    means, a dot per world's mean; colored where the interval excludes 0."""
    names = list(over)
    metrics = [m for m in METRICS if m.direction != REFERENCE and any(m.name in over[n] for n in names)]
    cols = 3
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 0.9 + 0.42 * len(names) * rows), squeeze=False, sharey=True)
    for ax, metric in zip(axes.flat, metrics):
        for row, name in enumerate(names):
            c = over[name].get(metric.name)
            if c is None:
                continue
            color = "#777777" if c.get("within_noise") in (True, None) else "C3"
            if c.get("lo") is not None:
                ax.plot([c["lo"], c["hi"]], [row, row], color=color, lw=2)
            ax.plot(c["delta"], row, "o", color=color, ms=6)
            worlds = list((c.get("world_means") or {}).values())
            ax.plot(worlds, [row + 0.22] * len(worlds), ".", color="black", ms=4, alpha=0.6)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_title(f"{metric.name} ({metric.direction})", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    for ax in axes.flat[len(metrics) :]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.invert_yaxis()
    fig.suptitle(textwrap.fill(title, 150), fontsize=10)
    fig.tight_layout()
    return save(fig, path)


# ---------------------------------------------------------------- the readings of several sweeps (study.py frontier, matched, mechanism)

MARKERS = "osD^vP*X"


def nanmean(values) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def plot_frontier(result: dict, path: Path, title: str) -> Path:
    """A frontier reading (study.py frontier): a panel per y against x, a point per (world, seed) and arm, plain TopK's curves as lines."""
    x, ys = result["x"], result["ys"]
    worlds = sorted({unit.split("/")[0] for units in result["points"].values() for unit in units})
    fig, axes = plt.subplots(1, len(ys), figsize=(5.6 * len(ys), 5.4), squeeze=False)
    for ax, y in zip(axes[0], ys):
        for i, xy in enumerate(result["curves"][y].values()):
            label = "plain TopK over training length (a line per world and seed)" if i == 0 else None
            ax.plot(*zip(*xy), "-", color="#999999", lw=0.8, alpha=0.7, label=label)
        for j, (name, units) in enumerate(result["points"].items()):
            color = "black" if name == result["baseline"] else f"C{j % 10}"
            for k, world in enumerate(worlds):
                pts = [(v[x], v[y]) for unit, v in units.items() if unit.split("/")[0] == world]
                if pts:
                    ax.scatter(*zip(*pts), color=color, marker=MARKERS[k % len(MARKERS)], s=16, alpha=0.8, label=name if k == 0 else None)
        ax.set_xlabel(f"{x} ({DIRECTIONS[x]})")
        ax.set_ylabel(f"{y} ({DIRECTIONS[y]})")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
    markers = ", ".join(f"{MARKERS[k % len(MARKERS)]} world {w}" for k, w in enumerate(worlds))
    fig.suptitle(f"{title}: a point per (world, seed) and arm ({markers}); the differences and intervals are in the .md table", fontsize=10)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_matched(result: dict, path: Path) -> Path:
    """A matched reading (study.py matched): plain TopK's curve per seed and every arm's seeds."""
    fig, ax = plt.subplots(figsize=(8, 5.5))
    seeds = sorted({s for by_seed in result["curve"].values() for s in by_seed})
    for i, seed in enumerate(seeds):
        xy = sorted(by_seed[seed] for by_seed in result["curve"].values() if seed in by_seed)
        ax.plot(
            *zip(*xy),
            "-o",
            color="#999999",
            lw=1,
            ms=3,
            alpha=0.7,
            label="plain TopK over training length (one line per seed)" if i == 0 else None,
        )
    for j, (arm, entry) in enumerate(result["arms"].items()):
        rows = entry["points"].values()
        outside = f"; {len(entry['outside_curve'])} seeds beyond the curve (hollow)" if entry["outside_curve"] else ""
        ax.scatter([r["x"] for r in rows], [r["y"] for r in rows], color=f"C{j}", s=18, label=matched_label(arm, entry["paired"]) + outside)
        beyond = [entry["points"][s] for s in entry["outside_curve"]]
        ax.scatter([r["x"] for r in beyond], [r["y"] for r in beyond], s=40, facecolors="white", edgecolors=f"C{j}", zorder=3)
    ax.set_xlabel(f"{result['x']} (higher is better)")
    ax.set_ylabel(f"{result['y']} (lower is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title("each arm against plain TopK's own curve (matched reconstruction)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_mechanism_runs(by_arm: dict, path: Path, title: str) -> Path:
    """The synth mechanism over a sweep's runs (study.py mechanism): each quantity over training, parent/child pairs against the others, mean and range per arm."""
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
                mean = [nanmean(col) for col in zip(*rows)]
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


def plot_results(path: Path) -> Path:
    """A sweep's results JSON (sweep.py) as its comparison figure, beside it as <name>.png."""
    items, baseline, paired, title = results_items(path)
    over = json.loads(path.read_text()).get("over_worlds")
    if over:
        title = title.split(";")[0] + (
            "; Δ vs plain TopK at the same world and seed (A - B: schedule contrasts), 95% t interval over world means, "
            "a dot per world; red = interval excludes 0"
        )
        return plot_worlds(over, path.with_suffix(".png"), title)
    return plot_summaries(items, baseline, path.with_suffix(".png"), title, paired)


def main(argv):
    paths = [Path(a) for a in argv] or run_dirs_here(Path.cwd())
    if not paths:
        print(f"plot.py: no run_* directories in {Path.cwd()}", file=sys.stderr)
        return 2
    runs, failed = [], False
    for path in paths:
        try:
            if path.suffix == ".json":
                print(f"plot.py: wrote {plot_results(path)}")
            else:
                runs.append(load_run(path))
        except RunError as e:
            print(f"plot.py: {e}", file=sys.stderr)
            failed = True
    loaded = {run.path.resolve(): run for run in runs}
    for run in runs:
        plot_run(run, siblings(run.path, loaded))
    if len(runs) > 1:
        compare(runs, Path.cwd())
    return 2 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except BrokenPipeError:  # output piped into head and the like
        sys.stderr.close()
        sys.exit(0)
