"""Activations, the run directory, resume and end-to-end behaviour on a tiny model."""

import json
import os
import signal

import numpy as np
import pytest
import torch

import experiment as E
from sae_harness import data

TINY = [
    "--tokens",
    "3000",
    "--dict_size",
    "128",
    "--k",
    "8",
    "--batch_size",
    "100",
    "--layer",
    "1",
    "--context_length",
    "32",
    "--llm_batch_size",
    "4",
    "--evals",
    "none",
    "--checkpoint_every",
    "7",
]


def tiny_args(tmp_path, out="run_1", *extra):
    return ["--out_dir", str(tmp_path / out), "--cache_dir", str(tmp_path / "cache"), *TINY, *extra]


def test_buffer_activations_equal_plain_forward(tmp_path, tiny_lm):
    from nnsight import TransformersModel

    model, tok = tiny_lm
    texts = ["The quick brown fox jumps over the lazy dog. " * 5, "Markets rallied on Tuesday."]
    windows = list(data.token_windows(texts, tok, 16, 100))
    assert all(w[0] == tok.bos_token_id and len(w) == 16 for w in windows)
    n_rows = len(windows) * 15
    data.extract_activations(
        TransformersModel(model, task="text-generation", tokenizer=tok), tok, iter(windows), 2, n_rows, tmp_path / "a.npy", 3, "cpu"
    )
    import numpy as np

    got = torch.from_numpy(np.load(tmp_path / "a.npy")).view(torch.bfloat16).float()
    with torch.no_grad():
        hidden = model(torch.tensor(windows), output_hidden_states=True).hidden_states[3]  # output of layer 2
    expected = hidden[:, 1:].reshape(-1, hidden.shape[-1]).to(torch.bfloat16).float()  # BOS dropped
    torch.testing.assert_close(got, expected)


