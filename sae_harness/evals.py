"""SAEBench evals: absorption, core, sparse probing and unlearning on the run's SAE.

Four evals, one signature: eval_X(sae, tl_model, ctx) -> dict, SAEBench's own result JSON for that
eval, or {"skipped": "<what to fetch and where>"}; real errors raise (run_evaluations records them).
The embedded profile hands the locally built model to SAEBench (load_tl_model) and uses the
held-out BBC articles; the gemma-2-2b profile lets SAEBench load models and datasets from the
hub with the seed's settings (gemma2_eval_settings). Everything SAEBench writes goes under
run_i/evals/, except the work that does not depend on the SAE (the LLM's activations and probes),
which goes into the shared eval cache (eval_cache.py) and is reused by later runs. Every eval seeds
Python, NumPy and torch with ctx.eval_seed before each of its stages, so a cached and an uncached
eval of the same SAE give the same numbers. SAEBench is imported inside the functions, so training
starts without it.
"""

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sae_harness import data, precision
from sae_harness.eval_cache import EvalCache, digest, sae_bench_version, texts_digest
from sae_harness.rundir import write_atomic, write_json_atomic
from sae_harness.schema import EVAL_KEYS, block_status, eval_done, summarize

SAE_ID = "custom_sae"  # SAEBench's id for an SAE object; result files are {sae_name}_{SAE_ID}_eval_results.json
HELDOUT_DATASET = "bbc_news_heldout"  # name under which the held-out articles are registered for sparse probing
FORGET_CORPUS = Path("sae_bench/evals/unlearning/data/bio-forget-corpus.jsonl")  # SAEBench opens it relative to the cwd


@dataclass
class EvalContext:
    model_name: str = "google/gemma-3-270m"
    """TransformerLens / SAEBench model name (sae.cfg.model_name must match)."""
    profile: str = "gemma-3-270m"
    """'gemma-3-270m' (embedded, offline CPU) or 'gemma-2-2b' (the seed's setting, CUDA + hub)."""
    layer: int = 9
    """Layer whose residual stream the SAE reads."""
    hook_name: str = "blocks.9.hook_resid_post"
    """TransformerLens hook the SAE reads."""
    device: str = "cpu"
    """Where SAEBench runs the LLM and the SAE."""
    llm_dtype: str = "float32"
    """LLM dtype, as SAEBench writes it ('float32', 'bfloat16'); SAEBench casts the SAE to it during an eval."""
    sae_name: str = "sae"
    """Unique per run: SAEBench caches and skips work by this name."""
    work_dir: Path = Path("saebench")
    """Folder inside the run dir for every SAEBench result, probe and cache."""
    heldout: list[tuple[str, str]] = field(default_factory=list)
    """Held-out (label, text) articles: the text for core and sparse probing (embedded profile)."""
    eval_seed: int = 42
    """Seeds Python, NumPy and torch before each eval stage, the absorption word sample and the probe
    train / test splits (SAEBench's absorption ignores its own seed). Separate from the SAE's seed."""
    cache_dir: Path | None = None
    """Shared eval cache directory (a run uses <its cache_dir>/evals); None: nothing is kept between runs."""
    cache_max_mb: float = 4096
    """LLM activations bigger than this are not cached (core's and sparse probing's on gemma-2-2b: 19 and ~24 GB)."""
    llm_batch_size: int = 8
    """Prompts per LLM forward in absorption and sparse probing."""
    context_size: int = 128
    """Tokens per sequence for core and sparse probing."""

    # absorption (first-letter)
    absorption_vocab_size: int | None = 5000
    """Single-token alphabetic words sampled from the vocabulary (None: all, as SAEBench does); drives its time."""
    absorption_min_probe_f1: float = 0.5
    """Gate: a letter counts only if SAEBench's LLM probe reaches this F1 (SAEBench default 0.6; its small-model tests use 0.3)."""
    absorption_min_letters: int = 20
    """Gate: absorption is reported only if this many letters pass the F1 gate (SAEBench default 20)."""
    absorption_precalc_sae_acts: bool = True
    """Encode the probe-training words once (fast; memory words x d_sae floats)."""

    # core
    core_dataset: str = HELDOUT_DATASET
    """Text for core: HELDOUT_DATASET (ctx.heldout) or a hub dataset name."""
    core_batch_prompts: int = 4
    """Sequences per core batch (each full-logit batch holds ~3 x B x 128 x 262k floats: 4 -> ~7 GB peak)."""
    core_reconstruction_batches: int = 48
    """Batches for KL / CE (three full forwards with 262k-wide logits each on a profile's first run, one
    once cached: the slow part). 48 x 4 x 128 tokens give KL and CE score standard errors below 0.002
    (0.0015 / 0.0019 measured; 0.0037 / 0.0047 at 8 batches) for about 115 s more per cached run."""
    core_sparsity_variance_batches: int = 48
    """Batches for explained variance, L0, L1, shrinkage and feature density."""

    # sparse probing
    sparse_probing_datasets: list[str] = field(default_factory=lambda: [HELDOUT_DATASET])
    """SAEBench dataset names, or HELDOUT_DATASET for one-vs-rest over ctx.heldout's labels."""
    sparse_probing_train_size: int | None = None
    """Probe training documents per one-vs-rest task (half of them the positive class), as in SAEBench;
    None (embedded): every held-out article, sparse_probing_train_fraction of each label for training."""
    sparse_probing_test_size: int | None = None
    """Probe test documents per one-vs-rest task (half of them the positive class); None: the rest."""
    sparse_probing_train_fraction: float = 0.5
    """Share of each label's held-out articles that trains the probes when the sizes are None."""
    sparse_probing_k_values: list[int] = field(default_factory=lambda: [1, 2, 5, 10, 20, 50])
    """Top-k latents / LLM dims for the k-sparse probes (the seed's list)."""
    sae_batch_size: int = 125
    """Sequences per SAE encode in sparse probing."""

    # unlearning (gemma-2-2b profile only)
    unlearning_model_name: str = "google/gemma-2-2b-it"
    """Instruct model SAEBench's unlearning eval runs on (the SAE is applied to it)."""

    def __post_init__(self):
        if self.profile not in ("gemma-3-270m", "gemma-2-2b"):
            raise ValueError(f"profile must be 'gemma-3-270m' or 'gemma-2-2b', not {self.profile!r}")
        if self.hook_name != f"blocks.{self.layer}.hook_resid_post":
            raise ValueError(f"hook_name {self.hook_name!r} does not match layer {self.layer}")
        self.work_dir = Path(self.work_dir).resolve()  # absorption runs inside a chdir


