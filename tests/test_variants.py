"""The variants designed from the ground truth (issue: beyond the anchors; docs/method.md): their
definitions against brute force, their schedules, and each trained end to end on the tiny synth
world and the tiny language model."""

import json

import pytest
import torch
from conftest import tiny_args
from test_pinned import tiny_synth_run

import experiment as E

VARIANTS = ("rising", "contained", "candidates", "matryoshka_progressive", "following")


def test_contained_weight_matches_a_loop_over_pairs():
    """c_ij x (1 - min(|m_i|, |m_j|) / max(|m_i|, |m_j|)), brute force over every pair of fired latents."""
    gen = torch.Generator().manual_seed(0)
    rates = torch.rand(12, generator=gen) * 0.6
    active = torch.rand(40, 12, generator=gen) < rates  # latents of very different frequencies
    active[:, 3] = False  # one never fires
    thr = 0.3
    fired, n, c = E.cofiring(active, thr, contained=True)
    assert 3 not in fired.tolist()
    for a, i in enumerate(fired.tolist()):
        for b, j in enumerate(fired.tolist()):
            mi, mj = active[:, i], active[:, j]
            both, lo, hi = (mi & mj).sum().item(), min(mi.sum().item(), mj.sum().item()), max(mi.sum().item(), mj.sum().item())
            idea = min(max((both / lo - thr) / thr, 0.0), 1.0)
            expected = 0.0 if i == j else idea * (1 - lo / hi)
            assert c[a, b].item() == pytest.approx(expected, abs=1e-6), (i, j)
    assert torch.equal(E.cofiring(active, thr).n_AA, n)  # n_ij itself is the idea's


def test_contained_weight_favours_a_child_inside_its_parent():
    """A child firing only where its parent fires (and the parent 4x as often) keeps its weight; two
    latents that always fire together at the same rate get none; the idea weighs both fully."""
    active = torch.zeros(100, 4, dtype=torch.bool)
    active[:40, 0] = True  # parent
    active[:10, 1] = True  # child: inside the parent's firings
    active[50:70, 2] = active[50:70, 3] = True  # twins
    idea, contained = E.cofiring(active, 0.25).c_AA, E.cofiring(active, 0.25, contained=True).c_AA
    assert idea[0, 1] == 1 and idea[2, 3] == 1
    assert contained[0, 1].item() == pytest.approx(0.75) and contained[2, 3] == 0


def test_near_firing_is_each_tokens_top_k_above_zero():
    gen = torch.Generator().manual_seed(1)
    pre = torch.randn(30, 20, generator=gen).relu()
    got = E.near_firing(pre, 6)
    for t in range(30):
        order = sorted(range(20), key=lambda f: -pre[t, f].item())[:6]
        assert set(got[t].nonzero().squeeze(1).tolist()) == {f for f in order if pre[t, f] > 0}
    assert E.near_firing(pre, 100).sum() == (pre > 0).sum()  # k beyond F: every positive one


def test_rising_weight_mirrors_the_schedule_at_the_same_dose():
    cfg = E.parse_args(["--out_dir", "x", "--variant", "rising", "--profile", "synth"])
    lam = [E.ortho_lambda(i / 1000, cfg) for i in range(1001)]
    assert lam[0] == 0 and lam[-1] == pytest.approx(cfg.ortho_lambda_max) and lam[500] == pytest.approx(cfg.ortho_lambda_max / 4)
    dose = sum((a + b) / 2 for a, b in zip(lam, lam[1:])) / 1000
    assert dose == pytest.approx(cfg.ortho_lambda_max / 3, rel=1e-4)
    assert E.ortho_threshold(0.9, cfg) == cfg.ortho_base_threshold  # held: thr -> 0 would count every pair


def test_contained_trains_on_the_reference_and_its_penalty_is_the_definition(monkeypatch):
    """The fast path computes the idea's c only: the contained arm's P and gradient are the
    reference definition's, by autograd, on every device."""
    cfg = E.parse_args(["--out_dir", "x", "--variant", "contained", "--profile", "synth", "--dict_size", "32", "--k", "4"])
    sae = E.AutoEncoderTopK(16, 32, 4, "synth:tiny", 0, device="cpu", seed=0)
    trainer = E.TrainerTopK(cfg, sae)
    active = torch.rand(64, 32, generator=torch.Generator().manual_seed(2)) < 0.2
    value, grad = trainer.penalty_value_and_grad(active, 0.2)
    W = sae.W_dec.detach().clone().requires_grad_()
    expected = E.orthogonality_penalty(W, active, 0.2, contained=True)
    expected.backward()
    assert value.item() == pytest.approx(expected.item(), rel=1e-6) and torch.allclose(grad, W.grad, atol=1e-7)
    assert value.item() < E.orthogonality_penalty(W.detach(), active, 0.2).item()  # a part of the idea's weight


