import os
import signal
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# A suite started in the background by a non-interactive shell (nohup, `cmd &`) inherits SIGINT ignored, so
# Ctrl-C never reaches the code under test; the interrupt tests need Python's own handler, as in a terminal
# (and the sweeps they start as processes then inherit the default disposition).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sae_harness.run.threads import policy

os.environ.update(policy())  # before torch loads, as experiment.py does: the tests share the CPU with a run (threads.py)

import pytest
import torch

from sae_harness.run.standins import char_tokenizer as tiny_tokenizer  # noqa: F401  (the tests' tokenizer)


def make_tiny_gemma3(seed=0):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=259,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        sliding_window=16,
        max_position_embeddings=256,
        query_pre_attn_scalar=32,
    )
    return Gemma3ForCausalLM(config).eval()


def make_tiny_gemma2(seed=0, **overrides):
    """A random Gemma 2 small enough for a test, with what sets Gemma 2 apart switched on at the
    tiny scale: a sliding window (8) shorter than the test contexts on alternate layers, attention
    and final-logit soft-caps low enough to bite at these logit sizes, a query scale that is not
    head_dim, and random (not 1-centred) RMSNorm gains."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(seed)
    config = dict(
        vocab_size=259,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        sliding_window=8,
        max_position_embeddings=256,
        query_pre_attn_scalar=8,
        attn_logit_softcapping=5.0,
        final_logit_softcapping=3.0,
        initializer_range=0.2,
    )
    model = Gemma2ForCausalLM(Gemma2Config(**{**config, **overrides})).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.normal_(0, 0.3)
    return model


TINY = [
    "--tokens", "3000", "--epochs", "1", "--dict_size", "128", "--k", "8", "--batch_size", "100", "--layer", "1",
    "--context_length", "32", "--llm_batch_size", "4", "--evals", "none", "--checkpoint_every", "7",
]  # fmt: skip


def tiny_args(tmp_path, out="run_1", *extra):
    """experiment.py options for a 30-step run on the tiny model (tiny_lm), its own cache dir."""
    return ["--out_dir", str(tmp_path / out), "--cache_dir", str(tmp_path / "cache"), *TINY, *extra]


@pytest.fixture
def tiny_lm(monkeypatch):
    """sae_harness.run.data.load_language_model returns a tiny random Gemma 3 (64 wide) and a byte tokenizer."""
    from sae_harness.run import data

    model, tokenizer = make_tiny_gemma3(), tiny_tokenizer()
    monkeypatch.setattr(data, "load_language_model", lambda cfg, device: (model, tokenizer))
    return model, tokenizer


def float64_recons_loss(tl_model, sae, tokens_BT, hook_name: str, ignore: set) -> dict:
    """SAEBench's get_recons_loss per token, computed in float64 from TransformerLens's logits: the
    reference its float32 computations (and the core shortcut's) are held to."""
    mask_BT = torch.ones_like(tokens_BT, dtype=torch.bool)
    for t in ignore:
        mask_BT &= tokens_BT != t

    def splice(acts, hook):
        return torch.where(mask_BT[..., None], sae.decode(sae.encode(acts)).to(acts.dtype), acts)

    with torch.no_grad():
        log_p = torch.log_softmax(tl_model(tokens_BT).double(), -1)
        log_q = torch.log_softmax(tl_model.run_with_hooks(tokens_BT, fwd_hooks=[(hook_name, splice)]).double(), -1)
        log_a = torch.log_softmax(
            tl_model.run_with_hooks(tokens_BT, fwd_hooks=[(hook_name, lambda a, hook: torch.zeros_like(a))]).double(), -1
        )
    next_BT1 = tokens_BT[:, 1:, None]
    return {
        "kl_div_with_sae": (log_p.exp() * (log_p - log_q)).sum(-1),
        "kl_div_with_ablation": (log_p.exp() * (log_p - log_a)).sum(-1),
        "ce_loss_with_sae": -log_q[:, :-1].gather(-1, next_BT1)[..., 0],
        "ce_loss_without_sae": -log_p[:, :-1].gather(-1, next_BT1)[..., 0],
        "ce_loss_with_ablation": -log_a[:, :-1].gather(-1, next_BT1)[..., 0],
    }


def assert_as_accurate_as(ours: dict, saebench: dict, truth: dict, slack: dict) -> None:
    """Each metric of ours is at most slack[name] further from the float64 truth than SAEBench's own
    float32 computation is (which also keeps the two within the sum of their errors)."""
    for name, true in truth.items():
        ours_err = (ours[name].double() - true).abs().max().item()
        saebench_err = (saebench[name].double() - true).abs().max().item()
        assert ours_err <= saebench_err + slack[name], (name, ours_err, saebench_err)