def gemma2_eval_settings() -> dict:
    """EvalContext overrides for the seed's gemma-2-2b run (the eval_config blocks of its results,
    run_0/final_info.json); pass with sae_name, work_dir, eval_seed, cache_dir."""
    from sae_bench.evals.sparse_probing.eval_config import SparseProbingEvalConfig

    return dict(
        model_name="google/gemma-2-2b",
        profile="gemma-2-2b",
        layer=12,
        hook_name="blocks.12.hook_resid_post",
        device="cuda",
        llm_dtype="bfloat16",
        llm_batch_size=32,
        context_size=128,
        absorption_vocab_size=None,  # SAEBench's full alphabetic vocabulary
        absorption_min_probe_f1=0.6,
        absorption_min_letters=20,
        absorption_precalc_sae_acts=False,
        core_dataset="Skylion007/openwebtext",
        core_batch_prompts=16,
        core_reconstruction_batches=200,
        core_sparsity_variance_batches=2000,
        sparse_probing_datasets=list(SparseProbingEvalConfig().dataset_names),  # SAEBench's eight
        sparse_probing_train_size=4000,
        sparse_probing_test_size=1000,
        sparse_probing_k_values=[1, 2, 5, 10, 20, 50],
        sae_batch_size=125,
        unlearning_model_name="google/gemma-2-2b-it",
    )


# -----------------------------------------------------------------------------
# model


def load_tl_model(hf_model, tokenizer, ctx: EvalContext):
    """Hand the locally loaded (GGUF, dequantized) HF model to TransformerLens; no hub. A Gemma 2 /
    Gemma 3 model gets the TransformerLens config built from its own HF config (tl_config_dict), so a
    model of any size converts, not only one whose sizes match ctx.model_name's published ones."""
    from unittest import mock

    from sae_bench.sae_bench_utils import general_utils
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading

    if hasattr(hf_model.config, "quantization_config"):
        del hf_model.config.quantization_config  # TransformerLens refuses quantized configs
    patch = contextlib.nullcontext()
    if hf_model.config.model_type in ("gemma2", "gemma3_text"):
        cfg_dict = tl_config_dict(ctx.model_name, hf_model.config)
        if cfg_dict["original_architecture"] != type(hf_model).__name__:
            raise ValueError(
                f"{ctx.model_name} is a {cfg_dict['original_architecture']} in TransformerLens, the model is a {type(hf_model).__name__}"
            )
        # from_pretrained reads its config from this one function; everything else (weights, dtype, device) stays TransformerLens's own
        patch = mock.patch.object(loading, "convert_hf_model_config", lambda name, **kwargs: dict(cfg_dict))
    with patch:
        return HookedTransformer.from_pretrained_no_processing(
            ctx.model_name,
            hf_model=hf_model,
            tokenizer=tokenizer,
            device=ctx.device,
            dtype=general_utils.str_to_dtype(ctx.llm_dtype),
        )


TL_ATTN_TYPES = {"sliding_attention": "local", "full_attention": "global"}


def tl_config_dict(model_name: str, hf_config) -> dict:
    """TransformerLens's config dict for a Gemma 2 / Gemma 3 HF config: TransformerLens's own entry
    for model_name (built offline for Gemma names) with every size and setting the HF config states
    taken from the HF config: widths, layers, sliding window and which layers slide, soft-caps,
    attention scale, RoPE bases. For the published models the two agree (tests/test_gemma2.py)."""
    from transformer_lens import loading_from_pretrained as loading

    c = hf_config
    rope = c.rope_parameters  # Gemma 2: one dict; Gemma 3: one per layer type
    rope_global, rope_local = rope.get("full_attention", rope), rope.get("sliding_attention", rope)
    if {rope_global.get("rope_type", "default"), rope_local.get("rope_type", "default")} != {"default"}:
        raise ValueError(f"RoPE scaling {rope} is not converted to TransformerLens here")
    cfg = loading.convert_hf_model_config(model_name)
    cfg.update(
        d_model=c.hidden_size,
        d_head=c.head_dim,
        n_heads=c.num_attention_heads,
        n_key_value_heads=c.num_key_value_heads,
        d_mlp=c.intermediate_size,
        n_layers=c.num_hidden_layers,
        d_vocab=c.vocab_size,
        n_ctx=min(cfg["n_ctx"], c.max_position_embeddings),
        eps=c.rms_norm_eps,
        act_fn=c.hidden_activation,
        window_size=c.sliding_window,
        attn_types=[TL_ATTN_TYPES[t] for t in c.layer_types],
        attn_scale=c.query_pre_attn_scalar**0.5,  # scores are divided by it; HF multiplies by query_pre_attn_scalar**-0.5
        attn_scores_soft_cap=c.attn_logit_softcapping or -1.0,  # -1: off
        output_logits_soft_cap=c.final_logit_softcapping or -1.0,
        rotary_base=rope_global["rope_theta"],
        rotary_base_local=rope_local["rope_theta"] if rope_local["rope_theta"] != rope_global["rope_theta"] else None,  # None: one base
    )
    return cfg


