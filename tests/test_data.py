"""sae_harness.run.data: token windows, the activation buffer against a plain forward, the cache."""

import os

import numpy as np
import torch
from conftest import tiny_args

import experiment as E
from sae_harness.run import data


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


def test_buffer_epochs_replay_every_row_in_a_new_order(tmp_path, tiny_lm):
    cfg = E.parse_args(tiny_args(tmp_path))
    path = data.build_activation_cache(cfg, torch.device("cpu"), (t for _, _, t in data.load_bbc_articles()[:20]))
    buf = data.ActivationBuffer(path, data.activation_key(cfg), 100, seed=3, device=torch.device("cpu"))
    n = buf.steps_per_epoch
    order0 = torch.randperm(buf.rows, generator=torch.Generator().manual_seed(3)).numpy()  # epoch 0: as before epochs existed
    expected = torch.from_numpy(np.array(buf.acts[np.sort(order0[200:300])])).view(torch.bfloat16).float() / buf.scale
    assert torch.equal(buf.batch(2), expected)
    first = torch.cat([buf.batch(s) for s in range(n)])
    second = torch.cat([buf.batch(s) for s in range(n, 2 * n)])
    assert sorted(map(tuple, first.tolist())) == sorted(map(tuple, second.tolist()))  # the same rows again
    assert not torch.equal(first, second)  # in another order
    assert torch.equal(buf.batch(n + 1), data.ActivationBuffer(path, data.activation_key(cfg), 100, 3, torch.device("cpu")).batch(n + 1))
    assert E.parse_args(tiny_args(tmp_path) + ["--epochs", "3"]).total_steps == 3 * cfg.total_steps


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
