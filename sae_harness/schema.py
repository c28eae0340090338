"""The run directory's schema, in one place: final_info.json's block names, the headline metrics
with their directions, how a block's status is read, and the run-name pattern. Pure Python (no
torch), so plot.py and the notes can use it without loading the training stack."""

import math
import re
from dataclasses import dataclass

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


LOWER = "lower is better"
HIGHER = "higher is better"
REFERENCE = "reference"

TRAINING = "training results"  # stands for the "training results for layer {L}" block
ABSORPTION = "absorption evaluation results"
CORE = "core evaluation results"
SPARSE_PROBING = "sparse probing evaluation results"
UNLEARNING = "unlearning evaluation results"
SEPARATION = "separation evaluation results"  # decoder |cos| of latents that co-fire on held-out text
SYNTH = "synthetic evaluation results"  # ground truth on the synth profile (sae_harness/synth.py)
EVAL_BLOCKS = {
    ABSORPTION: "absorption",
    CORE: "core",
    SPARSE_PROBING: "sparse probing",
    UNLEARNING: "unlearning",
    SEPARATION: "separation",
    SYNTH: "synth",
}
SEEDS = "seeds"
"""The block of a multi-seed run: {"values": [seed, ...], "dirs": {seed: dir}, "per_seed": {seed: {"summary": ...}}}."""


@dataclass(frozen=True)
class Metric:
    name: str
    sources: tuple
    """((block, key path), ...) tried in order; the first finite number wins."""
    direction: str
    """LOWER, HIGHER or REFERENCE (no better side)."""
    note: str = ""
    """Shown beside the value in notes and plots."""


METRICS = (
    Metric(
        "absorption_full",
        (
            (ABSORPTION, ("eval_result_metrics", "mean", "mean_full_absorption_score")),
            # seed-era SAEBench: mean_absorption_score is the full-absorption rate
            (ABSORPTION, ("eval_result_metrics", "mean", "mean_absorption_score")),
        ),
        LOWER,
    ),
    Metric("absorption_fraction", ((ABSORPTION, ("eval_result_metrics", "mean", "mean_absorption_fraction_score")),), LOWER),
    # SAEBench 0.6.0's new explained_variance is broken at Gemma 3's activation norms (see
    # eval_core); its explained_variance_legacy is the formula seed-era SAEBench reported.
    # core: SAEBench 0.6.0 saves its groups under eval_result_metrics, seed-era files under metrics
    Metric(
        "explained_variance",
        (
            (CORE, ("eval_result_metrics", "reconstruction_quality", "explained_variance_legacy")),
            (CORE, ("metrics", "reconstruction_quality", "explained_variance_legacy")),
            (CORE, ("metrics", "reconstruction_quality", "explained_variance")),
        ),
        HIGHER,
    ),
    Metric(
        "kl_div_score",
        (
            (CORE, ("eval_result_metrics", "model_behavior_preservation", "kl_div_score")),
            (CORE, ("metrics", "model_behavior_preservation", "kl_div_score")),
        ),
        HIGHER,
    ),
    Metric(
        "ce_loss_score",
        (
            (CORE, ("eval_result_metrics", "model_performance_preservation", "ce_loss_score")),
            (CORE, ("metrics", "model_performance_preservation", "ce_loss_score")),
        ),
        HIGHER,
    ),
    Metric(
        "l0",
        ((CORE, ("eval_result_metrics", "sparsity", "l0")), (CORE, ("metrics", "sparsity", "l0")), (TRAINING, ("final_info", "l0"))),
        REFERENCE,
        note="target k",
    ),
    Metric("sparse_probing_sae_top1", ((SPARSE_PROBING, ("eval_result_metrics", "sae", "sae_top_1_test_accuracy")),), HIGHER),
    Metric(
        "sparse_probing_llm_top1",
        ((SPARSE_PROBING, ("eval_result_metrics", "llm", "llm_top_1_test_accuracy")),),
        REFERENCE,
        note="the LLM's own probe",
    ),
    Metric("unlearning_score", ((UNLEARNING, ("eval_result_metrics", "unlearning", "unlearning_score")),), HIGHER),
    # held-out separation (sae_harness/separation.py): lower |cos| = more separated decoder directions
    Metric(
        "heldout_cofire_cos_mean", ((SEPARATION, ("cofire_cos_mean",)),), LOWER, note="held-out co-firing pairs; lower = more separated"
    ),
    Metric("heldout_cofire_cos_p95", ((SEPARATION, ("cofire_cos_p95",)),), LOWER, note="held-out co-firing pairs; lower = more separated"),
    Metric(
        "heldout_nn_cos_above_half", ((SEPARATION, ("nn_cos_above_half",)),), LOWER, note="latents with a decoder neighbour |cos| > 0.5"
    ),
    # ground truth, synth profile (sae_harness/synth.py: hierarchy_absorption, saelens_metrics)
    Metric("synth_absorption", ((SYNTH, ("absorption", "absorption")),), LOWER, note="parent latent's miss rate with child on minus alone"),
    Metric("synth_full_absorption", ((SYNTH, ("absorption", "full_absorption")),), LOWER, note="misses the child latent covers"),
    Metric("synth_mcc", ((SYNTH, ("metrics", "mcc")),), HIGHER, note="decoder vs true features, one-to-one"),
    Metric("synth_explained_variance", ((SYNTH, ("metrics", "explained_variance")),), HIGHER),
    Metric("synth_f1", ((SYNTH, ("metrics", "f1")),), HIGHER, note="latents as detectors of their nearest true feature"),
)


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


