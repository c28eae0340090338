"""SAEBench evals: absorption, core, sparse probing and unlearning on the run's SAE.

Four evals, one signature: eval_X(sae, tl_model, ctx) -> dict, SAEBench's own result JSON for that
eval, or {"skipped": "<what to fetch and where>"}; real errors raise (run_evaluations records them).
The embedded profile hands the locally built model to SAEBench (load_tl_model) and uses the
held-out BBC articles; the gemma-2-2b profile lets SAEBench load models and datasets from the
hub with the seed's settings (gemma2_eval_settings). Everything SAEBench writes goes under
run_i/evals/. SAEBench is imported inside the functions, so training starts without it.
"""

import contextlib
import dataclasses
import functools
import hashlib
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sae_harness import data
from sae_harness.rundir import write_json_atomic
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
    seed: int = 42
    """Seeds Python, NumPy and torch before each eval (SAEBench's absorption ignores its own seed)."""
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
    core_reconstruction_batches: int = 8
    """Batches for KL / CE (three full forwards with 262k-wide logits each: the slow part)."""
    core_sparsity_variance_batches: int = 48
    """Batches for explained variance, L0, L1, shrinkage and feature density."""

    # sparse probing
    sparse_probing_datasets: list[str] = field(default_factory=lambda: [HELDOUT_DATASET])
    """SAEBench dataset names, or HELDOUT_DATASET for one-vs-rest over ctx.heldout's labels."""
    sparse_probing_train_size: int = 50
    """Probe training documents per one-vs-rest task (half of them the positive class), as in SAEBench."""
    sparse_probing_test_size: int = 26
    """Probe test documents per one-vs-rest task (half of them the positive class)."""
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
    run_0/final_info.json); pass with sae_name, work_dir, seed."""
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


@contextlib.contextmanager
def _sae_bench_call(sae, module, tl_model, ctx: EvalContext):
    """Around one SAEBench entry point: seed, point its model loader at tl_model (if given), and
    undo what SAEBench leaves behind (it casts the SAE in place, and absorption turns grad on)."""
    from unittest import mock

    random.seed(ctx.seed)
    np.random.seed(ctx.seed)
    torch.manual_seed(ctx.seed)
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
    same token length"), then a seeded sample of ctx.absorption_vocab_size of them."""
    from collections import Counter

    from sae_bench.evals.absorption.vocab import get_alpha_tokens

    words = get_alpha_tokens(tokenizer)
    prompts = ["\n" + prompt_template.format(word=w) for w in words]
    n_tokens = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    usual = Counter(n_tokens).most_common(1)[0][0]
    words = [w for w, n in zip(words, n_tokens) if n == usual]
    if ctx.absorption_vocab_size is not None and ctx.absorption_vocab_size < len(words):
        words = random.Random(ctx.seed).sample(words, ctx.absorption_vocab_size)
    return words


