"""notes.txt entries: one "## Run i: ..." section per run, built only from what final_info holds,
written atomically and replaced (not duplicated) when the same run directory runs again."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

from sae_harness.analysis.compare import baseline_run, compare, welch
from sae_harness.analysis.formatting import fmt, fmt_delta, fmt_spread
from sae_harness.evals.registry import REFERENCE
from sae_harness.run.rundir import write_atomic
from sae_harness.run.schema import (
    EVAL_BLOCKS,
    EVAL_OF_BLOCK,
    METRICS,
    SEEDS,
    TRAINING,
    _source_used,
    block_status,
    evals_asked,
    metric_asked,
    per_seed_summaries,
    run_identity,
    run_number,
    summarize,
)

PLOT = Path(__file__).resolve().parents[2] / "plot.py"  # the figures: plot.py's command line, never imported

KEY_CONFIG = ("dict_size", "k", "lr", "steps", "tokens", "batch_size", "seed", "layer")
"""Config fields every entry shows (those the run records)."""
NOT_COMPARED = ("profile", "variant")
"""Config fields the entry's heading shows, so not listed again as differing from the defaults
(the defaults leave out where a run is kept: cli.profile_defaults)."""


def _require_run_number(run_name) -> int:
    number = run_number(run_name)
    if number is None:
        raise ValueError(f"run name must look like run_<i>, got {run_name!r}")
    return number


def notes_entry(run_name, info, plots, defaults, title=None, remarks=(), baseline=None):
    """The lines of one "## Run i: ..." entry, built only from what info holds (and baseline, the
    (name, final_info) of the run to give each metric's Δ against)."""
    ident = run_identity(info)
    config, final = ident["config"], ident["final_info"]
    number = _require_run_number(run_name)
    heading = title or f"{ident['profile']}, {ident['variant']}"
    lines = [
        f"## Run {number}: {heading}",
        f"Profile: {ident['profile']} ({ident['lm_name'] or 'lm_name not recorded'}, "
        f"layer {fmt(ident['layer'])}); variant: {ident['variant']}",
    ]
    key = [f"{name}={fmt(config[name])}" for name in KEY_CONFIG if name in config]
    lines.append("Config: " + (", ".join(key) if key else "not recorded"))
    if defaults:
        changed = [
            f"{name}={fmt(config[name])} (default {fmt(defaults[name])})"
            for name in sorted(config)
            if name in defaults and name not in NOT_COMPARED and config[name] != defaults[name]
        ]
        lines.append("Differs from profile defaults: " + (", ".join(changed) or "nothing"))
    else:
        lines.append("Differs from profile defaults: not compared (no defaults given)")

    def rec(name, unit=""):
        value = final.get(name)
        return "not recorded" if value is None else fmt(value) + unit

    lines.append(
        f"Training: steps {rec('training_steps')}, tokens {rec('tokens')}, "
        f"time {rec('seconds', ' s')}, final loss {rec('final_loss')}, "
        f"L0 {rec('l0')}, dead fraction {rec('dead_fraction')}"
    )
    summary = summarize(info)
    seeds = info.get(SEEDS, {}).get("values") if isinstance(info.get(SEEDS), dict) else None
    seeds = seeds or ([config["seed"]] if "seed" in config else [])
    vs = paired = None
    if baseline is not None:
        vs = welch(summary, summarize(baseline[1]))
        paired = compare(per_seed_summaries(info), per_seed_summaries(baseline[1]))
        paired = {m: cmp for m, cmp in paired.items() if cmp["lo"] is not None}  # two or more shared seeds
        lines.append(
            f"Headline metrics: mean ± std over seeds {', '.join(map(str, seeds)) or 'not recorded'}; "
            f"Δ = this run - {baseline[0]} ({run_identity(baseline[1])['variant']}, same profile) "
            "with Welch's t 95% interval (within noise: the interval includes 0)"
            + (
                "; paired: the same Δ over the seeds both runs have (same initialisation and batches), paired t 95% interval:"
                if paired
                else ":"
            )
        )
    else:
        lines.append(
            f"Headline metrics: mean ± std over seeds {', '.join(map(str, seeds)) or 'not recorded'} (no baseline run of this profile):"
        )
    for metric in METRICS:
        if metric.name not in summary:
            continue  # a metric of the other kind of run (synth_* on a language model, SAEBench's on synth)
        entry = summary[metric.name]
        note = f", {metric.note}" if metric.note else ""
        if entry["status"] == "ok":
            shown = fmt_spread(entry)
            if vs is not None and metric.name in vs:
                shown += "; " + fmt_delta(vs[metric.name])
            if paired and metric.name in paired and metric.direction != REFERENCE:
                shown += "; " + fmt_delta(paired[metric.name], "paired")
            if metric.name == "l0" and "k" in config:
                note = f", target k = {fmt(config['k'])}"
            used = _source_used(info, metric)
            if used > 0:
                block_name, path = metric.sources[used]
                where = "training" if block_name == TRAINING else EVAL_BLOCKS[block_name]
                note += f"; read from {where} {path[-1]}"
            lines.append(f"- {metric.name} = {shown} ({entry['direction']}{note})")
        elif metric_asked(info, metric):
            lines.append(f"- {metric.name}: {entry['status']} ({entry['direction']}{note})")
    problems, timings = [], []
    for block_name, short in EVAL_BLOCKS.items():
        block = info.get(block_name)
        if block is None:
            if EVAL_OF_BLOCK[block_name] in evals_asked(info):
                problems.append(f"- {short}: not run")
            continue
        status = block_status(block)
        if status != "ok":
            problems.append(f"- {short}: {status}")
        if isinstance(block, dict) and isinstance(block.get("seconds"), (int, float)):
            cached = {True: " (eval cache hit)", False: " (eval cache miss)"}.get(block.get("cache_hit"), "")
            timings.append(f"{short} {fmt(block['seconds'])} s{cached}")
    if problems:
        lines.append("Evals not run, skipped or errored:")
        lines.extend(problems)
    if timings:
        lines.append("Eval time: " + ", ".join(timings))
    lines.append("Plots: " + (", ".join(plots) if plots else "none"))
    lines.extend(remarks)
    return lines


def baseline_beside(run_dir, info):
    """(name, final_info) of the baseline for run_dir among the run_* directories beside it
    (compare.baseline_run), or None. Unreadable ones are skipped."""
    candidates = []
    for path in Path(run_dir).resolve().parent.glob("run_*"):
        try:
            candidates.append((path.name, json.loads((path / "final_info.json").read_text())))
        except (OSError, ValueError):
            continue
    return baseline_run(Path(run_dir).resolve().name, info, [c for c in candidates if isinstance(c[1], dict)])


def update_notes(notes_path, run_name, info, plots, defaults=None, title=None, remarks=(), baseline=None):
    """Write run_name's entry into notes_path, replacing an existing one for the same run.

    defaults: the config defaults of this run's profile (flat dict); fields whose value
    differs are listed. title replaces "<profile>, <variant>" in the heading; remarks are
    extra lines appended verbatim. Everything else in the file (the header, other entries,
    other "## " sections) is kept as is. The file is rewritten atomically.
    """
    number = _require_run_number(run_name)
    entry = notes_entry(run_name, info, plots, defaults, title, remarks, baseline)
    try:
        with open(notes_path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        lines = []
    own = re.compile(rf"## Run {number}:")
    out, replaced, skipping = [], False, False
    for line in lines:
        if line.startswith("## "):
            skipping = bool(own.match(line))
            if skipping:
                if not replaced:
                    out.extend(entry + [""])
                    replaced = True
                continue
        if not skipping:
            out.append(line)
    if not replaced:
        while out and not out[-1].strip():
            out.pop()
        out.extend([""] if out else [])
        out.extend(entry + [""])
    while len(out) > 1 and not out[-1].strip() and not out[-2].strip():
        out.pop()
    text = "\n".join(out).rstrip("\n") + "\n"
    write_atomic(Path(notes_path), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def report_run(out: Path, info: dict, tracker, defaults: dict, notes: bool = True) -> None:
    """After a run's evals: the figures into the run dir (plot.py, run as its command line, so the
    figures are whatever plot.py draws today), the run's entry in notes.txt beside the run dirs (with
    the Δ vs the baseline run of the same profile; defaults: the profile's config, so the entry lists
    what differs), wandb's summary (tracker: a tracking.Tracker, or None)."""
    t0 = time.time()
    sys.stdout.flush()
    subprocess.run([sys.executable, str(PLOT), str(out)], check=False)  # its own lines; a plotting failure costs no result
    pngs = sorted(p for p in Path(out).glob("*.png") if p.stat().st_mtime >= t0 - 1)
    plots = [str(p.relative_to(out.parent)) for p in pngs]
    notes_path = out.resolve().parent / "notes.txt"
    if notes and run_number(out.resolve().name) is not None:
        update_notes(notes_path, out.resolve().name, info, plots, defaults=defaults, baseline=baseline_beside(out, info))
        print(f"notes: {notes_path} has the entry for {out.name}")
    elif notes:
        print(f"notes: {notes_path} not updated ({out.name} is not named run_<i>)")
    if tracker is not None:
        tracker.summary(info["summary"])
        tracker.images(pngs)
        tracker.finish()