def test_buffer_batches_are_a_seeded_permutation(tmp_path, tiny_lm):
    cfg = E.parse_args(tiny_args(tmp_path))
    path = data.build_activation_cache(cfg, torch.device("cpu"), (t for _, _, t in data.load_bbc_articles()[:20]))
    buf = data.ActivationBuffer(path, data.activation_key(cfg), 100, seed=3, device=torch.device("cpu"))
    rows = torch.cat([buf.batch(s) for s in range(cfg.tokens // 100)])
    all_rows = torch.from_numpy(np.array(buf.acts)).view(torch.bfloat16).float() / buf.scale
    assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, all_rows.tolist()))
    assert not torch.equal(rows, all_rows)  # shuffled
    assert torch.equal(buf.batch(5), data.ActivationBuffer(path, data.activation_key(cfg), 100, 3, torch.device("cpu")).batch(5))
    assert abs(rows.pow(2).sum(-1).mean().item() / buf.d_model - 1) < 0.05  # E||x||^2 = D after scaling


def test_corrupt_cache_is_rebuilt_not_used(tmp_path, tiny_lm):
    cfg = E.parse_args(tiny_args(tmp_path))
    texts = [t for _, _, t in data.load_bbc_articles()[:20]]
    path = data.build_activation_cache(cfg, torch.device("cpu"), iter(texts))
    assert data.read_cache(path, data.activation_key(cfg)) is not None
    with open(path / "acts.npy", "r+b") as f:  # truncated write
        f.truncate(os.path.getsize(path / "acts.npy") // 2)
    assert data.read_cache(path, data.activation_key(cfg)) is None
    data.build_activation_cache(cfg, torch.device("cpu"), iter(texts))
    assert data.read_cache(path, data.activation_key(cfg)) is not None
    assert not list(path.parent.glob("*.tmp*"))


def read_log(run):
    return [json.loads(line) for line in (run / "training_log.jsonl").read_text().splitlines()]


def test_main_end_to_end_writes_results_log_and_saelens_sae(tmp_path, tiny_lm):
    assert E.main(tiny_args(tmp_path)) == 0
    run = tmp_path / "run_1"
    info = json.loads((run / "final_info.json").read_text())
    block = info["training results for layer 1"]
    for key in (
        "dict_size",
        "k",
        "lr",
        "steps",
        "seed",
        "layer",
        "lm_name",
        "profile",
        "variant",
        "ortho_lambda_max",
        "ortho_base_threshold",
        "weight_schedule",
        "threshold_schedule",
        "decay_rate",
    ):
        assert key in block["config"], key
    final = block["final_info"]
    assert final["training_steps"] == 30 and final["tokens"] == 3000 and final["seconds"] > 0
    assert block["config"]["profile"] == "gemma-3-270m" and block["config"]["variant"] == "progressive"
    log = read_log(run)
    assert [r["step"] for r in log] == list(range(0, 30, 5)) + [29]  # on the ortho_every stride (5), and the last step
    for key in (
        "step",
        "progress",
        "tokens",
        "loss",
        "recon_loss",
        "auxk_loss",
        "ortho_penalty",
        "ortho_lambda",
        "threshold",
        "l0",
        "dead_fraction",
        "sep_cos_mean",
        "sep_cos_p95",
        "sep_frac_above_thr",
        "sep_pairs_penalized",
        "ortho_share",
    ):
        assert key in log[0], key
    assert log[0]["ortho_penalty"] > 0 and log[0]["ortho_share"] > 0
    assert log[0]["l0"] <= 8
    assert final["final_loss"] == pytest.approx(log[-1]["loss"])

    from sae_lens import SAE, TopKSAE

    lens = SAE.load_from_disk(str(run / "sae"))
    assert isinstance(lens, TopKSAE) and lens.cfg.k == 8 and lens.cfg.d_sae == 128
    sae = E.load_sae(run / "sae")
    x = torch.randn(20, 64) * 30
    torch.testing.assert_close(lens(x), sae(x), rtol=1e-4, atol=1e-3)
    assert sae.check_decoder_norms()
    assert not (run / "checkpoint.pt").exists()


def test_saved_sae_works_on_raw_activations(tmp_path):
    sae = E.AutoEncoderTopK(16, 64, 4, "m", 0, device="cpu", seed=0)
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_()
    x = torch.randn(10, 16)
    scale = 7.5
    lens = sae.to_saelens(scale)
    torch.testing.assert_close(lens(x * scale), sae(x) * scale, rtol=1e-5, atol=1e-4)


def test_interrupt_then_resume_matches_uninterrupted_run(tmp_path, tiny_lm, monkeypatch):
    assert E.main(tiny_args(tmp_path, "run_11")) == 0
    original = E.TrainerTopK.update

    def interrupting(self, x, step):
        if step == 12:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, x, step)

    monkeypatch.setattr(E.TrainerTopK, "update", interrupting)
    with pytest.raises(E.Interrupted, match="Resume with the same command"):
        E.main(tiny_args(tmp_path, "run_12"))
    assert (tmp_path / "run_12" / "checkpoint.pt").exists()
    assert torch.load(tmp_path / "run_12" / "checkpoint.pt", weights_only=False)["step"] == 13
    monkeypatch.setattr(E.TrainerTopK, "update", original)
    assert E.main(tiny_args(tmp_path, "run_12")) == 0
    a, b = E.load_sae(tmp_path / "run_11" / "sae"), E.load_sae(tmp_path / "run_12" / "sae")
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-5, atol=1e-6)
    log_a, log_b = read_log(tmp_path / "run_11"), read_log(tmp_path / "run_12")
    assert [r["step"] for r in log_a] == [r["step"] for r in log_b]
    assert log_a[-1]["loss"] == pytest.approx(log_b[-1]["loss"], rel=1e-5)


def test_same_seed_same_final_loss(tmp_path, tiny_lm):
    E.main(tiny_args(tmp_path, "run_11"))
    E.main(tiny_args(tmp_path, "run_12"))
    loss = [
        json.loads((tmp_path / r / "final_info.json").read_text())["training results for layer 1"]["final_info"]["final_loss"]
        for r in ("run_11", "run_12")
    ]
    assert loss[0] == loss[1]
