"""The evals a run can run, one entry each: its name (as in --evals), its final_info.json block, the
function that runs it, what its eval-cache key holds, and its headline metrics with their
directions. Everything else (the --evals choices and default, the block names, the summary, plots,
notes and sweep tables) is derived from EVALS. Adding an eval is one entry here plus its function
(docs/evals.md, "Adding an eval"). Pure Python, so plot.py and the notes read it without torch."""

import importlib
from dataclasses import dataclass, field

LOWER = "lower is better"
HIGHER = "higher is better"
REFERENCE = "reference"

TRAINING = "training results"  # stands for the "training results for layer {L}" block


@dataclass(frozen=True)
class Metric:
    name: str
    sources: tuple
    """((block, key path), ...) tried in order; the first finite number wins."""
    direction: str
    """LOWER, HIGHER or REFERENCE (no better side)."""
    note: str = ""
    """Shown beside the value in notes and plots."""
    unit: str = "value"
    """What the number counts, on the figures' axes."""


@dataclass(frozen=True)
class Eval:
    name: str
    """As in --evals."""
    block: str
    """Its block in final_info.json."""
    function: str
    """"module:function" that runs it, imported when it runs: function(sae, inputs) -> the block
    (evals.EvalInputs: the run's config, directory, device and held-out articles); with
    needs_eval_model, SAEBench's form function(sae, tl_model, ctx). {"skipped": why} when it cannot
    run here; an exception is recorded as {"error": ...} and the other evals still run."""
    metrics: tuple = ()
    """Its headline metrics (Metric), in the order the summary, notes and tables show them."""
    cache_key: dict = field(default_factory=dict)
    """Eval-cache key part -> the EvalContext field it comes from; the eval adds what it computes
    (a word list's digest, a dataset's). Entries of an older key stay on disk and miss."""
    needs_eval_model: bool = False
    """Runs on the profile's SAEBench model and settings, loaded once for all such evals; the others
    run first (they are quick, so their results are written before the long evals start)."""
    synthetic: bool = False
    """Needs the synth profile's known features instead of a language model (and only runs there)."""

    def run(self, sae, inputs) -> dict:
        module, _, name = self.function.partition(":")
        function = getattr(importlib.import_module(module), name)
        return function(sae, inputs.tl_model, inputs.ctx) if self.needs_eval_model else function(sae, inputs)


ABSORPTION = "absorption evaluation results"
CORE = "core evaluation results"
SPARSE_PROBING = "sparse probing evaluation results"
UNLEARNING = "unlearning evaluation results"
SEPARATION = "separation evaluation results"
SYNTH = "synthetic evaluation results"

