"""The run directory's schema: final_info.json's block names and the headline metrics with their
directions (derived from the eval registry, registry.py), how a block's status is read, the summary
entries, the multi-seed run's final_info, and the run-name pattern. Pure Python (no torch), so plot.py and the notes can use it
without loading the training stack. Comparisons between runs are in sae_harness/analysis/compare.py,
how numbers read in sae_harness/analysis/formatting.py."""

import dataclasses
import json
import math
import re
from dataclasses import dataclass

from sae_harness.analysis.stats import mean_std, se_of_mean
from sae_harness.evals.registry import EVALS, TRAINING, Metric
from sae_harness.run import profiles

RUN_NAME = re.compile(r"run_(\d+)")
"""Run directories are named run_<i>; notes.txt entries and plots are keyed by i."""


def run_number(run_name) -> int | None:
    """i for a path or name ending in run_<i>, else None."""
    base = str(run_name).replace("\\", "/").rstrip("/").split("/")[-1]
    match = RUN_NAME.fullmatch(base)
    return int(match.group(1)) if match else None


def training_key(layer) -> str:
    """The final_info.json block that holds the config and the training results."""
    return f"training results for layer {layer}"


EVAL_BLOCKS = {e.block: e.name.replace("_", " ") for e in EVALS}
"""final_info.json's eval blocks -> the eval's name as notes and plots show it."""
EVAL_KEYS = {e.name: e.block for e in EVALS}
"""Eval name (as in --evals) -> its final_info.json block."""
EVAL_OF_BLOCK = {e.block: e.name for e in EVALS}
"""final_info.json block -> its eval's name (as in --evals)."""
SYNTHETIC_BLOCK = {e.block: e.synthetic for e in EVALS}
"""final_info.json block -> whether its eval runs on the synth profiles (True) or a language model."""
METRICS = tuple(metric for e in EVALS for metric in e.metrics)
"""Every eval's headline metrics, in the registry's order."""
SEEDS = "seeds"
"""The block of a multi-seed run: {"values": [seed, ...], "dirs": {seed: dir}, "per_seed": {seed: {"summary": ...}}}."""


def _one_line(text):
    lines = str(text).strip().splitlines()
    return lines[0].strip() if lines else ""


def info_training_key(info):
    """The "training results for layer {L}" key of a final_info dict, or None."""
    return next((k for k in info if k.startswith(TRAINING)), None)


def _block(info, name):
    key = info_training_key(info) if name == TRAINING else name
    return info.get(key) if key is not None else None


def block_status(block):
    """ "ok", "missing", "skipped: <reason>" or "error: <one line>" for one eval block."""
    if block is None:
        return "missing"
    if not isinstance(block, dict):
        return "error: block is not a JSON object"
    if "error" in block:
        return "error: " + _one_line(block["error"])
    if "skipped" in block:
        return "skipped: " + _one_line(block["skipped"])
    return "ok"


