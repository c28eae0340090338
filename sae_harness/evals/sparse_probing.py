"""SAEBench's sparse probing eval on the run's SAE: the held-out articles registered as one more
SAEBench dataset on the embedded profile, the LLM's activations and probes in the eval cache."""

import contextlib
import math
import random
from pathlib import Path

from sae_harness.evals.context import (
    HELDOUT_DATASET,
    EvalContext,
    cache_key,
    heldout_by_label,
    hub_skip,
    reseeded,
    sae_bench_call,
    saebench_result,
)
from sae_harness.evals.eval_cache import EvalCache, texts_digest


def _heldout_train_test(ctx: EvalContext) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Per-label split of the held-out articles (seeded by ctx.eval_seed) into SAEBench's
    {label: [text]} train / test dicts. With the sizes None: every article, a share
    sparse_probing_train_fraction of each label for training; else SAEBench's sizes (a one-vs-rest
    task has half positives, so size // 2 per label)."""
    train, test = {}, {}
    for label, texts in sorted(heldout_by_label(ctx).items()):
        if ctx.sparse_probing_train_size is None:
            n_train = round(len(texts) * ctx.sparse_probing_train_fraction)
            n_test = len(texts) - n_train if ctx.sparse_probing_test_size is None else ctx.sparse_probing_test_size // 2
        else:
            n_train, n_test = ctx.sparse_probing_train_size // 2, ctx.sparse_probing_test_size // 2
        if len(texts) < n_train + n_test or min(n_train, n_test) < 1:
            raise ValueError(
                f"held-out label {label!r} has {len(texts)} articles, sparse probing needs {n_train} + {n_test}: "
                f"lower sparse_probing_train_size / sparse_probing_test_size"
            )
        texts = random.Random(ctx.eval_seed).sample(texts, n_train + n_test)
        train[label], test[label] = texts[:n_train], texts[n_train:]
    return train, test


def _probe_sizes(ctx: EvalContext, heldout_split) -> tuple[int, int]:
    """Probe train / test documents: the context's sizes; where one is None, every document of the
    held-out split when it is probed, else SAEBench's default."""
    from sae_bench.evals.sparse_probing.eval_config import SparseProbingEvalConfig

    if heldout_split is not None:
        counted = tuple(sum(len(texts) for texts in part.values()) for part in heldout_split)
    else:
        default = SparseProbingEvalConfig()
        counted = (default.probe_train_set_size, default.probe_test_set_size)
    return ctx.sparse_probing_train_size or counted[0], ctx.sparse_probing_test_size or counted[1]


def _one_vs_rest_sizes(per_label: dict[str, int]) -> dict[str, int]:
    """Documents in each label's one-vs-rest set as SAEBench builds it (probe_training.prepare_probe_data):
    all of the label, and ceil(n / (labels - 1)) of each other label (fewer where it has fewer)."""
    sizes = {}
    for label, n in per_label.items():
        others = [m for other, m in per_label.items() if other != label]
        each = math.ceil(n / len(others))
        sizes[label] = n + sum(min(each, m) for m in others)
    return sizes


def _accuracy_se(per_dataset: dict[str, dict[str, float]], test_sizes: dict[str, dict[str, int]]) -> float | None:
    """SE of SAEBench's mean test accuracy (mean over datasets of the mean over one-vs-rest tasks),
    each task's accuracy binomial over its test documents."""
    variances = []
    for dataset, accuracies in per_dataset.items():
        if not accuracies:
            return None
        var = sum(a * (1 - a) / test_sizes[dataset][label] for label, a in accuracies.items()) / len(accuracies) ** 2
        variances.append(var)
    return float(math.sqrt(sum(variances)) / len(variances)) if variances else None


