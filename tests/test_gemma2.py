"""The Gemma 2 path, beside the Gemma 3 one: a tiny random Gemma 2 goes through the activation
extraction, training and the local eval route, and TransformerLens's hook (what the evals read)
equals the cached activations (what the SAE trained on) for both architectures."""

import copy
import dataclasses
import json

import pytest
import torch
from conftest import assert_as_accurate_as, float64_recons_loss, make_tiny_gemma2, make_tiny_gemma3, tiny_tokenizer
from transformer_lens import HookedTransformerConfig
from transformer_lens import loading_from_pretrained as loading

import experiment as E
from sae_harness import evals
from sae_harness.evals import core_recorder
from sae_harness.run import data
from sae_harness.run.standins import GEMMA_2_2B

TINY = {"google/gemma-2-2b": make_tiny_gemma2, "google/gemma-3-270m": make_tiny_gemma3}
LAYER = 2
TEXTS = [
    "The quick brown fox jumps over the lazy dog, and the dog does not mind at all. " * 3,
    "Markets rallied on Tuesday after the central bank cut interest rates by a quarter point.",
    "Shares in the carmaker fell 4% as sales slowed in Europe and the company warned on profits.",
]

# the embedded Gemma 3 270M's config as transformers reads it from the GGUF package (printed here);
# google/gemma-2-2b's is sae_harness.run.standins.GEMMA_2_2B.
GEMMA_3_270M = dict(
    head_dim=256,
    hidden_activation="gelu_pytorch_tanh",
    hidden_size=640,
    intermediate_size=2048,
    max_position_embeddings=32768,
    num_attention_heads=4,
    num_hidden_layers=18,
    num_key_value_heads=1,
    query_pre_attn_scalar=256,
    rms_norm_eps=9.999999974752427e-07,
    rope_theta=1_000_000.0,
    rope_local_base_freq=10_000.0,
    sliding_window=512,
    vocab_size=262144,
)


@pytest.mark.parametrize("name, published", [("google/gemma-2-2b", GEMMA_2_2B), ("google/gemma-3-270m", GEMMA_3_270M)])
def test_tl_config_from_hf_config_is_transformer_lens_own_for_published_models(name, published):
    """For the real models, the config built from the HF config is the one TransformerLens has by name."""
    from transformers import Gemma2Config, Gemma3TextConfig

    hf_config = (Gemma2Config if "gemma-2" in name else Gemma3TextConfig)(**published)
    ours = HookedTransformerConfig.from_dict(evals.tl_config_dict(name, hf_config)).to_dict()
    named = HookedTransformerConfig.from_dict(loading.convert_hf_model_config(name)).to_dict()
    assert ours.pop("eps") == pytest.approx(named.pop("eps"), rel=1e-6)
    assert ours == named


def test_tl_config_takes_what_the_hf_config_says():
    """A config that differs from the published one in every converted setting comes out different
    in each of them (the tiny model's sizes, window, soft-caps, query scale, layer pattern)."""
    c = make_tiny_gemma2().config
    c.layer_types = ["full_attention", "sliding_attention"] * 2
    cfg = HookedTransformerConfig.from_dict(evals.tl_config_dict("google/gemma-2-2b", c))
    assert (cfg.d_model, cfg.d_head, cfg.n_heads, cfg.n_key_value_heads, cfg.d_mlp, cfg.n_layers, cfg.d_vocab) == (
        64,
        32,
        2,
        1,
        128,
        4,
        259,
    )
    assert (cfg.window_size, cfg.attn_types, cfg.n_ctx) == (8, ["global", "local"] * 2, 256)
    assert (cfg.attn_scores_soft_cap, cfg.output_logits_soft_cap, cfg.attn_scale) == (5.0, 3.0, pytest.approx(8**0.5))
    assert cfg.original_architecture == "Gemma2ForCausalLM"


def test_tl_config_refuses_rope_scaling():
    from transformers import Gemma3TextConfig

    scaled = Gemma3TextConfig(**GEMMA_3_270M, rope_scaling={"rope_type": "linear", "factor": 8.0})
    with pytest.raises(ValueError, match="RoPE scaling"):
        evals.tl_config_dict("google/gemma-3-270m", scaled)


def test_load_tl_model_refuses_the_wrong_architecture():
    ctx = evals.EvalContext(model_name="google/gemma-3-270m", layer=LAYER, hook_name=f"blocks.{LAYER}.hook_resid_post")
    with pytest.raises(ValueError, match="Gemma3ForCausalLM in TransformerLens, the model is a Gemma2ForCausalLM"):
        evals.load_tl_model(make_tiny_gemma2(), tiny_tokenizer(add_bos=True), ctx)