def _read(block, path):
    """(status, value) for one key path inside one block of final_info."""
    status = block_status(block)
    if status != "ok":
        return status, None
    value = block
    for key in path:
        if not isinstance(value, dict) or value.get(key) is None:
            return "missing", None
        value = value[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"error: {path[-1]} is not a number ({value!r})", None
    if not math.isfinite(value):
        return f"error: {path[-1]} is {value}", None
    return "ok", float(value)


def _standard_error(block, name):
    """The eval's own standard error of a headline metric: block["standard_errors"][name], or None."""
    se = block.get("standard_errors", {}).get(name) if isinstance(block, dict) else None
    return float(se) if isinstance(se, (int, float)) and not isinstance(se, bool) and math.isfinite(se) else None


@dataclass(frozen=True)
class SummaryEntry:
    """One headline metric of a run, as final_info's "summary" holds it (to_json: the dict written)."""

    value: float | None
    """The metric (the mean over seeds where several are ok); None unless status is "ok"."""
    se: float | None
    """The eval's own standard error of value from its samples (the block's "standard_errors"), or None."""
    direction: str
    """The metric's direction: LOWER, HIGHER or REFERENCE."""
    status: str
    """"ok", "skipped: <reason>", "error: <one line>" or "missing"."""
    std: float | None
    """Sample std over seeds (n - 1); None for one seed."""
    n: int
    """Seeds where the metric is ok."""
    values: list
    """The per-seed values, in seed order."""

    @classmethod
    def of_run(cls, metric: Metric, status: str, value: float | None, se: float | None) -> "SummaryEntry":
        ok = value is not None
        return cls(value, se, metric.direction, "ok" if ok else status, None, int(ok), [value] if ok else [])

    @classmethod
    def over_seeds(cls, metric: Metric, entries: list[dict]) -> "SummaryEntry":
        """From the seeds' entries (in seed order): the mean over the seeds where the metric is ok.
        The status is ok when any seed has it (n < the number of seeds says some lack it), else the
        first seed's status."""
        ok = [e for e in entries if e.get("status") == "ok" and e.get("value") is not None]
        values = [e["value"] for e in ok]
        mean, std = mean_std(values)
        status = "ok" if values else next((e.get("status") for e in entries if e.get("status")), "missing")
        return cls(mean, se_of_mean([e.get("se") for e in ok]), metric.direction, status, std, len(values), values)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def entry(summary: dict, name: str) -> dict:
    """A summary's entry for one metric; a metric the summary does not hold (the other kind of run's)
    reads as missing."""
    return summary.get(name) or {"value": None, "se": None, "status": "missing", "std": None, "n": 0, "values": []}


def summarize(info):
    """{metric name: SummaryEntry as JSON} for every entry of METRICS.

    A metric with several sources takes the first that is ok and otherwise reports the status of
    the first source. A single-seed run has n 1 (0 when not ok), std None and values [value]; a
    multi-seed run (a SEEDS block) combines its seeds' summaries (combine_summaries).
    """
    seeds = info.get(SEEDS)
    if isinstance(seeds, dict) and isinstance(seeds.get("per_seed"), dict):
        return combine_summaries([run.get("summary") or {} for run in seeds["per_seed"].values()])
    summary = {}
    for metric in METRICS:
        if not metric_of_kind(info, metric):
            continue  # a language-model run has no synth_* entry, a synth run no SAEBench one
        first_status, value, se = None, None, None
        for block_name, path in metric.sources:
            status, value = _read(_block(info, block_name), path)
            if status == "ok":
                se = _standard_error(_block(info, block_name), metric.name)
                break
            first_status = first_status or status
        summary[metric.name] = SummaryEntry.of_run(metric, first_status, value, se).to_json()
    return summary


def _source_used(info, metric):
    """Index into metric.sources of the source summarize took, or -1."""
    return next((i for i, (block_name, path) in enumerate(metric.sources) if _read(_block(info, block_name), path)[0] == "ok"), -1)


BASELINE_VARIANT = "none"
"""The arm every other is compared with (plain TopK): the one rule for picking a baseline, read by
analysis/compare.py (baseline_arm, baseline_run), the figures and sweep.py."""


def is_baseline(variant: str) -> bool:
    return variant == BASELINE_VARIANT


def arm_name(variant: str, overrides: dict) -> str:
    """A sweep arm's name: the variant, then each option it sets (progressive_ortho_lambda_max=0.15)."""
    return "_".join([variant] + [f"{k}={v}" for k, v in overrides.items()])


def arm_over_worlds(run: dict) -> str:
    """The arm a run of a sweep over worlds belongs to: its name without the world (data_seed)."""
    return arm_name(run["variant"], {k: v for k, v in run["overrides"].items() if k != "data_seed"})


def run_identity(info):
    """{"profile", "variant", "layer", "lm_name", "config", "final_info"} of a final_info dict.

    Seed-era files carry neither profile nor variant: the profile comes from lm_name and the
    variant is "none" (plain TopK).
    """
    key = info_training_key(info)
    block = info.get(key) if key else None
    block = block if isinstance(block, dict) else {}
    config = block.get("config") if isinstance(block.get("config"), dict) else {}
    final = block.get("final_info") if isinstance(block.get("final_info"), dict) else {}
    lm_name = str(config.get("lm_name", ""))
    profile = config.get("profile")
    if not profile:
        base = lm_name.replace("\\", "/").rstrip("/").split("/")[-1].lower()
        flat = base.replace("_", "-").replace("gemma3", "gemma-3").replace("gemma2", "gemma-2")
        profile = next((p for p in (profiles.GEMMA2, profiles.EMBEDDED) if p in flat), base or "unknown")
    layer = config.get("layer")
    if layer is None and key:
        match = re.search(r"layer (\d+)", key)
        layer = int(match.group(1)) if match else None
    return {
        "profile": str(profile),
        "variant": str(config.get("variant") or BASELINE_VARIANT),
        "layer": layer,
        "lm_name": lm_name,
        "config": config,
        "final_info": final,
    }


def evals_asked(info) -> set:
    """The eval names a run asked for: its recorded --evals, else (a file without it) every eval of
    its kind, the language model's or the synthetic one."""
    identity = run_identity(info)
    evals = identity["config"].get("evals")
    if isinstance(evals, str):
        return {name for name in evals.split(",") if name}
    return {e.name for e in EVALS if e.synthetic == is_synthetic(info)}


def is_synthetic(info) -> bool:
    """Whether a run trained on a synthetic world (the synth profiles) rather than a language model."""
    identity = run_identity(info)
    return identity["config"].get("text_source") == "synth" or identity["profile"] in (profiles.SYNTH, profiles.SYNTH_NARROW)


def metric_of_kind(info, metric) -> bool:
    """Whether a headline metric belongs to a run of this kind: a training metric always; an eval's
    when the eval is of the run's kind (synthetic or language model), or the run holds its block."""
    synthetic = is_synthetic(info)
    return any(block not in EVAL_OF_BLOCK or SYNTHETIC_BLOCK[block] == synthetic or block in info for block, _ in metric.sources)


def metric_asked(info, metric) -> bool:
    """Whether the run asked for the eval a headline metric comes from (training metrics always)."""
    asked = evals_asked(info)
    return any(block not in EVAL_OF_BLOCK or EVAL_OF_BLOCK[block] in asked for block, _ in metric.sources)


def eval_done(block) -> bool:
    """An eval block that needs no rerun: a result or a skip, not an error or nothing."""
    return isinstance(block, dict) and "error" not in block


# ---------------------------------------------------------------- several seeds


def combine_summaries(summaries):
    """One summary from the per-seed summaries of a run (in seed order): SummaryEntry.over_seeds
    for each metric."""
    return {
        metric.name: SummaryEntry.over_seeds(metric, [s.get(metric.name) or {} for s in summaries]).to_json()
        for metric in METRICS
        if any(metric.name in s for s in summaries) or not summaries
    }


def _mean_block(blocks):
    """The mean over seeds of every number in a block (a dict tree); a value that is not a number
    is kept when every seed agrees, else left out (per-seed blocks stay in seed_<s>/)."""
    first = blocks[0]
    if all(isinstance(b, dict) for b in blocks):
        out = {}
        for key in first:
            if all(key in b for b in blocks):
                value = _mean_block([b[key] for b in blocks])
                if value is not _OMIT:
                    out[key] = value
        return out
    if all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in blocks):
        return sum(blocks) / len(blocks) if all(math.isfinite(b) for b in blocks) else _OMIT
    return first if all(b == first for b in blocks) else _OMIT