class _GivenModel:
    """Stands in for HookedTransformer inside an SAEBench module: its loader returns our model."""

    def __init__(self, model):
        self.model = model

    def from_pretrained_no_processing(self, *args, **kwargs):
        return self.model


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


# -----------------------------------------------------------------------------
# shared plumbing


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


def _reseeded(fn, seed: int, **fixed):
    """fn with `fixed` keyword arguments, every global RNG reseeded at each call: a stage then draws
    the same numbers whether or not an earlier stage's work came from the cache."""

    @functools.wraps(fn)
    def call(*args, **kwargs):
        seed_everything(seed)
        return fn(*args, **{**kwargs, **fixed})

    return call


@contextlib.contextmanager
def _sae_bench_call(sae, module, tl_model, ctx: EvalContext):
    """Around one SAEBench entry point: seed, point its model loader at tl_model (if given), and
    undo what SAEBench leaves behind (it casts the SAE in place, and absorption turns grad on)."""
    from unittest import mock

    seed_everything(ctx.eval_seed)
    dtype, device, grad = sae.dtype, sae.device, torch.is_grad_enabled()
    patch = mock.patch.object(module, "HookedTransformer", _GivenModel(tl_model)) if tl_model is not None else contextlib.nullcontext()
    try:
        with patch:
            yield
    finally:
        sae.to(device=device, dtype=dtype)
        torch.set_grad_enabled(grad)


def _result(out_dir: Path, ctx: EvalContext) -> dict:
    """SAEBench's own result JSON for this SAE, as it wrote it."""
    from sae_bench.sae_bench_utils import general_utils

    path = general_utils.get_results_filepath(str(out_dir), ctx.sae_name, SAE_ID)
    with open(path) as f:
        return json.load(f)


def _hub_skip(ctx: EvalContext, needs: str) -> dict | None:
    """The gemma-2-2b profile needs CUDA and the hub; say what is missing, or None."""
    import huggingface_hub.constants

    if ctx.device.startswith("cuda") and not torch.cuda.is_available():
        return {"skipped": f"needs a CUDA GPU (device={ctx.device!r}) for {needs}; run on a GPU machine."}
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        return {
            "skipped": f"needs Hugging Face hub access for {needs}; unset HF_HUB_OFFLINE and log in with a token that has accepted the Gemma licence."
        }
    return None


def _cache_key(eval_name: str, ctx: EvalContext, **settings) -> dict:
    """An eval cache entry's key: what every entry depends on (model, layer, dtype, device, eval
    seed, SAEBench version) and the eval's own settings."""
    return dict(
        eval=eval_name,
        model=ctx.model_name,
        layer=ctx.layer,
        llm_dtype=ctx.llm_dtype,
        device=torch.device(ctx.device).type,
        eval_seed=ctx.eval_seed,
        **settings,
        sae_bench=sae_bench_version(),
    )


def _heldout_by_label(ctx: EvalContext) -> dict[str, list[str]]:
    by_label: dict[str, list[str]] = {}
    for label, text in ctx.heldout:
        by_label.setdefault(label, []).append(text)
    if not by_label:
        raise ValueError("ctx.heldout is empty: the embedded profile needs the held-out (label, text) articles")
    return by_label