def eval_absorption(sae, tl_model, ctx: EvalContext) -> dict:
    """SAEBench first-letter absorption (k-sparse probing, then absorption of the split latents)."""
    from unittest import mock

    import sae_bench.evals.absorption.common as absorption_common
    import sae_bench.evals.absorption.feature_absorption as absorption_feature
    import sae_bench.evals.absorption.main as absorption_main
    from sae_bench.evals.absorption.eval_config import AbsorptionEvalConfig
    from transformers import AutoTokenizer

    if tl_model is None and (skip := _hub_skip(ctx, ctx.model_name)):
        return skip
    out_dir = ctx.work_dir / "absorption"
    experiments_dir = out_dir / "artifacts"  # k-sparse probing / absorption parquet files and the LLM probe
    out_dir.mkdir(parents=True, exist_ok=True)  # run_eval does not create it and crashes at the very end
    config = AbsorptionEvalConfig(
        model_name=ctx.model_name,
        random_seed=ctx.seed,
        llm_batch_size=ctx.llm_batch_size,
        llm_dtype=ctx.llm_dtype,
        min_GT_probe_f1=ctx.absorption_min_probe_f1,
        min_feats_for_eval=ctx.absorption_min_letters,
        precalc_k_sparse_probe_sae_acts=ctx.absorption_precalc_sae_acts,
    )
    if tl_model is None:  # SAEBench loads the model by name; the vocabulary comes from its tokenizer
        model, tokenizer = None, AutoTokenizer.from_pretrained(ctx.model_name)
    else:
        model, tokenizer = _StopAtLayer(tl_model, ctx.layer), tl_model.tokenizer
    vocab = _absorption_vocab(tokenizer, ctx, config.prompt_template)
    dirs = dict(probes_dir=experiments_dir / "probes")  # probes are cached by model name + layer only
    # run_eval does not pass directories through, so fix them on the two experiments it calls
    with (
        _sae_bench_call(sae, absorption_main, model, ctx),
        mock.patch.object(absorption_common, "get_alpha_tokens", lambda *a, **k: vocab),  # LLM probe words
        mock.patch.object(absorption_feature, "get_alpha_tokens", lambda *a, **k: vocab),  # in-context examples
        mock.patch.object(
            absorption_main,
            "run_k_sparse_probing_experiment",
            functools.partial(absorption_main.run_k_sparse_probing_experiment, experiment_dir=experiments_dir / "k_sparse_probing", **dirs),
        ),
        mock.patch.object(
            absorption_main,
            "run_feature_absortion_experiment",
            functools.partial(
                absorption_main.run_feature_absortion_experiment,
                experiment_dir=experiments_dir / "feature_absorption",
                sparse_probing_experiment_dir=experiments_dir / "k_sparse_probing",
                **dirs,
            ),
        ),
        contextlib.chdir(out_dir),  # run_eval writes ./artifacts/absorption/<name>_k_sparse_probing.json
    ):
        results = absorption_main.run_eval(config, [(ctx.sae_name, sae)], ctx.device, ".", force_rerun=True)
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
    return result


# -----------------------------------------------------------------------------
# core


def eval_core(sae, tl_model, ctx: EvalContext) -> dict:
    """SAEBench core metrics: KL / CE with the SAE spliced in, explained variance, L0, shrinkage,
    feature density; BOS / EOS / PAD excluded. Same steps as core.main.multiple_evals, but on a
    given model and an in-memory dataset, and errors raise instead of being logged away.
    SAEBench 0.6.0 caveats (its numbers, reported as they are):
    - reconstruction_quality.explained_variance subtracts (E||x||^2 / D)^2 where it means sum_d E[x_d]^2;
      harmless at gemma-2-2b's norms (~150), but at Gemma 3 270M layer 9 (~6.6k) the "variance" turns
      negative and the value lands near or above 1 whatever the SAE does. explained_variance_legacy
      (mean over tokens of 1 - |x - x_hat|^2 / batch variance, the formula of seed-era SAEBench) is
      not affected; the summary reports that one.
    - KL is computed as p * (log softmax_p - log softmax_q) without log_softmax: Gemma 3 has no logit
      soft-cap, so a bad reconstruction can underflow q to 0 and give kl_div_with_sae = inf
      (kl_div_score = -inf), as a random SAE does."""
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
        dataset = datasets.Dataset.from_dict({"text": [text for text in _heldout_by_label(ctx).values() for text in text]})
    else:
        dataset = ctx.core_dataset  # streamed from the hub
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
        store.shuffle_input_dataset(seed=ctx.seed)
        tokenizer = tl_model.tokenizer
        metrics, feature_metrics = core_main.run_evals(
            sae,
            store,
            tl_model,
            config,
            ignore_tokens={tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id},
        )
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
    return _result(out_dir, ctx)


# -----------------------------------------------------------------------------
# sparse probing