_OMIT = object()


def aggregate(per_seed_infos, dirs=None):
    """The final_info of a multi-seed run from {seed: that seed's final_info} (seed order kept).

    Top-level blocks keep their names so every reader of a one-seed run reads this one: the
    training block holds the first seed's config (seed -> the list) and the mean of every
    training number; each eval block is the mean over seeds of every number (an error or a skip
    in any seed makes the block that error or skip, naming the seed); "summary" has the mean,
    std, n and per-seed values of each headline metric; SEEDS holds the seeds, their dirs and
    their own summaries. A seed without results yet is left out of every mean (n says so)."""
    seeds = list(per_seed_infos)
    infos = [per_seed_infos[s] for s in seeds]
    info = {}
    trained = [(s, i) for s, i in zip(seeds, infos) if isinstance((i.get(info_training_key(i) or "") or {}).get("final_info"), dict)]
    if trained:
        key = info_training_key(trained[0][1])
        config = dict(trained[0][1][key].get("config") or {}) | {"seed": seeds}
        final = _mean_block([i[key]["final_info"] for _, i in trained])
        info[key] = {"config": config, "final_info": final | {"seeds_trained": [s for s, _ in trained]}}
    for block_name in EVAL_BLOCKS:
        blocks = [(s, i[block_name]) for s, i in zip(seeds, infos) if block_name in i]
        if not blocks:
            continue
        bad = next(((s, b) for s, b in blocks if block_status(b) != "ok"), None)
        if bad is not None:
            status = block_status(bad[1])
            kind, _, reason = status.partition(": ")
            info[block_name] = {kind if kind in ("error", "skipped") else "error": f"seed {bad[0]}: {reason or status}"}
        else:
            info[block_name] = _mean_block([b for _, b in blocks]) | {"seeds": [s for s, _ in blocks]}
    per_seed = {str(s): {"summary": summarize(i)} | ({"dir": str(dirs[s])} if dirs else {}) for s, i in zip(seeds, infos)}
    info[SEEDS] = {"values": seeds, "per_seed": per_seed}
    info["summary"] = summarize(info)
    return info


# ---------------------------------------------------------------- a run's seeds


def per_seed_summaries(info) -> dict:
    """{seed: summary} of a run: each seed's from a multi-seed run's seeds block, else the one seed's."""
    seeds = info.get(SEEDS)
    if isinstance(seeds, dict) and isinstance(seeds.get("per_seed"), dict):
        return {int(s): run.get("summary") or {} for s, run in seeds["per_seed"].items()}
    seed = run_identity(info)["config"].get("seed")
    return {seed: summarize(info)} if isinstance(seed, int) else {}


def config_differences(configs: list[dict], ignore=()) -> tuple[list[str], list[str]]:
    """(the keys every config records with values that differ, the keys only some record), the
    keys in ignore left out: the one comparison of recorded configs (a run against the options
    asked for, runs side by side, a baseline run apart against a sweep's)."""
    keys = sorted({k for config in configs for k in config} - set(ignore))
    shared = [k for k in keys if all(k in config for config in configs)]
    differ = [k for k in shared if len({json.dumps(config[k], sort_keys=True, default=str) for config in configs}) > 1]
    return differ, [k for k in keys if k not in shared]
