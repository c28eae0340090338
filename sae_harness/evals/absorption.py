"""SAEBench's first-letter absorption eval on the run's SAE, with its SAE-independent work (the LLM's
probe and prompt activations) in the shared eval cache."""

import contextlib
import functools
import json
import random
import time
from pathlib import Path

import numpy as np
import torch

from sae_harness.evals.context import SAE_ID, EvalContext, cache_key, hub_skip, reseeded, sae_bench_call, saebench_result, seed_everything
from sae_harness.evals.eval_cache import EvalCache, digest
from sae_harness.run.rundir import write_atomic


class _StopAtLayer:
    """The model, but run_with_cache stops after `layer`: absorption only reads that layer,
    and the 262k-wide unembedding is most of a full forward (55 ms instead of 330 ms per prompt)."""

    def __init__(self, model, layer: int):
        self._model = model
        self._stop_at_layer = layer + 1

    def __getattr__(self, name):
        return getattr(self._model, name)

    def run_with_cache(self, *args, **kwargs):
        return self._model.run_with_cache(*args, stop_at_layer=self._stop_at_layer, **kwargs)


@contextlib.contextmanager
def _stage_timers(timings: dict, targets: list[tuple[object, str]]):
    """Record the seconds spent in each module.function of targets into timings (a profile of the
    eval's stages kept in its result); behaviour unchanged."""
    from unittest import mock

    def timed(fn, label):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            t0 = time.time()
            try:
                return fn(*args, **kwargs)
            finally:
                timings[label] = round(timings.get(label, 0.0) + time.time() - t0, 1)

        return call

    with contextlib.ExitStack() as stack:
        for module, name in targets:
            stack.enter_context(mock.patch.object(module, name, timed(getattr(module, name), name)))
        yield timings


def _absorption_vocab(tokenizer, ctx: EvalContext, prompt_template: str) -> list[str]:
    """SAEBench's alphabetic single-token words, minus those that merge with their neighbours once
    prompted (3 on Gemma 3: ' yyyy', ' YYYY', ' diffformul'; they crash "All prompts must have the
    same token length"), sorted (the tokenizer's own order changes from process to process), then a
    sample of ctx.absorption_vocab_size of them seeded by ctx.eval_seed."""
    from collections import Counter

    from sae_bench.evals.absorption.vocab import get_alpha_tokens

    words = sorted(set(get_alpha_tokens(tokenizer)))
    prompts = ["\n" + prompt_template.format(word=w) for w in words]
    n_tokens = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    usual = Counter(n_tokens).most_common(1)[0][0]
    words = [w for w, n in zip(words, n_tokens) if n == usual]
    if ctx.absorption_vocab_size is not None and ctx.absorption_vocab_size < len(words):
        words = random.Random(ctx.eval_seed).sample(words, ctx.absorption_vocab_size)
    return words


class _PromptActsCache:
    """The model as SAEBench's absorption stage sees it: run_with_cache on a batch of prompts returns
    the hook's activations at one position, from `store` (prompt -> activation) when every prompt of
    the batch is there, else from the model (the whole batch, as an uncached run batches it), adding
    them to the store. Only [:, pos, :] of the returned activations is meaningful."""

    def __init__(self, model, hook_name: str, pos: int, store: dict):
        self._model, self._hook_name, self._pos, self.store = model, hook_name, pos, store
        self.added, self.llm_seconds = 0, 0.0

    def __getattr__(self, name):
        return getattr(self._model, name)

    def run_with_cache(self, prompts, names_filter=None, **kwargs):
        if names_filter != [self._hook_name] or kwargs:
            return self._model.run_with_cache(prompts, names_filter=names_filter, **kwargs)
        if not all(p in self.store for p in prompts):
            t0 = time.time()
            acts_BD = self._model.run_with_cache(prompts, names_filter=names_filter)[1][self._hook_name][:, self._pos, :]
            self.store.update({p: a.detach().clone() for p, a in zip(prompts, acts_BD)})
            self.added += len(prompts)
            self.llm_seconds += time.time() - t0
        acts_BD = torch.stack([self.store[p] for p in prompts])
        width = self._pos + 1 if self._pos >= 0 else -self._pos
        acts_BTD = acts_BD.new_zeros(len(prompts), width, acts_BD.shape[-1])
        acts_BTD[:, self._pos] = acts_BD
        return None, {self._hook_name: acts_BTD}


def _absorption_se(raw_df, letters: set[str]) -> dict:
    """Standard errors of SAEBench's two absorption means from its own samples, the probe's true
    positive words: each letter's rate is a mean over its words, the score a mean over letters, so
    SE = sqrt(sum_l var_l / n_l) / L (letters fixed, words sampled)."""
    out = {}
    rows = raw_df[raw_df["letter"].isin(letters)]
    for score, column in (("absorption_full", "is_full_absorption"), ("absorption_fraction", "absorption_fraction")):
        groups = rows.groupby("letter")[column]
        var_over_n = (groups.var(ddof=1).fillna(0) / groups.count()).sum()
        out[score] = float(np.sqrt(var_over_n) / len(letters)) if letters else None
    return out


