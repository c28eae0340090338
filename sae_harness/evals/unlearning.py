"""SAEBench's unlearning eval (gemma-2-2b profile only: it needs gemma-2-2b-it, WMDP, MMLU and a
gated forget corpus)."""

from pathlib import Path

from sae_harness.evals.context import EvalContext, hub_skip, sae_bench_call, saebench_result
from sae_harness.run import profiles

FORGET_CORPUS = Path("sae_bench/evals/unlearning/data/bio-forget-corpus.jsonl")  # SAEBench opens it relative to the cwd


def eval_unlearning(sae, tl_model, ctx: EvalContext) -> dict:
    """SAEBench unlearning (WMDP-bio vs four MMLU subsets on gemma-2-2b-it, the reference's sweep).
    Runs only in the gemma-2-2b profile; SAEBench loads its own (instruct) model, so tl_model is unused."""
    import sae_bench.evals.unlearning.main as unlearning_main
    from sae_bench.evals.unlearning.eval_config import UnlearningEvalConfig

    if ctx.profile != profiles.GEMMA2:
        return {
            "skipped": "unlearning needs gemma-2-2b-it, WMDP, MMLU, the gated WMDP bio forget corpus and a CUDA GPU: "
            "run the gemma-2-2b profile (gemma2_eval_settings()) on a GPU machine with hub access."
        }
    if skip := hub_skip(ctx, f"{ctx.unlearning_model_name}, cais/wmdp, cais/mmlu and wikitext"):
        return skip
    if not FORGET_CORPUS.exists():
        return {
            "skipped": f"the gated WMDP bio forget corpus is missing: request it from the WMDP authors "
            f"(https://huggingface.co/datasets/cais/wmdp-bio-forget-corpus) and put bio-forget-corpus.jsonl at "
            f"{Path.cwd() / FORGET_CORPUS} (SAEBench opens it relative to the working directory)."
        }
    out_dir = ctx.work_dir / "unlearning"
    config = UnlearningEvalConfig(
        random_seed=ctx.eval_seed,
        model_name=ctx.unlearning_model_name,
        llm_batch_size=ctx.llm_batch_size,
        llm_dtype=ctx.llm_dtype,
    )  # SAEBench's defaults are the reference's sweep: retain 0.001/0.01, 10/20 features, x25..200
    with sae_bench_call(sae, unlearning_main, None, ctx):
        unlearning_main.run_eval(
            config,
            [(ctx.sae_name, sae)],
            ctx.device,
            str(out_dir),
            force_rerun=True,
            artifacts_path=str(ctx.work_dir / "artifacts"),
        )
    return saebench_result(out_dir, ctx)