EVALS = (
    Eval(
        "absorption",
        ABSORPTION,
        "sae_harness.evals.absorption:eval_absorption",
        metrics=(
            Metric(
                "absorption_full",
                (
                    (ABSORPTION, ("eval_result_metrics", "mean", "mean_full_absorption_score")),
                    # seed-era SAEBench: mean_absorption_score is the full-absorption rate
                    (ABSORPTION, ("eval_result_metrics", "mean", "mean_absorption_score")),
                ),
                LOWER,
                unit="rate (0-1)",
            ),
            Metric(
                "absorption_fraction",
                ((ABSORPTION, ("eval_result_metrics", "mean", "mean_absorption_fraction_score")),),
                LOWER,
                unit="fraction (0-1)",
            ),
            Metric(
                "absorption_full_dscaled",
                ((ABSORPTION, ("full_absorption_dim_scaled", "mean_full_absorption_score")),),
                LOWER,
                unit="rate (0-1)",
                note="full absorption with the cosine criterion scaled to the residual width (0.025 * sqrt(2304 / d))",
            ),
        ),
        cache_key=dict(llm_batch_size="llm_batch_size"),
        needs_eval_model=True,
    ),
    Eval(
        "core",
        CORE,
        "sae_harness.evals.core:eval_core",
        metrics=(
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
                unit="fraction of variance",
            ),
            Metric(
                "kl_div_score",
                (
                    (CORE, ("eval_result_metrics", "model_behavior_preservation", "kl_div_score")),
                    (CORE, ("metrics", "model_behavior_preservation", "kl_div_score")),
                ),
                HIGHER,
                unit="score (1 = no change)",
            ),
            Metric(
                "ce_loss_score",
                (
                    (CORE, ("eval_result_metrics", "model_performance_preservation", "ce_loss_score")),
                    (CORE, ("metrics", "model_performance_preservation", "ce_loss_score")),
                ),
                HIGHER,
                unit="score (1 = no change)",
            ),
            Metric(
                "l0",
                (
                    (CORE, ("eval_result_metrics", "sparsity", "l0")),
                    (CORE, ("metrics", "sparsity", "l0")),
                    (TRAINING, ("final_info", "l0")),
                ),
                REFERENCE,
                unit="active latents per token",
                note="target k",
            ),
        ),
        cache_key=dict(
            context_size="context_size",
            batch_prompts="core_batch_prompts",
            reconstruction_batches="core_reconstruction_batches",
            sparsity_variance_batches="core_sparsity_variance_batches",
        ),
        needs_eval_model=True,
    ),
    Eval(
        "sparse_probing",
        SPARSE_PROBING,
        "sae_harness.evals.sparse_probing:eval_sparse_probing",
        metrics=(
            Metric(
                "sparse_probing_sae_top1",
                ((SPARSE_PROBING, ("eval_result_metrics", "sae", "sae_top_1_test_accuracy")),),
                HIGHER,
                unit="test accuracy",
            ),
            Metric(
                "sparse_probing_llm_top1",
                ((SPARSE_PROBING, ("eval_result_metrics", "llm", "llm_top_1_test_accuracy")),),
                REFERENCE,
                unit="test accuracy",
                note="the LLM's own probe",
            ),
        ),
        cache_key=dict(
            datasets="sparse_probing_datasets",
            train_fraction="sparse_probing_train_fraction",
            context_size="context_size",
            llm_batch_size="llm_batch_size",
            k_values="sparse_probing_k_values",
        ),
        needs_eval_model=True,
    ),
    Eval(
        "unlearning",
        UNLEARNING,
        "sae_harness.evals.unlearning:eval_unlearning",
        metrics=(
            Metric(
                "unlearning_score", ((UNLEARNING, ("eval_result_metrics", "unlearning", "unlearning_score")),), HIGHER, unit="score (0-1)"
            ),
        ),
        needs_eval_model=True,
    ),
    Eval(  # decoder |cos| of latents that co-fire on held-out text (separation.py): lower = more separated
        "separation",
        SEPARATION,
        "sae_harness.evals.separation:evaluate",
        metrics=(
            Metric(
                "heldout_cofire_cos_mean",
                ((SEPARATION, ("cofire_cos_mean",)),),
                LOWER,
                unit="|cos| (held-out)",
                note="held-out co-firing pairs; lower = more separated",
            ),
            Metric(
                "heldout_cofire_cos_p95",
                ((SEPARATION, ("cofire_cos_p95",)),),
                LOWER,
                unit="|cos| (held-out)",
                note="held-out co-firing pairs; lower = more separated",
            ),
            Metric(
                "heldout_nn_cos_above_half",
                ((SEPARATION, ("nn_cos_above_half",)),),
                LOWER,
                unit="fraction of latents",
                note="latents with a decoder neighbour |cos| > 0.5",
            ),
        ),
    ),
    Eval(  # ground truth on the synth profile (synth.py: hierarchy_absorption, saelens_metrics)
        "synth",
        SYNTH,
        "sae_harness.run.synth:evaluate",
        metrics=(
            Metric(
                "synth_absorption",
                ((SYNTH, ("absorption", "absorption")),),
                LOWER,
                unit="miss-rate difference (0-1)",
                note="parent latent's miss rate with child on minus alone",
            ),
            Metric(
                "synth_full_absorption",
                ((SYNTH, ("absorption", "full_absorption")),),
                LOWER,
                unit="rate (0-1)",
                note="misses the child latent covers",
            ),
            Metric(
                "synth_mcc", ((SYNTH, ("metrics", "mcc")),), HIGHER, unit="mean |cos| (0-1)", note="decoder vs true features, one-to-one"
            ),
            Metric("synth_explained_variance", ((SYNTH, ("metrics", "explained_variance")),), HIGHER, unit="fraction of variance"),
            Metric(
                "synth_f1",
                ((SYNTH, ("metrics", "f1")),),
                HIGHER,
                unit="F1 (0-1)",
                note="latents as detectors of their nearest true feature",
            ),
            Metric(
                "synth_absorption_any",
                ((SYNTH, ("absorption", "absorption_any")),),
                LOWER,
                unit="rate (0-1)",
                note="every form: a parent without a latent whose child latent carries it counts as absorbed",
            ),
            Metric(
                "synth_parent_recovered",
                ((SYNTH, ("absorption", "parent_recovered")),),
                HIGHER,
                unit="fraction of parents",
                note="parents with a latent of their own (cos >= 0.5)",
            ),
            Metric(
                "synth_miss_with_child",
                ((SYNTH, ("absorption", "miss_with_child")),),
                LOWER,
                unit="rate (0-1)",
                note="parent latent silent, child on",
            ),
            Metric(
                "synth_miss_alone",
                ((SYNTH, ("absorption", "miss_alone")),),
                LOWER,
                unit="rate (0-1)",
                note="parent latent silent, parent alone",
            ),
            Metric(
                "synth_parent_lost",
                ((SYNTH, ("absorption", "parent_lost")),),
                LOWER,
                unit="fraction of parents",
                note="no latent of its own and none of its children's carries it: left out of absorption_any",
            ),
            Metric(
                "synth_absorption_any_lost",
                ((SYNTH, ("absorption", "absorption_any_lost")),),
                LOWER,
                unit="rate (0-1)",
                note="sensitivity reading: absorption_any with a lost parent's edges counted as absorbed",
            ),
            Metric(
                "synth_edges",
                ((SYNTH, ("absorption", "n_edges")),),
                REFERENCE,
                unit="edges",
                note="edges absorption and full absorption average over",
            ),
            Metric(
                "synth_edges_any",
                ((SYNTH, ("absorption", "n_edges_any")),),
                REFERENCE,
                unit="edges",
                note="edges absorption_any averages over",
            ),
            Metric(
                "synth_edges_any_lost",
                ((SYNTH, ("absorption", "n_edges_any_lost")),),
                REFERENCE,
                unit="edges",
                note="edges absorption_any_lost averages over",
            ),
        ),
        synthetic=True,
    ),
)
"""In the order of final_info's blocks and the summary's metrics."""

EVAL_NAMES = tuple(e.name for e in sorted(EVALS, key=lambda e: e.needs_eval_model))
"""The --evals choices, in the order they run."""
LM_EVAL_NAMES = tuple(name for name in EVAL_NAMES if not next(e for e in EVALS if e.name == name).synthetic)
"""The language-model profiles' default evals."""


def by_name(name: str) -> Eval:
    return next(e for e in EVALS if e.name == name)


def run_order(names) -> list[Eval]:
    """The entries of names (as given to --evals, each once), those without the eval model first."""
    return sorted((by_name(name) for name in dict.fromkeys(names)), key=lambda e: e.needs_eval_model)