SAEBENCH_COS_THRESHOLD = 0.025
"""SAEBench's full-absorption criterion: the top-projecting latent's cosine with the probe is at least this."""
SAEBENCH_D = 2304
"""The residual width SAEBench's threshold was set on (Gemma 2 2B)."""


def chance_rate(threshold: float, d: int) -> float:
    """P(|cos| >= threshold) for two independent random unit vectors in d dimensions
    (cos^2 ~ Beta(1/2, (d - 1)/2)): how often the cosine criterion is met by chance."""
    from scipy.stats import beta

    return float(beta.sf(threshold**2, 0.5, (d - 1) / 2))


def dim_scaled_threshold(d: int) -> float:
    """SAEBench's 0.025 scaled by sqrt(2304 / d), so the criterion's chance rate at d is about what it
    is on Gemma 2 2B (random cosines have std 1/sqrt(d)); never below 0.025 (a looser criterion
    cannot be recomputed from SAEBench's per-word table)."""
    return max(SAEBENCH_COS_THRESHOLD, SAEBENCH_COS_THRESHOLD * float(np.sqrt(SAEBENCH_D / d)))


def full_absorption_at(raw_df, letters: set[str], threshold: float) -> float | None:
    """SAEBench's mean full-absorption score with its cosine criterion at `threshold` (>= 0.025): a
    word counts where SAEBench counted it and its top-projecting latent's cosine with the probe is at
    least `threshold`; each letter's rate over its probe true positives, the mean over `letters`."""
    rows = raw_df[raw_df["letter"].isin(letters)]
    if not len(rows):
        return None
    full = rows["is_full_absorption"].astype(bool) & (rows["top_projection_feat_probe_cos"] >= threshold)
    per_letter = full.groupby(rows["letter"]).sum() / rows.groupby("letter")["num_probe_true_positives"].mean()
    return float(per_letter.mean())


def _probe_gate(probe_path: Path, min_f1: float) -> dict:
    """The LLM's first-letter probes: each letter's F1 (SAEBench's k-sparse probing table) and how many
    pass the gate F1 > min_f1 (the letters absorption is averaged over)."""
    f1 = {row["letter"]: float(row["f1_probe"]) for row in json.loads(probe_path.read_text())}
    return dict(probe_f1_by_letter=f1, letters_passing_gate=sum(v > min_f1 for v in f1.values()), probe_f1_gate=min_f1)