def _heldout_train_test(ctx: EvalContext) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Seeded per-label split of the held-out articles into SAEBench's {label: [text]} train / test
    dicts; sizes follow SAEBench (a one-vs-rest task has half positives, so size // 2 per label)."""
    n_train, n_test = ctx.sparse_probing_train_size // 2, ctx.sparse_probing_test_size // 2
    train, test = {}, {}
    for label, texts in sorted(_heldout_by_label(ctx).items()):
        if len(texts) < n_train + n_test:
            raise ValueError(
                f"held-out label {label!r} has {len(texts)} articles, sparse probing needs {n_train} + {n_test}: "
                f"lower sparse_probing_train_size / sparse_probing_test_size"
            )
        texts = random.Random(ctx.seed).sample(texts, n_train + n_test)
        train[label], test[label] = texts[:n_train], texts[n_train:]
    return train, test


def eval_sparse_probing(sae, tl_model, ctx: EvalContext) -> dict:
    """SAEBench sparse probing: one-vs-rest probes per class on mean-pooled LLM residuals and on
    SAE latents, full and restricted to the top-k dims (k in ctx.sparse_probing_k_values)."""
    from unittest import mock

    import sae_bench.evals.sparse_probing.main as sparse_probing_main
    import sae_bench.sae_bench_utils.dataset_info as dataset_info
    import sae_bench.sae_bench_utils.dataset_utils as dataset_utils
    from sae_bench.evals.sparse_probing.eval_config import SparseProbingEvalConfig

    if tl_model is None and (skip := _hub_skip(ctx, f"{ctx.model_name} and {', '.join(ctx.sparse_probing_datasets)}")):
        return skip
    out_dir = ctx.work_dir / "sparse_probing"
    config = SparseProbingEvalConfig(
        random_seed=ctx.seed,
        dataset_names=ctx.sparse_probing_datasets,
        probe_train_set_size=ctx.sparse_probing_train_size,
        probe_test_set_size=ctx.sparse_probing_test_size,
        context_length=ctx.context_size,
        sae_batch_size=ctx.sae_batch_size,
        llm_batch_size=ctx.llm_batch_size,
        llm_dtype=ctx.llm_dtype,
        model_name=ctx.model_name,
        k_values=ctx.sparse_probing_k_values,
    )
    load_saebench_data = dataset_utils.get_multi_label_train_test_data

    def load_data(dataset_name, *args):  # the held-out articles, registered as one more SAEBench dataset
        return _heldout_train_test(ctx) if dataset_name == HELDOUT_DATASET else load_saebench_data(dataset_name, *args)

    labels = sorted({label for label, _ in ctx.heldout})
    with (
        _sae_bench_call(sae, sparse_probing_main, tl_model, ctx),
        mock.patch.object(dataset_utils, "get_multi_label_train_test_data", load_data),
        mock.patch.dict(dataset_info.chosen_classes_per_dataset, {HELDOUT_DATASET: labels}),
        _jaxtyping_disabled(),
    ):
        sparse_probing_main.run_eval(
            config,
            [(ctx.sae_name, sae)],
            ctx.device,
            str(out_dir),
            force_rerun=True,
            save_activations=False,  # would write ~0.3 MB per document
            artifacts_path=str(ctx.work_dir / "artifacts"),
        )
    return _result(out_dir, ctx)


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
        random_seed=ctx.seed,
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
    held-out text, a unique SAE name, and a work dir inside the run dir."""
    digest = hashlib.sha256(f"{out.resolve()}-{time.time()}".encode()).hexdigest()[:8]
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
                seed=cfg.seed,
                sae_name=f"{cfg.lm_name.split('/')[-1]}_{out.resolve().name}_{digest}",
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
    pending = [n for n in evals if not eval_done(info.get(EVAL_KEYS[n]))]
    if not pending:
        return []
    sae = load_sae()
    ctx = eval_context(cfg, out, heldout, device)
    tl_model = load_eval_model(cfg, ctx) if cfg.profile == "gemma-3-270m" else None
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
        info[EVAL_KEYS[name]] = result
        info["summary"] = summarize(info)
        write_json_atomic(info_path, info)
        status = block_status(result)
        print(f"eval: {name} {status} in {result['seconds']:.0f} s")
    return failed