def test_tiny_gemma2_exercises_softcaps_and_the_sliding_window():
    """The equality tests below can only catch a soft-cap or window mismatch if these change the
    tiny model's activations and logits: each one does, by far more than the tolerances."""
    tok = tiny_tokenizer(add_bos=True)
    ids = torch.tensor(list(data.token_windows(TEXTS, tok, 32, 6)))
    with torch.no_grad():
        base = make_tiny_gemma2()(ids, output_hidden_states=True)
        for overrides in (dict(attn_logit_softcapping=None), dict(sliding_window=64), dict(query_pre_attn_scalar=32)):
            other = make_tiny_gemma2(**overrides)(ids, output_hidden_states=True)
            a, b = base.hidden_states[LAYER + 1], other.hidden_states[LAYER + 1]
            assert (a - b).norm() / a.norm() > 0.05, overrides
        uncapped = make_tiny_gemma2(final_logit_softcapping=None)(ids).logits
    assert base.logits.abs().max() < 3.0 < uncapped.abs().max()


def cached_and_tl(model_name, tmp_path, extract_dtype, eval_dtype):
    """(cached activations as the SAE trains on them, the TransformerLens hook the evals read, on the
    same windows with BOS dropped, TL logits, HF logits in float32)."""
    from nnsight import TransformersModel

    model, tok = TINY[model_name](), tiny_tokenizer(add_bos=True)
    windows = list(data.token_windows(TEXTS, tok, 32, 100))
    assert len(windows) >= 6 and all(w[0] == tok.bos_token_id for w in windows)
    n_rows = len(windows) * 31
    lm = TransformersModel(copy.deepcopy(model).to(getattr(torch, extract_dtype)), task="text-generation", tokenizer=tok)
    data.extract_activations(lm, tok, iter(windows), LAYER, n_rows, tmp_path / "acts.npy", 4, "cpu")
    import numpy as np

    cached_ND = torch.from_numpy(np.load(tmp_path / "acts.npy")).view(torch.bfloat16).float()
    ctx = evals.EvalContext(model_name=model_name, layer=LAYER, hook_name=f"blocks.{LAYER}.hook_resid_post", llm_dtype=eval_dtype)
    tl = evals.load_tl_model(copy.deepcopy(model), tok, ctx)
    ids = torch.tensor(windows)
    with torch.no_grad():
        tl_logits, cache = tl.run_with_cache(ids, names_filter=ctx.hook_name)
        hf_logits = model(ids).logits
    tl_ND = cache[ctx.hook_name][:, 1:].reshape(-1, cached_ND.shape[1]).float()  # BOS dropped, as the cache does
    return cached_ND, tl_ND, tl_logits.float(), hf_logits


@pytest.mark.parametrize("model_name", list(TINY))
def test_tl_hook_equals_cached_activations_float32(model_name, tmp_path):
    """Extraction and eval in float32: they differ by the cache's bf16 rounding only (2^-9 relative),
    and TransformerLens's logits (what core's KL / CE read) equal the HF model's, soft-cap included."""
    cached, tl, tl_logits, hf_logits = cached_and_tl(model_name, tmp_path, "float32", "float32")
    torch.testing.assert_close(tl, cached, rtol=2**-8, atol=1e-5)
    torch.testing.assert_close(tl_logits, hf_logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "model_name, eval_dtype",
    [("google/gemma-3-270m", "float32"), ("google/gemma-2-2b", "bfloat16"), ("google/gemma-2-2b", "float32")],
)
def test_tl_hook_equals_cached_activations_as_the_profiles_run(model_name, eval_dtype, tmp_path):
    """As the runs do it where bfloat16 is fast (CUDA; CPUs with native bfloat16): extraction in
    bfloat16; evals in float32 (embedded profile) or bfloat16 (gemma-2-2b profile on CUDA). The two then differ by a bfloat16 forward's rounding,
    about 1% of the activations' norm here (measured 0.7-1.5% on these tiny models); a wrong layer,
    position or soft-cap is off by 25% or more."""
    cached, tl, _, _ = cached_and_tl(model_name, tmp_path, "bfloat16", eval_dtype)
    rel = ((tl - cached).norm() / cached.norm()).item()
    assert rel < 0.03
    assert torch.nn.functional.cosine_similarity(tl, cached, dim=1).min() > 0.99