def summarize(info):
    """{metric name: {"value", "se", "direction", "status", "std", "n", "values"}} for every entry of METRICS.

    status is "ok", "skipped: <reason>", "error: <one line>" or "missing"; value is None
    unless status is "ok". se is the eval's standard error of the value from its own samples
    (the block's "standard_errors"), or None. A metric with several sources takes the first that
    is ok and otherwise reports the status of the first source. A single-seed run has n 1 (0 when
    not ok), std None and values [value]; a multi-seed run (a SEEDS block) combines its seeds'
    summaries (combine_summaries).
    """
    seeds = info.get(SEEDS)
    if isinstance(seeds, dict) and isinstance(seeds.get("per_seed"), dict):
        return combine_summaries([run.get("summary") or {} for run in seeds["per_seed"].values()])
    summary = {}
    for metric in METRICS:
        first_status, value, se = None, None, None
        for block_name, path in metric.sources:
            status, value = _read(_block(info, block_name), path)
            if status == "ok":
                se = _standard_error(_block(info, block_name), metric.name)
                break
            first_status = first_status or status
        ok = value is not None
        summary[metric.name] = {
            "value": value,
            "se": se,
            "direction": metric.direction,
            "status": "ok" if ok else first_status,
            "std": None,
            "n": int(ok),
            "values": [value] if ok else [],
        }
    return summary


def _source_used(info, metric):
    """Index into metric.sources of the source summarize took, or -1."""
    return next((i for i, (block_name, path) in enumerate(metric.sources) if _read(_block(info, block_name), path)[0] == "ok"), -1)


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
        profile = next((p for p in ("gemma-2-2b", "gemma-3-270m") if p in flat), base or "unknown")
    layer = config.get("layer")
    if layer is None and key:
        match = re.search(r"layer (\d+)", key)
        layer = int(match.group(1)) if match else None
    return {
        "profile": str(profile),
        "variant": str(config.get("variant") or "none"),
        "layer": layer,
        "lm_name": lm_name,
        "config": config,
        "final_info": final,
    }


def fmt(value):
    """A number as it appears in notes and tables: 4 significant digits, ints plain, n/a for none/NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or (math.isfinite(value) and value == int(value) and abs(value) < 1e9):
        return str(int(value))
    return f"{value:.4g}"


EVAL_KEYS = {
    "absorption": ABSORPTION,
    "core": CORE,
    "sparse_probing": SPARSE_PROBING,
    "unlearning": UNLEARNING,
    "separation": SEPARATION,
    "synth": SYNTH,
}
"""Eval name (as in --evals) -> its final_info.json block."""


def eval_done(block) -> bool:
    """An eval block that needs no rerun: a result or a skip, not an error or nothing."""
    return isinstance(block, dict) and "error" not in block


# ---------------------------------------------------------------- several seeds


def mean_std(values):
    """(mean, sample std with n - 1; None for one value) of a list of numbers; (None, None) when empty."""
    n = len(values)
    if n == 0:
        return None, None
    mean = sum(values) / n
    return mean, (math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None)


def combine_summaries(summaries):
    """One summary from the per-seed summaries of a run (in seed order): for each metric, value =
    the mean over the seeds where it is ok, std (n - 1), n and the per-seed values. A metric
    no seed has keeps the first seed's status; one that some seeds lack says how many have it."""
    combined = {}
    for metric in METRICS:
        entries = [s.get(metric.name) or {} for s in summaries]
        ok = [e for e in entries if e.get("status") == "ok" and e.get("value") is not None]
        values = [e["value"] for e in ok]
        mean, std = mean_std(values)
        ses = [e.get("se") for e in ok]  # the evals' own noise in the mean: sqrt(sum se_i^2) / n
        se = math.sqrt(sum(x * x for x in ses)) / len(ses) if ses and all(isinstance(x, (int, float)) for x in ses) else None
        # ok when any seed has it (n < the number of seeds says some lack it), else the first seed's status
        status = "ok" if values else next((e.get("status") for e in entries if e.get("status")), "missing")
        combined[metric.name] = {
            "value": mean,
            "se": se,
            "direction": metric.direction,
            "status": status,
            "std": std,
            "n": len(values),
            "values": values,
        }
    return combined


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


# ---------------------------------------------------------------- comparing two runs