def eval_sparse_probing(sae, tl_model, ctx: EvalContext) -> dict:
    """SAEBench sparse probing: one-vs-rest probes per class on mean-pooled LLM residuals and on
    SAE latents, full and restricted to the top-k dims (k in ctx.sparse_probing_k_values).
    Cached per key: the LLM's activations on the probe documents and the LLM's own probe results
    (SAEBench's save_activations file)."""
    from unittest import mock

    import sae_bench.evals.sparse_probing.main as sparse_probing_main
    import sae_bench.sae_bench_utils.activation_collection as activation_collection
    import sae_bench.sae_bench_utils.dataset_info as dataset_info
    import sae_bench.sae_bench_utils.dataset_utils as dataset_utils
    from sae_bench.evals.sparse_probing.eval_config import SparseProbingEvalConfig

    if tl_model is None and (skip := hub_skip(ctx, f"{ctx.model_name} and {', '.join(ctx.sparse_probing_datasets)}")):
        return skip
    out_dir = ctx.work_dir / "sparse_probing"
    heldout_split = _heldout_train_test(ctx) if HELDOUT_DATASET in ctx.sparse_probing_datasets else None
    train_size, test_size = _probe_sizes(ctx, heldout_split)
    config = SparseProbingEvalConfig(
        random_seed=ctx.eval_seed,
        dataset_names=ctx.sparse_probing_datasets,
        probe_train_set_size=train_size,
        probe_test_set_size=test_size,
        context_length=ctx.context_size,
        sae_batch_size=ctx.sae_batch_size,
        llm_batch_size=ctx.llm_batch_size,
        llm_dtype=ctx.llm_dtype,
        model_name=ctx.model_name,
        k_values=ctx.sparse_probing_k_values,
    )
    load_saebench_data = dataset_utils.get_multi_label_train_test_data

    def load_data(dataset_name, *args):  # the held-out articles, registered as one more SAEBench dataset
        return heldout_split if dataset_name == HELDOUT_DATASET else load_saebench_data(dataset_name, *args)

    labels = sorted({label for label, _ in ctx.heldout})
    key = cache_key(
        "sparse_probing",
        ctx,
        heldout=texts_digest(ctx.heldout) if heldout_split is not None else None,
        train_size=config.probe_train_set_size,
        test_size=config.probe_test_set_size,
    )

    def run(artifacts: Path, save: bool) -> None:
        with (
            sae_bench_call(sae, sparse_probing_main, tl_model, ctx),
            mock.patch.object(dataset_utils, "get_multi_label_train_test_data", load_data),
            mock.patch.dict(dataset_info.chosen_classes_per_dataset, {HELDOUT_DATASET: labels}),
            # the SAE's probes draw the same numbers whether the LLM's side was computed or loaded
            mock.patch.object(
                activation_collection,
                "get_sae_meaned_activations",
                reseeded(activation_collection.get_sae_meaned_activations, ctx.eval_seed),
            ),
            _jaxtyping_disabled(),
        ):
            sparse_probing_main.run_eval(
                config,
                [(ctx.sae_name, sae)],
                ctx.device,
                str(out_dir),
                force_rerun=True,
                save_activations=save,
                artifacts_path=str(artifacts),
            )

    n_docs = config.probe_train_set_size + config.probe_test_set_size
    if heldout_split is None:  # SAEBench's datasets: sizes per class of each dataset, counted generously (2 classes each)
        n_docs *= 2 * len(ctx.sparse_probing_datasets)
    bytes_per_value = 4 if ctx.llm_dtype == "float32" else 2
    d_model = tl_model.cfg.d_model if tl_model is not None else 2304
    acts_mb = n_docs * ctx.context_size * d_model * bytes_per_value / 2**20
    cache = EvalCache(ctx.cache_dir if acts_mb <= ctx.cache_max_mb else None, ctx.work_dir)
    if cache.root is None:
        run(ctx.work_dir / "artifacts", save=False)  # would write ~0.3 MB per document into the run dir
        path, hit = None, False
    else:
        path, hit = cache.entry("sparse_probing", key, lambda tmp: run(tmp, save=True))  # a miss runs the eval inside
        if hit:
            run(path, save=True)
    result = saebench_result(out_dir, ctx)
    per_class = result["eval_result_unstructured"]
    test_sizes = {}
    for dataset in ctx.sparse_probing_datasets:
        if dataset == HELDOUT_DATASET:
            test_sizes[dataset] = _one_vs_rest_sizes({label: len(t) for label, t in heldout_split[1].items()})
        else:  # SAEBench's datasets: probe_test_set_size documents per task
            test_sizes[dataset] = {
                label: config.probe_test_set_size for label in per_class[f"{dataset}_results"]["sae_top_1_test_accuracy"]
            }
    result["test_documents_per_task"] = test_sizes
    result["standard_errors"] = {
        name: _accuracy_se({d: per_class[f"{d}_results"][f"{who}_top_1_test_accuracy"] for d in ctx.sparse_probing_datasets}, test_sizes)
        for name, who in (("sparse_probing_sae_top1", "sae"), ("sparse_probing_llm_top1", "llm"))
    }
    result["cache"] = dict(llm_hit=hit, entry=str(path) if path else f"off (LLM activations ~{acts_mb:.0f} MB)")
    return result


@contextlib.contextmanager
def _jaxtyping_disabled():
    """With jaxtyping 0.3.11 + beartype 0.23.1, probe_training.train_probe_on_activations(select_top_k=k)
    always fails a shape check ('size of dimension train_dataset_size ...'); switch the checks off."""
    import jaxtyping

    previous = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", previous)