@pytest.mark.slow
def test_main_end_to_end_on_tiny_gemma2_with_core_eval(tmp_path, monkeypatch):
    """A tiny Gemma 2 through experiment.main: extraction (bfloat16, asked for), training, the SAE saved, and
    SAEBench core on the local eval route (TransformerLens built from the tiny model in float32)."""
    model, tok = make_tiny_gemma2(), tiny_tokenizer(add_bos=True)
    loaded = []

    def load(cfg, device):
        loaded.append(cfg.llm_dtype)
        return copy.deepcopy(model).to(getattr(torch, cfg.llm_dtype)), tok

    monkeypatch.setattr(data, "load_language_model", load)
    monkeypatch.setattr(data, "check_model_available", lambda name: None)  # the hub is not reachable here
    context = evals.eval_context

    def small_context(*args):  # core's default 8 + 48 batches over all held-out articles take ~40 s
        ctx = context(*args)
        return dataclasses.replace(ctx, core_reconstruction_batches=2, core_sparsity_variance_batches=6, heldout=ctx.heldout[::10])

    monkeypatch.setattr(evals, "eval_context", small_context)
    run = tmp_path / "run_1"
    argv = ["--out_dir", str(run), "--cache_dir", str(tmp_path / "cache"), "--profile", "gemma-3-270m", "--lm_name", "google/gemma-2-2b"]
    argv += ["--layer", str(LAYER), "--tokens", "3000", "--epochs", "1", "--dict_size", "128", "--k", "8", "--batch_size", "100"]
    argv += ["--context_length", "32", "--llm_batch_size", "4", "--evals", "core", "--llm_dtype", "bfloat16"]
    assert E.main(argv) == 0
    assert loaded == ["bfloat16", "float32"]  # extraction, then the eval model
    info = json.loads((run / "final_info.json").read_text())
    train = info[f"training results for layer {LAYER}"]
    assert train["config"]["lm_name"] == "google/gemma-2-2b" and train["final_info"]["training_steps"] == 30
    core = info["core evaluation results"]
    assert "error" not in core and "skipped" not in core, core
    metrics = core["eval_result_metrics"]
    assert 0 < metrics["sparsity"]["l0"] <= 8
    assert core["sae_cfg_dict"]["hook_name"] == f"blocks.{LAYER}.hook_resid_post"
    assert core["sae_cfg_dict"]["model_name"] == "google/gemma-2-2b"
    # the SAE, trained on the cache, reconstructs what TransformerLens reads better than chance
    assert metrics["reconstruction_quality"]["explained_variance_legacy"] > 0.2


def test_core_shortcut_on_tiny_gemma3_matches_saebench_with_one_ablated_row(monkeypatch):
    """Gemma 3 (no soft-cap, no biases): zeroing the residual stream leaves zeros to the end, so the
    ablated logits are one row for every position; the shortcut computes that row once and still
    gives SAEBench's get_recons_loss per token, as close to a float64 computation as SAEBench's own.
    Its forward with the SAE starts from the residual it cached."""
    import sae_bench.evals.core.main as core_main
    from sae_bench.custom_saes.topk_sae import TopKSAE

    model, tok = make_tiny_gemma3(), tiny_tokenizer(add_bos=True)
    hook = f"blocks.{LAYER}.hook_resid_post"
    tl = evals.load_tl_model(model, tok, evals.EvalContext(model_name="google/gemma-3-270m", layer=LAYER, hook_name=hook))
    torch.manual_seed(0)
    sae = TopKSAE(64, 256, 8, "google/gemma-3-270m", LAYER, torch.device("cpu"), torch.float32)
    with torch.no_grad():
        sae.W_dec.copy_(torch.nn.functional.normalize(torch.randn(256, 64), dim=1))
        sae.W_enc.copy_(sae.W_dec.T)
    sae.cfg.hook_name = hook
    tokens = torch.tensor(list(data.token_windows(TEXTS, tok, 24, 3)))
    ignore = {tok.bos_token_id, tok.pad_token_id, tok.eos_token_id}
    args = dict(
        activation_store=None, compute_kl=True, compute_ce_loss=True, ignore_tokens=ignore, exclude_special_tokens_from_reconstruction=True
    )
    ref = core_main.get_recons_loss(sae, tl, tokens, **args)
    rec = core_recorder.CoreRecorder(tl, sae, hook, ignore, None)
    unembedded = []
    chunks = rec._logit_chunks
    monkeypatch.setattr(rec, "_logit_chunks", lambda h, *args: unembedded.append(h.reshape(-1, 64).shape[0]) or chunks(h, *args))
    ours = rec.shortcut_recons_loss(sae, tl, tokens, **args)
    assert unembedded == [1, tokens.numel(), tokens.numel()]  # the ablated row once, the clean model, the SAE's
    truth = float64_recons_loss(tl, sae, tokens, hook, ignore)
    # KL with ablation is sum p log p - sum p log q in float32, two sums near 6: a few of their ulps
    # (4.8e-7) apart from the truth (1.16e-6 measured on an AMD EPYC, under 1e-6 on an Intel AMX CPU)
    assert_as_accurate_as(ours, ref, truth, dict.fromkeys(truth, 1e-6) | {"kl_div_with_sae": 1e-4, "kl_div_with_ablation": 3e-6})
    assert ref["kl_div_with_sae"].abs().max() > 1e-3
    assert torch.equal(rec.clean[0]["resid"], tl.run_with_cache(tokens, names_filter=hook)[1][hook])