def eval_absorption(sae, tl_model, ctx: EvalContext) -> dict:
    """SAEBench first-letter absorption (k-sparse probing, then absorption of the split latents).
    Cached per key: the LLM's first-letter probe with its word-prompt activations (SAEBench's probe
    files) and the LLM activations of the absorption stage's in-context prompts."""
    from unittest import mock

    import pandas as pd
    import sae_bench.evals.absorption.common as absorption_common
    import sae_bench.evals.absorption.feature_absorption as absorption_feature
    import sae_bench.evals.absorption.k_sparse_probing as absorption_k_sparse
    import sae_bench.evals.absorption.main as absorption_main
    from sae_bench.evals.absorption.eval_config import AbsorptionEvalConfig
    from sae_bench.sae_bench_utils import general_utils
    from transformer_lens import HookedTransformer

    if tl_model is None:
        if skip := hub_skip(ctx, ctx.model_name):
            return skip
        tl_model = HookedTransformer.from_pretrained_no_processing(
            ctx.model_name, device=ctx.device, dtype=general_utils.str_to_dtype(ctx.llm_dtype)
        )
    out_dir = ctx.work_dir / "absorption"
    experiments_dir = out_dir / "artifacts"  # k-sparse probing / absorption parquet files
    out_dir.mkdir(parents=True, exist_ok=True)  # run_eval does not create it and crashes at the very end
    config = AbsorptionEvalConfig(
        model_name=ctx.model_name,
        random_seed=ctx.eval_seed,
        llm_batch_size=ctx.llm_batch_size,
        llm_dtype=ctx.llm_dtype,
        min_GT_probe_f1=ctx.absorption_min_probe_f1,
        min_feats_for_eval=ctx.absorption_min_letters,
        precalc_k_sparse_probe_sae_acts=ctx.absorption_precalc_sae_acts,
    )
    model = _StopAtLayer(tl_model, ctx.layer)
    vocab = _absorption_vocab(tl_model.tokenizer, ctx, config.prompt_template)
    key = cache_key(
        "absorption",
        ctx,
        words=digest(vocab),
        n_words=len(vocab),
        prompt_template=config.prompt_template,
        prompt_token_pos=config.prompt_token_pos,
    )
    vocab_patches = (
        mock.patch.object(absorption_common, "get_alpha_tokens", lambda *a, **k: vocab),  # LLM probe words
        mock.patch.object(absorption_feature, "get_alpha_tokens", lambda *a, **k: vocab),  # in-context examples
    )

    def build_probe(tmp: Path) -> None:  # SAEBench's own probe training, as its k-sparse stage would run it
        with vocab_patches[0], vocab_patches[1]:
            seed_everything(ctx.eval_seed)
            absorption_common.train_and_save_probes(
                model, [ctx.layer], config.prompt_template, config.prompt_token_pos, probes_dir=tmp / "probes", device=ctx.device
            )

    cache = EvalCache(ctx.cache_dir, ctx.work_dir)
    t0 = time.time()
    entry, probe_hit = cache.entry("absorption", key, build_probe)
    timings = {"llm_probe (cache miss: prompts, LLM activations, probe training)": round(time.time() - t0, 1)}
    acts_path = entry / "absorption_prompt_acts.pt"
    try:
        store = torch.load(acts_path, weights_only=True) if acts_path.exists() else {}  # tensors only: a shared cache is data
    except Exception as e:  # a damaged file: rebuilt below
        print(f"eval cache: {acts_path} is damaged ({type(e).__name__}); computing the prompts' activations again")
        store = {}
    prompt_model = _PromptActsCache(model, ctx.hook_name, config.prompt_token_pos, store)
    dirs = dict(probes_dir=entry / "probes")  # SAEBench keys its probe by model name + layer only: ours is keyed above
    with (
        sae_bench_call(sae, absorption_main, prompt_model, ctx),
        vocab_patches[0],
        vocab_patches[1],
        mock.patch.object(
            absorption_main,
            "run_k_sparse_probing_experiment",
            reseeded(
                absorption_main.run_k_sparse_probing_experiment, ctx.eval_seed, experiment_dir=experiments_dir / "k_sparse_probing", **dirs
            ),
        ),
        mock.patch.object(
            absorption_main,
            "run_feature_absortion_experiment",
            reseeded(
                absorption_main.run_feature_absortion_experiment,
                ctx.eval_seed,
                experiment_dir=experiments_dir / "feature_absorption",
                sparse_probing_experiment_dir=experiments_dir / "k_sparse_probing",
                **dirs,
            ),
        ),
        contextlib.chdir(out_dir),  # run_eval writes ./artifacts/absorption/<name>_k_sparse_probing.json
        _stage_timers(
            timings,
            [
                (absorption_k_sparse, "train_k_sparse_probes"),
                (absorption_k_sparse, "eval_probe_and_sae_k_sparse_raw_scores"),
                (absorption_k_sparse, "build_metrics_df"),
                (absorption_feature, "calculate_projection_and_cos_sims"),
            ],
        ),
    ):
        results = absorption_main.run_eval(config, [(ctx.sae_name, sae)], ctx.device, ".", force_rerun=True)
    timings["of which LLM forwards of the absorption prompts"] = round(prompt_model.llm_seconds, 1)
    if prompt_model.added and ctx.cache_dir is not None:
        write_atomic(acts_path, lambda tmp: torch.save(prompt_model.store, tmp))
    cache_info = dict(probe_hit=probe_hit, prompt_acts_hit=prompt_model.added == 0, entry=str(entry))
    probe_path = out_dir / "artifacts" / "absorption" / f"{ctx.sae_name}_{SAE_ID}_k_sparse_probing.json".replace("/", "_")
    gate = _probe_gate(probe_path, ctx.absorption_min_probe_f1)
    if not results:  # the gate failed: SAEBench printed "Cannot evaluate absorption" and wrote nothing
        passed = gate["letters_passing_gate"]
        return {
            "skipped": f"only {passed}/26 first-letter LLM probes reached F1 > {ctx.absorption_min_probe_f1} "
            f"(gate {ctx.absorption_min_letters}) with {len(vocab)} words; raise absorption_vocab_size "
            f"or lower absorption_min_probe_f1 / absorption_min_letters."
        }
    result = saebench_result(out_dir, ctx)
    result["eval_config"]["absorption_vocab_size"] = len(vocab)  # not an SAEBench field: words actually used
    name = f"{ctx.sae_name}_{SAE_ID}"
    raw_df = pd.read_parquet(experiments_dir / "feature_absorption" / name / f"layer_{ctx.layer}_{name}.parquet")
    letters = {d["first_letter"] for d in result["eval_result_details"]}
    result["standard_errors"] = _absorption_se(raw_df, letters)
    result |= gate
    d = int(sae.W_dec.shape[-1])
    threshold = dim_scaled_threshold(d)
    result["full_absorption_dim_scaled"] = dict(
        d=d,
        threshold=threshold,
        chance_rate=chance_rate(threshold, d),
        saebench_threshold=SAEBENCH_COS_THRESHOLD,
        saebench_chance_rate=chance_rate(SAEBENCH_COS_THRESHOLD, d),
        saebench_score_recomputed=full_absorption_at(raw_df, letters, SAEBENCH_COS_THRESHOLD),  # equals SAEBench's own
        mean_full_absorption_score=full_absorption_at(raw_df, letters, threshold),
    )
    result["n_test_words"] = int(sum(d["num_probe_true_positives"] for d in result["eval_result_details"]))
    result["cache"] = cache_info
    result["stage_seconds"] = timings
    return result