# -----------------------------------------------------------------------------
# absorption (first-letter)


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
        if skip := _hub_skip(ctx, ctx.model_name):
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
    key = _cache_key(
        "absorption",
        ctx,
        words=digest(vocab),
        n_words=len(vocab),
        prompt_template=config.prompt_template,
        prompt_token_pos=config.prompt_token_pos,
        llm_batch_size=ctx.llm_batch_size,
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
        store = torch.load(acts_path) if acts_path.exists() else {}
    except Exception:  # a damaged file: rebuilt below
        store = {}
    prompt_model = _PromptActsCache(model, ctx.hook_name, config.prompt_token_pos, store)
    dirs = dict(probes_dir=entry / "probes")  # SAEBench keys its probe by model name + layer only: ours is keyed above
    with (
        _sae_bench_call(sae, absorption_main, prompt_model, ctx),
        vocab_patches[0],
        vocab_patches[1],
        mock.patch.object(
            absorption_main,
            "run_k_sparse_probing_experiment",
            _reseeded(
                absorption_main.run_k_sparse_probing_experiment, ctx.eval_seed, experiment_dir=experiments_dir / "k_sparse_probing", **dirs
            ),
        ),
        mock.patch.object(
            absorption_main,
            "run_feature_absortion_experiment",
            _reseeded(
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
    if not results:  # the gate failed: SAEBench printed "Cannot evaluate absorption" and wrote nothing
        probe_path = out_dir / "artifacts" / "absorption" / f"{ctx.sae_name}_{SAE_ID}_k_sparse_probing.json".replace("/", "_")
        f1 = [row["f1_probe"] for row in json.loads(probe_path.read_text())]
        passed = sum(v > ctx.absorption_min_probe_f1 for v in f1)
        return {
            "skipped": f"only {passed}/26 first-letter LLM probes reached F1 > {ctx.absorption_min_probe_f1} "
            f"(gate {ctx.absorption_min_letters}) with {len(vocab)} words; raise absorption_vocab_size "
            f"or lower absorption_min_probe_f1 / absorption_min_letters."
        }
    result = _result(out_dir, ctx)
    result["eval_config"]["absorption_vocab_size"] = len(vocab)  # not an SAEBench field: words actually used
    name = f"{ctx.sae_name}_{SAE_ID}"
    raw_df = pd.read_parquet(experiments_dir / "feature_absorption" / name / f"layer_{ctx.layer}_{name}.parquet")
    letters = {d["first_letter"] for d in result["eval_result_details"]}
    result["standard_errors"] = _absorption_se(raw_df, letters)
    result["n_test_words"] = int(sum(d["num_probe_true_positives"] for d in result["eval_result_details"]))
    result["cache"] = cache_info
    result["stage_seconds"] = timings
    return result


# -----------------------------------------------------------------------------
# core


def jackknife_se(sums_NM: np.ndarray, metric) -> float | None:
    """Delete-one jackknife standard error of metric(column totals) over the N rows (clusters,
    here sequences: tokens of one sequence are not independent)."""
    sums_NM = np.asarray(sums_NM, dtype=np.float64)
    n = len(sums_NM)
    if n < 2:
        return None
    loo_N = np.array([metric(row) for row in sums_NM.sum(0) - sums_NM])
    value = float(np.sqrt((n - 1) / n * ((loo_N - loo_N.mean()) ** 2).sum()))
    return value if np.isfinite(value) else None


class _CoreRecorder:
    """What SAEBench's core computes per token, kept per sequence for the standard errors, and the
    SAE-independent layer activations of its sparsity / variance batches, served from the cache.
    model: stands in for the model in run_evals (its run_with_cache is the sparsity / variance pass);
    recons_loss: stands in for core.main.get_recons_loss."""

    def __init__(self, tl_model, sae, hook_name: str, ignore_tokens: set, cached: dict | None, keep: bool = True):
        from transformer_lens.utilities.activation_functions import softcap_enabled

        self.tl_model, self.sae, self.hook_name, self.ignore_tokens = tl_model, sae, hook_name, ignore_tokens
        self.keep = keep  # hold what the LLM gave, to be cached (gemma-2-2b's would not fit in memory)
        cached = cached or {}
        self.cached, self.calls, self.missed = cached.get("sparsity_variance"), [], 0
        self.cached_clean, self.clean, self.clean_missed = cached.get("reconstruction"), [], 0
        # the KL shortcut needs logits linear in the unembedding input: no soft-cap (Gemma 3 has none; Gemma 2 has one)
        self.shortcut = not softcap_enabled(tl_model.cfg.output_logits_soft_cap)
        self.recons_rows, self.variance_rows = [], []  # per sequence: sums of the per-token metrics, token count

    def _mask(self, tokens_BT):
        mask_BT = torch.ones_like(tokens_BT, dtype=torch.bool)
        for t in self.ignore_tokens:
            mask_BT &= tokens_BT != t
        return mask_BT

    @property
    def model(self):
        recorder = self

        class Model:
            def __getattr__(self, name):
                return getattr(recorder.tl_model, name)

            def __call__(self, *args, **kwargs):
                return recorder.tl_model(*args, **kwargs)

            def run_with_cache(self, tokens_BT, **kwargs):
                return recorder.run_with_cache(tokens_BT, **kwargs)

        return Model()

    def run_with_cache(self, tokens_BT, **kwargs):
        i = len(self.calls)
        if self.cached is not None and i < len(self.cached) and torch.equal(self.cached[i][0], tokens_BT.cpu()):
            acts_BTD = self.cached[i][1].to(tokens_BT.device)
        else:
            acts_BTD = self.tl_model.run_with_cache(tokens_BT, **kwargs)[1][self.hook_name]
            self.missed += 1
        self.calls.append((tokens_BT.cpu(), acts_BTD.detach().cpu()) if self.keep else None)
        with torch.no_grad():  # explained_variance_legacy per token, as SAEBench computes it per batch
            mask_BT = self._mask(tokens_BT)
            x_ND = acts_BTD[mask_BT].to(self.sae.device)
            x_hat_ND = self.sae.decode(self.sae.encode(x_ND)).to(x_ND.dtype)
            ev_N = 1 - (x_ND - x_hat_ND).pow(2).sum(-1) / (x_ND - x_ND.mean(0)).pow(2).sum(-1)
            seq_N = mask_BT.nonzero()[:, 0]
            for b in range(len(tokens_BT)):
                sel = seq_N == b
                self.variance_rows.append((ev_N[sel].double().sum().item(), int(sel.sum())))
        return None, {self.hook_name: acts_BTD}

    UNEMBED_ROWS = 512
    """Positions per chunk of vocabulary-wide logits: 512 x 262k floats (537 MB for Gemma 3), a whole
    default batch; three such tensors at once at most. On 2 AVX2 cores the product into them ran at
    99 GFLOPS in chunks of 128 positions, 121 in chunks of 512."""

    @property
    def layer(self) -> int:
        return int(self.hook_name.split(".")[1])  # blocks.<L>.hook_resid_post (EvalContext checks the form)

    def _embed(self, tokens_BT):
        """(residual after the embedding, TransformerLens's forward kwargs for the blocks: its own
        positional embedding and attention mask for these tokens)."""
        resid, _, pos_embed, attention_mask = self.tl_model.input_to_embed(tokens_BT)
        return resid, dict(tokens=tokens_BT, shortformer_pos_embed=pos_embed, attention_mask=attention_mask)

    def _blocks(self, resid_BTD, start: int, stop: int, kwargs: dict):
        """TransformerLens's forward from block `start` up to (not including) block `stop`."""
        return self.tl_model(resid_BTD, start_at_layer=start, stop_at_layer=stop, **kwargs)

    def _unembed_input(self, resid_BTD, kwargs: dict):
        """The unembedding's input (ln_final's output) from the residual after the hook's block,
        as TransformerLens's forward computes it."""
        model = self.tl_model
        resid = self._blocks(resid_BTD, self.layer + 1, model.cfg.n_layers, kwargs)
        return model.ln_final(resid) if model.cfg.normalization_type is not None else resid

    def _scratch(self, name: str, shape, like: torch.Tensor) -> torch.Tensor:
        """A buffer kept across batches (a fresh 537 MB tensor costs its page faults every time)."""
        buffers = self.__dict__.setdefault("_buffers", {})
        if name not in buffers or buffers[name].shape != torch.Size(shape):
            buffers[name] = like.new_empty(shape)
        return buffers[name]

    @property
    def W_UT(self) -> torch.Tensor:
        """W_U transposed, contiguous (V, D): the layout u = p W_U^T runs fastest in (made once)."""
        if getattr(self, "_W_UT", None) is None:
            self._W_UT = self.tl_model.W_U.T.contiguous()
        return self._W_UT

    def _logit_chunks(self, h_BTD, buffer: str = "z"):
        """(rows, logits) over chunks of UNEMBED_ROWS positions of the flattened (B * T) positions:
        z = h W_U + b_U, into the scratch buffer `buffer`, which the next chunk overwrites."""
        W_U, b_U = self.tl_model.W_U, self.tl_model.b_U
        h_ND = h_BTD.reshape(-1, h_BTD.shape[-1])
        for start in range(0, len(h_ND), self.UNEMBED_ROWS):
            rows = slice(start, start + self.UNEMBED_ROWS)
            h_CD = h_ND[rows]
            yield rows, torch.addmm(b_U, h_CD, W_U, out=self._scratch(buffer, (len(h_CD), W_U.shape[1]), h_CD))

    def _log_softmax_(self, z_CV: torch.Tensor, p_buffer: str = "p", normalized: bool = True):
        """(log softmax(z), softmax(z), logsumexp(z)) with no new (C, V) tensor: z becomes log p in
        place, p goes into a scratch buffer. Sums by torch.sum (cascade summation): 1e-6 nats from
        a float64 computation on the embedded model, where log_softmax's own was up to 1e-4 off.
        normalized False: only logsumexp(z) is meant (z holds z - max, the buffer exp of that)."""
        max_C1 = z_CV.amax(-1, keepdim=True)
        z_CV.sub_(max_C1)
        p_CV = torch.exp(z_CV, out=self._scratch(p_buffer, z_CV.shape, z_CV))
        sum_C1 = p_CV.sum(-1, keepdim=True)
        log_sum_C1 = sum_C1.log()
        if normalized:
            p_CV.div_(sum_C1)
            z_CV.sub_(log_sum_C1)
        return z_CV, p_CV, (max_C1 + log_sum_C1)[:, 0]

    @staticmethod
    def _next_tokens(tokens_BT) -> torch.Tensor:
        """The next token per flattened position (0 at a sequence's last position, which has none)."""
        return torch.cat([tokens_BT[:, 1:], torch.zeros_like(tokens_BT[:, :1])], 1).reshape(-1)

    def _ablated(self, resid_BTD, kwargs):
        """The zero-ablated model's unembedding input (SAEBench's zero-ablation hook), as (rows, D):
        one row when it is the same at every position (after zeroing Gemma's whole residual stream
        it stays zero: no biases), else every position's. Past the hook the input is zero for every
        sequence, so without a per-sequence attention mask one sequence stands for all."""
        one_for_all = kwargs["attention_mask"] is None and kwargs["shortformer_pos_embed"] is None
        zeros = torch.zeros_like(resid_BTD[:1] if one_for_all else resid_BTD)
        h = self._unembed_input(zeros, kwargs)
        h_ND = h.reshape(-1, h.shape[-1])
        if bool((h_ND == h_ND[:1]).all()):
            return h_ND[:1]
        return h.expand(len(resid_BTD), -1, -1).reshape(-1, h.shape[-1])

    @torch.no_grad()
    def clean_statistics(self, tokens_BT) -> dict:
        """What SAEBench's get_recons_loss computes without the SAE, per token (to float rounding):
        the clean and the zero-ablated model's losses and KL(clean || ablated); and of the clean
        next-token distribution p: sum p log p, u = W_U p and b_U . p, with which
        KL(p || softmax(z)) = sum p log p - (h . u + b_U . p - sum p * logsumexp(z)) for z = h W_U + b_U;
        and the residual after the hook's block (resid), from which a later run's forward with the
        SAE spliced in starts. The blocks up to the hook run once for the clean and the ablated
        model; the vocabulary-wide tensors are made in chunks of UNEMBED_ROWS positions, each
        passed over a few times (log p, p, two products and their sums)."""
        B, T = tokens_BT.shape
        resid_BTD, kwargs = self._embed(tokens_BT)
        resid_BTD = self._blocks(resid_BTD, 0, self.layer + 1, kwargs)
        h_p = self._unembed_input(resid_BTD, kwargs)
        next_N, N, D = self._next_tokens(tokens_BT), B * T, h_p.shape[-1]
        h_abl_RD = self._ablated(resid_BTD, kwargs)
        if len(h_abl_RD) == 1:  # one ablated distribution for every position
            (_, z_abl), *_ = self._logit_chunks(h_abl_RD, "z_abl")
            log_q_V = self._log_softmax_(z_abl, "q")[0][0].clone()
            ce_abl_N = -log_q_V[next_N]
        out = {name: h_p.new_empty(N) for name in ("ce_clean", "ce_abl", "kl_abl", "p_log_p", "p_sum", "b_dot_p")}
        out["u"] = h_p.new_empty(N, D)
        ablated = None if len(h_abl_RD) == 1 else self._logit_chunks(h_abl_RD, "z_abl")
        for rows, z_p in self._logit_chunks(h_p):
            log_p, p, _ = self._log_softmax_(z_p)
            out["ce_clean"][rows] = -log_p.gather(-1, next_N[rows, None])[:, 0]
            product = self._scratch("product", p.shape, p)
            # sums over the vocabulary by torch.sum (cascade summation), as SAEBench's: a BLAS dot
            # product over 262k float32 terms was measured off by up to 3e-3 nats per token
            out["p_log_p"][rows] = torch.mul(p, log_p, out=product).sum(-1)
            out["p_sum"][rows] = p.sum(-1)
            if ablated is None:
                out["ce_abl"][rows] = ce_abl_N[rows]
                log_q = log_q_V
            else:
                log_q = self._log_softmax_(next(ablated)[1], "q")[0]
                out["ce_abl"][rows] = -log_q.gather(-1, next_N[rows, None])[:, 0]
            out["kl_abl"][rows] = out["p_log_p"][rows] - torch.mul(p, log_q, out=product).sum(-1)
            out["u"][rows] = p @ self.W_UT
            out["b_dot_p"][rows] = p @ self.tl_model.b_U
        shaped = {name: value.view(B, T, *value.shape[1:]) for name, value in out.items()}
        for name in ("ce_clean", "ce_abl"):  # no next token at the last position
            shaped[name] = shaped[name][:, :-1]
        return dict(tokens=tokens_BT.cpu(), resid=resid_BTD.cpu()) | {name: value.cpu() for name, value in shaped.items()}

    @torch.no_grad()
    def shortcut_recons_loss(
        self,
        sae,
        model,
        batch_tokens,
        activation_store,
        compute_kl,
        compute_ce_loss,
        ignore_tokens=None,
        exclude_special_tokens_from_reconstruction=False,
        model_kwargs=None,
    ):
        """core.main.get_recons_loss with the SAE-independent parts from the cache: one forward with
        the SAE spliced in (SAEBench's replacement hook), from the cached residual at the hook,
        instead of three whole forwards; its logits in chunks. ce_loss_with_sae is SAEBench's own;
        kl_div_with_sae is the same KL by the identity in clean_statistics."""
        if model_kwargs:
            raise ValueError(f"the core shortcut runs the model without kwargs, got {sorted(model_kwargs)}")
        i = len(self.clean)
        if self.cached_clean is not None and i < len(self.cached_clean) and torch.equal(self.cached_clean[i]["tokens"], batch_tokens.cpu()):
            clean = self.cached_clean[i]
        else:
            clean = self.clean_statistics(batch_tokens)
            self.clean_missed += 1
        self.clean.append(clean if self.keep else None)
        mask = self._mask(batch_tokens) if exclude_special_tokens_from_reconstruction else torch.ones_like(batch_tokens, dtype=torch.bool)
        _, kwargs = self._embed(batch_tokens)
        if "resid" in clean:  # an entry without the residual (cache format of older runs): the blocks up to the hook run again
            activations = clean["resid"].to(batch_tokens.device)
        else:
            activations = self._blocks(self._embed(batch_tokens)[0], 0, self.layer + 1, kwargs)
        # core.main.get_recons_loss's standard_replacement_hook
        reconstructed = sae.decode(sae.encode(activations.to(sae.device))).to(activations.dtype)
        spliced = torch.where(mask[..., None], reconstructed, activations.to(sae.device)).to(activations.device)
        B, T = batch_tokens.shape
        h_q = self._unembed_input(spliced, kwargs)
        next_N = self._next_tokens(batch_tokens)
        ce_sae, lse = h_q.new_empty(B * T), h_q.new_empty(B * T)
        for rows, z_q in self._logit_chunks(h_q):
            z_next = z_q.gather(-1, next_N[rows, None])[:, 0]
            lse[rows] = self._log_softmax_(z_q, normalized=False)[2]
            ce_sae[rows] = lse[rows] - z_next
        dev = h_q.device
        p_log_q = (h_q * clean["u"].to(dev)).sum(-1) + clean["b_dot_p"].to(dev) - clean["p_sum"].to(dev) * lse.view(B, T)
        return {
            "kl_div_with_sae": clean["p_log_p"].to(dev) - p_log_q,
            "kl_div_with_ablation": clean["kl_abl"].to(dev),
            "ce_loss_with_sae": ce_sae.view(B, T)[:, :-1],
            "ce_loss_without_sae": clean["ce_clean"].to(dev),
            "ce_loss_with_ablation": clean["ce_abl"].to(dev),
        }

    def recons_loss(self, original):
        def call(sae, model, batch_tokens, *args, **kwargs):
            metrics = (self.shortcut_recons_loss if self.shortcut else original)(sae, model, batch_tokens, *args, **kwargs)
            mask_BT = self._mask(batch_tokens)
            for b in range(len(batch_tokens)):
                m, m_ce = mask_BT[b], mask_BT[b, :-1]
                row = [metrics[name][b][m].double().sum().item() for name in ("kl_div_with_sae", "kl_div_with_ablation")]
                row += [
                    metrics[name][b][m_ce].double().sum().item()
                    for name in ("ce_loss_with_sae", "ce_loss_without_sae", "ce_loss_with_ablation")
                ]
                self.recons_rows.append(row)
            return metrics

        return call

    def standard_errors(self) -> dict:
        out = {}
        if self.recons_rows:
            rows = np.array(self.recons_rows)  # kl_sae, kl_abl, ce_sae, ce_clean, ce_abl (sums; the counts cancel)
            out["kl_div_score"] = jackknife_se(rows, lambda t: (t[1] - t[0]) / t[1])
            out["ce_loss_score"] = jackknife_se(rows, lambda t: (t[4] - t[2]) / (t[4] - t[3]))
        if self.variance_rows:
            out["explained_variance"] = jackknife_se(np.array(self.variance_rows), lambda t: t[0] / t[1])
        return out


def eval_core(sae, tl_model, ctx: EvalContext) -> dict:
    """SAEBench core metrics: KL / CE with the SAE spliced in, explained variance, L0, shrinkage,
    feature density; BOS / EOS / PAD excluded. Same steps as core.main.multiple_evals, but on a
    given model and an in-memory dataset, and errors raise instead of being logged away.
    Cached per key (up to ctx.cache_max_mb): the layer activations of the sparsity / variance
    batches, and for the KL / CE batches what the clean and the zero-ablated model give per token
    (_CoreRecorder.clean_statistics), so a run does one forward per batch (with the SAE) instead of
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
        if skip := _hub_skip(ctx, f"{ctx.model_name} and {ctx.core_dataset}"):
            return skip
        tl_model = HookedTransformer.from_pretrained_no_processing(
            ctx.model_name, device=ctx.device, dtype=general_utils.str_to_dtype(ctx.llm_dtype)
        )
    if ctx.core_dataset == HELDOUT_DATASET:
        texts = [text for text in _heldout_by_label(ctx).values() for text in text]
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
    key = _cache_key(
        "core",
        ctx,
        dataset=dataset_id,
        context_size=ctx.context_size,
        batch_prompts=ctx.core_batch_prompts,
        reconstruction_batches=ctx.core_reconstruction_batches,
        sparsity_variance_batches=ctx.core_sparsity_variance_batches,
    )
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
            cached = torch.load(path / "core_llm.pt")
        except Exception:  # damaged: recomputed and rewritten below
            cached = None
    tokenizer = tl_model.tokenizer
    ignore_tokens = {tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id}
    with _sae_bench_call(sae, core_main, None, ctx):
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
        recorder = _CoreRecorder(tl_model, sae, ctx.hook_name, ignore_tokens, cached, keep=cache.root is not None)
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
    result = _result(out_dir, ctx)
    result["standard_errors"] = recorder.standard_errors()
    result["cache"] = dict(
        sparsity_variance_hit=cache.root is not None and recorder.missed == 0,
        reconstruction_hit=cache.root is not None and recorder.shortcut and recorder.clean_missed == 0,
        entry=str(path) if cache.root is not None else f"off: the activations would take {acts_mb:.0f} MB",
    )
    return result


# -----------------------------------------------------------------------------
# sparse probing


def _heldout_train_test(ctx: EvalContext) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Per-label split of the held-out articles (seeded by ctx.eval_seed) into SAEBench's
    {label: [text]} train / test dicts. With the sizes None: every article, a share
    sparse_probing_train_fraction of each label for training; else SAEBench's sizes (a one-vs-rest
    task has half positives, so size // 2 per label)."""
    train, test = {}, {}
    for label, texts in sorted(_heldout_by_label(ctx).items()):
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

    if tl_model is None and (skip := _hub_skip(ctx, f"{ctx.model_name} and {', '.join(ctx.sparse_probing_datasets)}")):
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
    key = _cache_key(
        "sparse_probing",
        ctx,
        datasets=ctx.sparse_probing_datasets,
        heldout=texts_digest(ctx.heldout) if heldout_split is not None else None,
        train_size=config.probe_train_set_size,
        test_size=config.probe_test_set_size,
        train_fraction=ctx.sparse_probing_train_fraction,
        context_size=ctx.context_size,
        llm_batch_size=ctx.llm_batch_size,
        k_values=ctx.sparse_probing_k_values,
    )

    def run(artifacts: Path, save: bool) -> None:
        with (
            _sae_bench_call(sae, sparse_probing_main, tl_model, ctx),
            mock.patch.object(dataset_utils, "get_multi_label_train_test_data", load_data),
            mock.patch.dict(dataset_info.chosen_classes_per_dataset, {HELDOUT_DATASET: labels}),
            # the SAE's probes draw the same numbers whether the LLM's side was computed or loaded
            mock.patch.object(
                activation_collection,
                "get_sae_meaned_activations",
                _reseeded(activation_collection.get_sae_meaned_activations, ctx.eval_seed),
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
    result = _result(out_dir, ctx)
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


# -----------------------------------------------------------------------------
# unlearning


def eval_unlearning(sae, tl_model, ctx: EvalContext) -> dict:
    """SAEBench unlearning (WMDP-bio vs four MMLU subsets on gemma-2-2b-it, the reference's sweep).
    Runs only in the gemma-2-2b profile; SAEBench loads its own (instruct) model, so tl_model is unused."""
    import sae_bench.evals.unlearning.main as unlearning_main
    from sae_bench.evals.unlearning.eval_config import UnlearningEvalConfig

    if ctx.profile != "gemma-2-2b":
        return {
            "skipped": "unlearning needs gemma-2-2b-it, WMDP, MMLU, the gated WMDP bio forget corpus and a CUDA GPU: "
            "run the gemma-2-2b profile (gemma2_eval_settings()) on a GPU machine with hub access."
        }
    if skip := _hub_skip(ctx, f"{ctx.unlearning_model_name}, cais/wmdp, cais/mmlu and wikitext"):
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
    with _sae_bench_call(sae, unlearning_main, None, ctx):
        unlearning_main.run_eval(
            config,
            [(ctx.sae_name, sae)],
            ctx.device,
            str(out_dir),
            force_rerun=True,
            artifacts_path=str(ctx.work_dir / "artifacts"),
        )
    return _result(out_dir, ctx)


EVAL_FUNCTIONS = {"absorption": eval_absorption, "core": eval_core, "sparse_probing": eval_sparse_probing, "unlearning": eval_unlearning}


def eval_context(cfg, out: Path, heldout, device: torch.device) -> EvalContext:
    """The eval settings of this run: the profile's SAEBench settings, this run's model, layer and
    held-out text, its eval seed, a unique SAE name, a work dir inside the run dir, and the shared
    eval cache beside the activation cache."""
    name_digest = hashlib.sha256(f"{out.resolve()}-{time.time()}".encode()).hexdigest()[:8]
    settings = gemma2_eval_settings() if cfg.profile == "gemma-2-2b" else {}
    return EvalContext(
        **{
            **settings,
            **dict(
                model_name=cfg.lm_name,
                profile=cfg.profile,
                layer=cfg.layer,
                hook_name=cfg.hook_name,
                device=device.type,
                llm_dtype=precision.eval_dtype(cfg.profile, device),
                eval_seed=cfg.eval_seed,
                cache_dir=Path(cfg.cache_dir) / "evals",
                sae_name=f"{cfg.lm_name.split('/')[-1]}_{out.resolve().name}_{name_digest}",
                work_dir=out / "evals",
                heldout=[(topic, text) for topic, _, text in heldout],
            ),
        }
    )


def load_eval_model(cfg, ctx: EvalContext):
    """The embedded model as TransformerLens sees it (float32, as SAEBench runs it)."""
    hf_model, tokenizer = data.load_language_model(dataclasses.replace(cfg, llm_dtype=ctx.llm_dtype), torch.device(ctx.device))
    return load_tl_model(hf_model, tokenizer, ctx)


def run_evaluations(cfg, evals: list[str], load_sae, out: Path, info: dict, info_path: Path, heldout, device) -> list[str]:
    """Run the evals that have no result yet (or errored), each isolated: a failure is recorded as
    {"error": ...} and the others still run. final_info.json is rewritten after each. load_sae()
    returns the trained SAE (loaded only when an eval is pending). Returns the names of the evals
    that failed."""
    pending = [n for n in evals if n in EVAL_FUNCTIONS and not eval_done(info.get(EVAL_KEYS[n]))]  # separation runs in separation.py
    if not pending:
        return []
    sae = load_sae()
    ctx = eval_context(cfg, out, heldout, device)
    tl_model = load_eval_model(cfg, ctx) if cfg.profile == "gemma-3-270m" else None
    print(EvalCache(ctx.cache_dir, ctx.work_dir).describe())
    failed = []
    for name in pending:
        print(f"eval: {name} ...")
        t0 = time.time()
        try:
            result = EVAL_FUNCTIONS[name](sae, tl_model, ctx)
        except Exception as e:  # recorded, never fatal to the other evals or to training
            lines = str(e).strip().splitlines()
            result = {"error": f"{type(e).__name__}: {lines[0] if lines else ''}"}
            failed.append(name)
        result["seconds"] = round(time.time() - t0, 1)
        if (hit := cache_hit(result)) is not None:
            result["cache_hit"] = hit
        info[EVAL_KEYS[name]] = result
        info["summary"] = summarize(info)
        write_json_atomic(info_path, info)
        status = block_status(result)
        print(
            f"eval: {name} {status} in {result['seconds']:.0f} s" + (f" (eval cache {'hit' if hit else 'miss'})" if hit is not None else "")
        )
    print(EvalCache(ctx.cache_dir, ctx.work_dir).describe())
    return failed


def cache_hit(result: dict) -> bool | None:
    """Whether every cached part of an eval came from the eval cache; None when it has none."""
    flags = [v for k, v in result.get("cache", {}).items() if k.endswith("hit")]
    return all(flags) if flags else None
