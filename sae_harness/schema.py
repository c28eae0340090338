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
EVAL_BLOCKS = {ABSORPTION: "absorption", CORE: "core", SPARSE_PROBING: "sparse probing", UNLEARNING: "unlearning"}


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
    """{metric name: {"value", "se", "direction", "status"}} for every entry of METRICS.

    status is "ok", "skipped: <reason>", "error: <one line>" or "missing"; value is None
    unless status is "ok". se is the eval's standard error of the value from its own samples
    (the block's "standard_errors"), or None. A metric with several sources takes the first that
    is ok and otherwise reports the status of the first source.
    """
    summary = {}
    for metric in METRICS:
        first_status, value, se = None, None, None
        for block_name, path in metric.sources:
            status, value = _read(_block(info, block_name), path)
            if status == "ok":
                se = _standard_error(_block(info, block_name), metric.name)
                break
            first_status = first_status or status
        summary[metric.name] = {
            "value": value,
            "se": se,
            "direction": metric.direction,
            "status": "ok" if value is not None else first_status,
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


EVAL_KEYS = {"absorption": ABSORPTION, "core": CORE, "sparse_probing": SPARSE_PROBING, "unlearning": UNLEARNING}
"""Eval name (as in --evals) -> its final_info.json block."""


def eval_done(block) -> bool:
    """An eval block that needs no rerun: a result or a skip, not an error or nothing."""
    return isinstance(block, dict) and "error" not in block