def welch_interval(a, b, level=0.95):
    """Welch's t interval for mean(b) - mean(a) (unequal variances): {"delta", "lo", "hi", "df",
    "within_noise"} with within_noise True when the interval includes 0. lo / hi / df are None
    when either side has fewer than two values (no spread to judge noise by); with no spread on
    either side the interval is the point delta."""
    mean_a, std_a = mean_std(list(a))
    mean_b, std_b = mean_std(list(b))
    if mean_a is None or mean_b is None:
        return None
    delta = mean_b - mean_a
    if std_a is None or std_b is None:
        return {"delta": delta, "lo": None, "hi": None, "df": None, "within_noise": None, "level": level}
    va, vb = std_a**2 / len(a), std_b**2 / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return {"delta": delta, "lo": delta, "hi": delta, "df": None, "within_noise": delta == 0, "level": level}
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    from scipy.stats import t  # scipy comes with scikit-learn (SAEBench); no torch

    half = t.ppf(0.5 + level / 2, df) * se
    return {
        "delta": delta,
        "lo": delta - half,
        "hi": delta + half,
        "df": df,
        "within_noise": delta - half <= 0 <= delta + half,
        "level": level,
    }


def compare_summaries(summary, baseline):
    """{metric: welch_interval(baseline values, run values)} for the metrics both have."""
    out = {}
    for metric in METRICS:
        a, b = (baseline.get(metric.name) or {}).get("values") or [], (summary.get(metric.name) or {}).get("values") or []
        if a and b:
            out[metric.name] = welch_interval(a, b)
    return out


def fmt_spread(entry):
    """ "mean ± std (std over seeds, n=N; eval SE s)" of a summary entry; for one seed
    "value ± se (eval SE, n=1)", the eval's own standard error."""
    if entry.get("status") != "ok" or entry.get("value") is None:
        return entry.get("status") or "missing"
    se = entry.get("se")
    if (entry.get("n") or 1) < 2 or entry.get("std") is None:
        return f"{fmt(entry['value'])} ± {fmt(se)} (eval SE, n=1)" if se is not None else f"{fmt(entry['value'])} (n=1)"
    eval_se = f"; eval SE {fmt(se)}" if se is not None else ""
    return f"{fmt(entry['value'])} ± {fmt(entry['std'])} (std over seeds, n={entry['n']}{eval_se})"


def fmt_delta(cmp):
    """ "Δ +0.01 [95% CI -0.02, 0.04], within noise" for a welch_interval result."""
    if cmp is None:
        return "Δ n/a"
    text = f"Δ {cmp['delta']:+.4g}"
    if cmp["lo"] is None:
        return text + " (no interval: one seed on a side)"
    text += f" [{cmp['level']:.0%} Welch CI {cmp['lo']:+.4g}, {cmp['hi']:+.4g}]"
    return text + (", within noise" if cmp["within_noise"] else "")


def results_markdown(result: dict) -> str:
    """The Markdown table of a sweep's results/<name>.json: a row per metric (with its direction), a
    column per arm, each cell mean ± std (n); in every arm but the baseline also Δ vs the baseline
    with its 95% Welch interval, and "within noise" where that interval includes 0 (no Δ for
    reference metrics; no row for a metric no arm has). The README's
    Results tables are this function's output (a test holds them to results/*.json)."""
    arms = result["arms"]
    names = list(arms)
    lines = ["| metric (direction) | " + " | ".join(f"`{name}`" for name in names) + " |", "|---" * (len(names) + 1) + "|"]
    for metric in METRICS:
        if not any((arms[name]["summary"].get(metric.name) or {}).get("status") == "ok" for name in names):
            continue  # skipped or missing everywhere (unlearning on the embedded profile)
        cells = []
        for name in names:
            entry = arms[name]["summary"].get(metric.name) or {}
            if entry.get("status") != "ok" or entry.get("value") is None:
                cells.append(entry.get("status") or "missing")
                continue
            cell = f"{fmt(entry['value'])} ± {fmt(entry.get('std'))} (n={entry.get('n')})"
            cmp = (arms[name].get("vs_baseline") or {}).get(metric.name)
            if cmp is not None and metric.direction != REFERENCE:
                interval = f" [{fmt(cmp['lo'])}, {fmt(cmp['hi'])}]" if cmp.get("lo") is not None else ""
                cell += f"; Δ {cmp['delta']:+.3g}{interval}" + (" within noise" if cmp.get("within_noise") else "")
            cells.append(cell)
        lines.append(f"| {metric.name} ({metric.direction}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pick_baseline(name, info, candidates):
    """(name, info) of the baseline for a run among candidates [(name, info)]: variant none, same
    profile, not the run itself; run_0 first for gemma-2-2b; else the closest key config, then
    the lowest run number. None when there is none."""
    ident = run_identity(info)
    same = [
        (n, i)
        for n, i in candidates
        if n != name and run_identity(i)["profile"] == ident["profile"] and run_identity(i)["variant"] == "none"
    ]
    if not same:
        return None
    if ident["profile"] == "gemma-2-2b":
        seed = [c for c in same if c[0] == "run_0"]
        if seed:
            return seed[0]
    keys = ("dict_size", "k", "steps", "tokens", "batch_size", "layer", "lm_name")

    def distance(candidate):
        config = run_identity(candidate[1])["config"]
        number = run_number(candidate[0])
        return (sum(config.get(k) != ident["config"].get(k) for k in keys), 10**9 if number is None else number)

    return min(same, key=distance)