def test_following_weight_is_the_contained_overlap_over_its_mean_so_far():
    """lambda2 = max/3 x clamp(M_t / mean of M so far, 0, 3), M_t the contained arm's P on batch t,
    against the definition on each ortho_every-th step, held in between; it survives a checkpoint."""
    cfg = E.parse_args(["--out_dir", "x", "--variant", "following", "--profile", "synth", "--dict_size", "32", "--k", "4"])
    cfg.ortho_every = 2
    sae = E.AutoEncoderTopK(16, 32, 4, "synth:tiny", 0, device="cpu", seed=0)
    trainer = E.TrainerTopK(cfg, sae)
    gen = torch.Generator().manual_seed(4)
    masks = [torch.rand(64, 32, generator=gen) < rate for rate in (0.3, 0.1, 0.3, 0.5, 0.05, 0.2)]
    history, factors = [], []
    for step, mask in enumerate(masks):
        if step % 2 == 0:
            history.append(E.orthogonality_penalty(sae.W_dec.detach(), mask, 0.2, contained=True).item())
            expected = min(3.0, max(0.0, history[-1] / (sum(history) / len(history))))
        factors.append(trainer.follow_factor(mask, 0.2, step))
        assert factors[-1] == pytest.approx(expected, rel=1e-6), step
    assert factors[0] == pytest.approx(1.0) and len(set(round(f, 6) for f in factors[::2])) == 3  # it moved with the batch
    assert E.ortho_lambda(0.5, cfg) == pytest.approx(cfg.ortho_lambda_max / 3) and E.ortho_threshold(0.9, cfg) == cfg.ortho_base_threshold
    resumed = E.TrainerTopK(cfg, E.AutoEncoderTopK(16, 32, 4, "synth:tiny", 0, device="cpu", seed=0))
    resumed.load_state_dict(trainer.state_dict())
    assert resumed.follow_factor(masks[1], 0.2, 7) == factors[-1]  # held across the checkpoint
    assert resumed.follow_factor(masks[0], 0.2, 8) == pytest.approx(trainer.follow_factor(masks[0], 0.2, 8))


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_trains_end_to_end_on_the_tiny_world(variant, tmp_path, monkeypatch):
    run = tiny_synth_run(variant, tmp_path, monkeypatch)
    info = json.loads((run / "final_info.json").read_text())
    summary = info["summary"]
    assert summary["synth_absorption_any"]["status"] == "ok" and summary["synth_mcc"]["status"] == "ok"
    log = [json.loads(line) for line in (run / "training_log.jsonl").read_text().splitlines()]
    assert any(r["ortho_loss"] > 0 for r in log) and all("mech_hier_share" in r for r in log)
    if variant == "rising":
        assert log[0]["ortho_lambda"] < log[-2]["ortho_lambda"]
    if variant == "matryoshka_progressive":
        assert any(r["nested_loss"] > 0 for r in log)
    if variant == "following":  # the weight moves with the batch, within [0, max], and the dose it got is reported
        lam = {r["ortho_lambda"] for r in log}
        assert len(lam) > 2 and all(0 <= v <= E.Config.ortho_lambda_max for v in lam)
        final = next(v["final_info"] for k, v in info.items() if k.startswith("training results"))
        assert final["ortho_lambda_mean"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_trains_end_to_end_on_the_tiny_language_model(variant, tmp_path, tiny_lm):
    assert E.main(tiny_args(tmp_path, "run_1", "--variant", variant)) == 0
    log = [json.loads(line) for line in (tmp_path / "run_1" / "training_log.jsonl").read_text().splitlines()]
    assert any(r["ortho_loss"] > 0 for r in log)


def test_candidates_count_co_firing_over_the_top_2k_pre_activations():
    cfg = E.parse_args(
        ["--out_dir", "x", "--variant", "candidates", "--profile", "synth", "--dict_size", "32", "--k", "3", "--sae_dtype", "float32"]
    )
    cfg.tokens, cfg.batch_size = 64, 64
    sae = E.AutoEncoderTopK(16, 32, 3, "synth:tiny", 0, device="cpu", seed=0)
    trainer = E.TrainerTopK(cfg, sae)
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(3))
    pre = sae.forward_train(x, torch.float32).pre_BF.detach()
    out = trainer.update(x, 1)
    assert torch.equal(out.cofire_BF, E.near_firing(pre, 6))
    assert out.active_BF.sum(-1).max() <= 3 < out.cofire_BF.sum(-1).max()
    assert (out.cofire_BF | out.active_BF).equal(out.cofire_BF)  # the fired ones are among the candidates
