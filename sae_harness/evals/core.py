"""SAEBench's core eval (KL / CE with the SAE spliced in, explained variance, L0, shrinkage, feature
density) on a given model and an in-memory dataset, with the LLM's side from the eval cache."""

import torch

from sae_harness.evals.context import (
    HELDOUT_DATASET,
    SAE_ID,
    EvalContext,
    cache_key,
    heldout_by_label,
    hub_skip,
    sae_bench_call,
    saebench_result,
)
from sae_harness.evals.core_recorder import CoreRecorder
from sae_harness.evals.eval_cache import EvalCache, texts_digest


def eval_core(sae, tl_model, ctx: EvalContext) -> dict:
    """SAEBench core metrics: KL / CE with the SAE spliced in, explained variance, L0, shrinkage,
    feature density; BOS / EOS / PAD excluded. Same steps as core.main.multiple_evals, but on a
    given model and an in-memory dataset, and errors raise instead of being logged away.
    Cached per key (up to ctx.cache_max_mb): the layer activations of the sparsity / variance
    batches, and for the KL / CE batches what the clean and the zero-ablated model give per token
    (CoreRecorder.clean_statistics), so a run does one forward per batch (with the SAE) instead of
    three; without a logit soft-cap only (else SAEBench's get_recons_loss runs as it is).
    Standard errors: delete-one-sequence jackknife of the per-token values (explained_variance_legacy,
    and the KL / CE scores as ratios of token means).
    SAEBench 0.6.0 caveats (its numbers, reported as they are):
    - reconstruction_quality.explained_variance subtracts (E||x||^2 / D)^2 where it means sum_d E[x_d]^2;
      harmless at gemma-2-2b's norms (~150), but at Gemma 3 270M layer 9 (~6.6k) the "variance" turns
      negative and the value lands near or above 1 whatever the SAE does. explained_variance_legacy
      (mean over tokens of 1 - |x - x_hat|^2 / batch variance, the formula of seed-era SAEBench) is
      not affected; the summary reports that one.
    - KL is computed as p * (log softmax_p - log softmax_q) without log_softmax: Gemma 3 has no logit
      soft-cap, so a bad reconstruction can underflow q to 0 and give kl_div_with_sae = inf
      (kl_div_score = -inf), as a random SAE does."""
    from unittest import mock

    import datasets
    import sae_bench.evals.core.main as core_main
    from sae_bench.evals.core.eval_config import CoreEvalConfig
    from sae_bench.sae_bench_utils import general_utils
    from sae_lens import ActivationsStore
    from transformer_lens import HookedTransformer

    if tl_model is None:
        if skip := hub_skip(ctx, f"{ctx.model_name} and {ctx.core_dataset}"):
            return skip
        tl_model = HookedTransformer.from_pretrained_no_processing(
            ctx.model_name, device=ctx.device, dtype=general_utils.str_to_dtype(ctx.llm_dtype)
        )
    if ctx.core_dataset == HELDOUT_DATASET:
        texts = [text for text in heldout_by_label(ctx).values() for text in text]
        dataset, dataset_id = datasets.Dataset.from_dict({"text": texts}), texts_digest(texts)
    else:
        dataset = dataset_id = ctx.core_dataset  # streamed from the hub
    out_dir = ctx.work_dir / "core"
    out_dir.mkdir(parents=True, exist_ok=True)
    config = CoreEvalConfig(
        model_name=ctx.model_name,
        llm_dtype=ctx.llm_dtype,
        batch_size_prompts=ctx.core_batch_prompts,
        n_eval_reconstruction_batches=ctx.core_reconstruction_batches,
        n_eval_sparsity_variance_batches=ctx.core_sparsity_variance_batches,
        dataset=ctx.core_dataset,
        context_size=ctx.context_size,
        compute_kl=True,
        compute_ce_loss=True,
        compute_l2_norms=True,
        compute_sparsity_metrics=True,
        compute_variance_metrics=True,
        compute_featurewise_density_statistics=True,  # both featurewise groups are needed, or the
        compute_featurewise_weight_based_metrics=True,  # result fails validation (misc_metrics)
        exclude_special_tokens_from_reconstruction=True,
    )
    key = cache_key("core", ctx, dataset=dataset_id)
    # floats kept per token: the layer's activations (sparsity / variance); u and the residual at the hook (reconstruction)
    per_token = ctx.core_sparsity_variance_batches * (tl_model.cfg.d_model + 8) + ctx.core_reconstruction_batches * (
        2 * tl_model.cfg.d_model + 8
    )
    acts_mb = per_token * ctx.core_batch_prompts * ctx.context_size * 4 / 2**20
    cache = EvalCache(ctx.cache_dir if acts_mb <= ctx.cache_max_mb else None, ctx.work_dir)
    path = cache.path("core", key)
    cached = None
    if cache.root is not None and cache.is_complete(path, key):
        try:
            cached = torch.load(path / "core_llm.pt", weights_only=True)  # tensors only: a shared cache is data
        except Exception as e:  # damaged: recomputed and rewritten below
            print(f"eval cache: {path / 'core_llm.pt'} is damaged ({type(e).__name__}); computing the LLM's side again")
            cached = None
    tokenizer = tl_model.tokenizer
    ignore_tokens = {tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id}
    with sae_bench_call(sae, core_main, None, ctx):
        _, sae, _ = general_utils.load_and_format_sae(ctx.sae_name, sae, ctx.device)  # fills cfg.metadata
        sae.to(device=ctx.device, dtype=general_utils.str_to_dtype(ctx.llm_dtype))
        store = ActivationsStore.from_sae(
            tl_model,
            sae,
            dataset=dataset,
            dataset_trust_remote_code=True,
            context_size=ctx.context_size,
            store_batch_size_prompts=ctx.core_batch_prompts,
            device=ctx.device,
        )
        store.shuffle_input_dataset(seed=ctx.eval_seed)
        recorder = CoreRecorder(tl_model, sae, ctx.hook_name, ignore_tokens, cached, keep=cache.root is not None)
        with mock.patch.object(core_main, "get_recons_loss", recorder.recons_loss(core_main.get_recons_loss)):
            metrics, feature_metrics = core_main.run_evals(sae, store, recorder.model, config, ignore_tokens=ignore_tokens)
        metrics["misc_metrics"] = core_main.calculate_misc_metrics(feature_metrics)
        result = core_main.replace_nans_with_negative_one(
            {"eval_cfg": config, "sae_set": ctx.sae_name, "sae_id": SAE_ID, "metrics": metrics, "feature_metrics": feature_metrics}
        )
        core_main.save_single_eval_result(
            result,
            eval_instance_id=core_main.get_eval_uuid(),
            sae_lens_version=core_main.get_sae_lens_version(),
            sae_bench_commit_hash=core_main.get_sae_bench_version(),
            json_path=general_utils.get_results_filepath(str(out_dir), ctx.sae_name, SAE_ID),
            sae=sae,
        )
    if (recorder.missed or recorder.clean_missed) and cache.root is not None:
        llm = dict(sparsity_variance=recorder.calls, reconstruction=recorder.clean if recorder.shortcut else None)
        cache.write("core", key, lambda tmp: torch.save(llm, tmp / "core_llm.pt"))
    result = saebench_result(out_dir, ctx)
    result["standard_errors"] = recorder.standard_errors()
    result["cache"] = dict(
        sparsity_variance_hit=cache.root is not None and recorder.missed == 0,
        reconstruction_hit=cache.root is not None and recorder.shortcut and recorder.clean_missed == 0,
        entry=str(path) if cache.root is not None else f"off: the activations would take {acts_mb:.0f} MB",
    )
    return result
