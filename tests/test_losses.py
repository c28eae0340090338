"""experiment.py's loss terms and trainer: the TopK recipe against hand-written references, the
schedules, the held orthogonality term on its stride, and both implementations of the term."""

import copy
import math

import pytest
import torch

import experiment as E
from sae_harness.run import ortho_fast as O
from sae_harness.run import rundir


def schedule_cfg(**kw):
    return E.Config(out_dir="x", ortho_lambda_max=2.0, ortho_base_threshold=0.4, decay_rate=3.0, threshold_floor=1e-3, **kw)


@pytest.mark.parametrize("p,lam", [(0.0, 2.0), (0.5, 0.5), (1.0, 0.0)])
def test_quadratic_weight(p, lam):
    assert E.ortho_lambda(p, schedule_cfg()) == pytest.approx(lam)
    assert E.ortho_lambda(p, schedule_cfg(weight_schedule="constant")) == pytest.approx(2.0)
    assert E.ortho_lambda(p, schedule_cfg(variant="static")) == pytest.approx(2.0)
    assert E.ortho_lambda(p, schedule_cfg(variant="none")) == 0.0


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_threshold_schedules(p):
    assert E.ortho_threshold(p, schedule_cfg()) == pytest.approx(max(0.4 * (1 - p), 1e-3))
    assert E.ortho_threshold(p, schedule_cfg(threshold_schedule="exponential")) == pytest.approx(0.4 * math.exp(-3 * p))
    assert E.ortho_threshold(p, schedule_cfg(threshold_schedule="constant")) == pytest.approx(0.4)
    assert E.ortho_threshold(p, schedule_cfg(variant="static")) == pytest.approx(0.4)
    assert E.ortho_threshold(1.0, schedule_cfg()) == pytest.approx(1e-3)  # the floor keeps p -> 1 finite


def make_trainer(variant, **kw):
    torch.manual_seed(0)
    sae = E.AutoEncoderTopK(16, 64, 8, "m", 0, device="cpu", seed=1)
    fields = dict(
        out_dir="x",
        dict_size=64,
        k=8,
        variant=variant,
        sae_dtype="float32",
        tokens=640,
        batch_size=32,
        ortho_lambda_max=0.5,
        ortho_base_threshold=0.2,
        dead_tokens=1,
    )
    cfg = E.Config(**(fields | kw))
    return E.TrainerTopK(cfg, sae)


def firing(sae, x):
    out = sae.forward_train(x)
    return out, torch.zeros_like(out.pre_BF, dtype=torch.bool).scatter_(1, out.idx_BK, out.acts_BK > 0)


def test_none_variant_is_plain_topk_loss():
    trainer = make_trainer("none")
    trainer.tokens_since_fired_F[:32] = 10  # half the latents dead: AuxK active
    x = torch.randn(32, 16)
    sae = copy.deepcopy(trainer.sae)  # as it was before the step
    out = trainer.update(x, 3)
    pre = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
    vals, idx = pre.topk(8, dim=-1)
    x_hat = torch.zeros(32, 64).scatter(1, idx, vals) @ sae.W_dec + sae.b_dec
    recon = (x - x_hat).pow(2).sum(-1).mean()
    dead = torch.arange(64) < 32
    aux_vals, aux_idx = pre.masked_fill(~dead, -torch.inf).topk(8, dim=-1)  # k_aux = d_in // 2 = 8
    e = (x - x_hat).detach()
    e_hat = torch.zeros(32, 64).scatter(1, aux_idx, aux_vals.relu()) @ sae.W_dec
    auxk = (e_hat - e).pow(2).sum(-1).mean() / (e - e.mean(0)).pow(2).sum(-1).mean()
    assert out.ortho_lambda == 0.0 and out.terms["ortho"].value.item() == 0.0
    torch.testing.assert_close(out.terms["recon"].value, recon.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.terms["auxk"].value, auxk.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss, (recon + trainer.cfg.auxk_alpha * auxk).detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.dead_F, dead)


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_progressive_adds_weighted_penalty(impl):
    trainer = make_trainer("progressive", ortho_impl=impl)
    x = torch.randn(32, 16)
    sae = copy.deepcopy(trainer.sae)
    out = trainer.update(x, 5)  # p = 5/20
    assert out.ortho_lambda == pytest.approx(0.5 * 0.75**2)
    assert out.threshold == pytest.approx(0.2 * 0.75)
    _, active = firing(sae, x)
    expected = E.orthogonality_penalty(sae.W_dec, active, out.threshold)
    assert expected.item() > 0
    torch.testing.assert_close(out.terms["ortho"].value, expected.detach(), rtol=1e-5, atol=1e-7)
    assert trainer.ortho_scale == pytest.approx(
        out.terms["recon"].value.item() / out.terms["ortho"].value.item()
    )  # s = recon / P of this step
    assert out.terms["ortho"].weight == pytest.approx(out.ortho_lambda * trainer.ortho_scale)
    torch.testing.assert_close(
        out.loss,
        out.terms["recon"].value + trainer.cfg.auxk_alpha * out.terms["auxk"].value + out.terms["ortho"].weight * out.terms["ortho"].value,
    )


def test_encode_keeps_exactly_k_and_forward_train_agrees():
    sae = E.AutoEncoderTopK(16, 64, 8, "m", 0, device="cpu", seed=2)
    with torch.no_grad():
        sae.b_enc.fill_(1.0)  # all pre-activations positive: exactly k nonzeros
    x = torch.randn(50, 16)
    acts = sae.encode(x)
    assert ((acts != 0).sum(-1) == 8).all()
    out = sae.forward_train(x)
    torch.testing.assert_close(out.x_hat_BD, sae(x), rtol=1e-5, atol=1e-5)


def test_step_keeps_decoder_rows_unit_and_grad_orthogonal():
    trainer = make_trainer("progressive")
    for step in range(3):
        W_before = trainer.sae.W_dec.detach().clone()
        trainer.update(torch.randn(32, 16) * 3, step)
        torch.testing.assert_close(trainer.sae.W_dec.norm(dim=-1), torch.ones(64))
        g = trainer.sae.W_dec.grad
        assert g.abs().max() > 0
        assert (g * W_before).sum(-1).abs().max() < 1e-6  # no component along the rows it was taken at


def test_geometric_median_beats_mean_with_outliers():
    x = torch.randn(200, 3) * 0.1
    x[:10] += 100
    med = E.geometric_median(x)
    assert med.norm() < 0.5 < x.mean(0).norm()


def test_nonfinite_loss_names_step_and_term():
    trainer = make_trainer("none")
    x = torch.randn(32, 16)
    x[0, 0] = float("nan")
    with pytest.raises(E.NonFiniteLoss, match="recon became .* at step 7"):
        trainer.update(x, 7)


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_ortho_every_computes_on_its_stride_and_holds_the_gradient_in_between(impl):
    trainer = make_trainer("progressive", ortho_every=3, ortho_impl=impl, grad_clip=1e9)
    x3, x4 = torch.randn(32, 16), torch.randn(32, 16)
    sae3 = copy.deepcopy(trainer.sae)
    on = trainer.update(x3, 3)
    held = trainer.held_ortho
    _, active3 = firing(sae3, x3)
    W3 = sae3.W_dec.detach().clone().requires_grad_()
    P3 = E.orthogonality_penalty(W3, active3, on.threshold)
    torch.testing.assert_close(held[1], torch.autograd.grad(P3, W3)[0], rtol=1e-4, atol=1e-7)  # dP/dW_dec of batch 3
    sae4 = copy.deepcopy(trainer.sae)
    twin = copy.deepcopy(trainer)
    twin.held_ortho = (held[0], torch.zeros_like(held[1]))  # the same step without the term's gradient
    off = trainer.update(x4, 4)  # not on the stride: the held value and gradient
    twin.update(x4, 4)
    assert trainer.held_ortho is held
    torch.testing.assert_close(off.terms["ortho"].value, on.terms["ortho"].value)
    W4 = sae4.W_dec.detach()  # the step adds weight * held dP/dW_dec, less its part along the rows
    added = off.terms["ortho"].weight * (held[1] - (held[1] * W4).sum(-1, keepdim=True) * W4)
    assert added.abs().max() > 0
    torch.testing.assert_close(trainer.sae.W_dec.grad - twin.sae.W_dec.grad, added, rtol=1e-4, atol=1e-6)
    # the log reports this batch's P on a step off the stride; the loss kept the held one
    record = E.log_record(trainer.cfg, trainer, off, x4, 4, 0.0)
    _, active4 = firing(sae4, x4)
    fresh = O.penalty_value_and_grad(trainer.sae.W_dec, active4, off.threshold)[0].item()
    assert record["ortho_penalty"] == pytest.approx(fresh, rel=1e-4)
    assert record["ortho_penalty"] != pytest.approx(on.terms["ortho"].value.item())


def test_held_gradient_survives_a_checkpoint():
    trainer = make_trainer("progressive", ortho_every=4)
    for step in range(6):
        trainer.update(torch.randn(32, 16, generator=torch.Generator().manual_seed(step)), step)
    state = copy.deepcopy(trainer.state_dict())  # as through torch.save / torch.load
    resumed = make_trainer("progressive", ortho_every=4)
    resumed.load_state_dict(state)
    for t in (trainer, resumed):
        t.update(torch.randn(32, 16, generator=torch.Generator().manual_seed(6)), 6)  # off the stride
    torch.testing.assert_close(resumed.sae.W_dec, trainer.sae.W_dec, rtol=0, atol=0)


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_update_gradient_equals_autograd_of_the_definition(impl):
    """The trainer adds the term's (held) gradient to W_dec.grad itself; with unit rows and the
    parallel component removed, that is the gradient of the whole loss through the reference
    definition, and the other parameters get exactly the recon loss's gradient."""
    trainer = make_trainer("progressive", grad_clip=1e9, ortho_impl=impl)
    ref = copy.deepcopy(trainer.sae)
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(0)) * 3
    trainer.update(x, 2)
    out, active = firing(ref, x)
    p = 2 / trainer.total_steps
    lam, thr = E.ortho_lambda(p, trainer.cfg), E.ortho_threshold(p, trainer.cfg)
    recon, penalty = (x - out.x_hat_BD).pow(2).sum(-1).mean(), E.orthogonality_penalty(ref.W_dec, active, thr)
    loss = recon + lam * (recon / penalty).detach() * penalty  # s = recon / P carries no gradient
    loss.backward()  # no latent is dead at step 2: no AuxK
    g, W = ref.W_dec.grad, ref.W_dec.detach()
    torch.testing.assert_close(trainer.sae.W_dec.grad, g - (g * W).sum(-1, keepdim=True) * W, rtol=1e-4, atol=1e-6)
    for name in ("W_enc", "b_enc", "b_dec"):
        torch.testing.assert_close(getattr(trainer.sae, name).grad, getattr(ref, name).grad, rtol=1e-5, atol=1e-7)


def test_edited_reference_is_not_silently_replaced_by_the_stale_fast_version(monkeypatch, capsys):
    original = E.orthogonality_penalty
    monkeypatch.setattr(E, "orthogonality_penalty", lambda W, a, t, contained=False: 2 * original(W, a, t, contained))  # an edit
    trainer = make_trainer("progressive", ortho_impl="fast")
    x = torch.randn(32, 16)
    sae = copy.deepcopy(trainer.sae)
    out = trainer.update(x, 0)
    assert trainer.ortho_impl == "reference" and "using the reference" in capsys.readouterr().out
    _, active = firing(sae, x)
    torch.testing.assert_close(out.terms["ortho"].value, 2 * original(sae.W_dec, active, out.threshold).detach())


def plain_topk_steps(sae, cfg, xs):
    """The TopK recipe without any orthogonality term, written out: the baseline before lambda2
    was scaled."""
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.resolved_lr)
    since_F = torch.zeros(cfg.dict_size, dtype=torch.long)
    for step, x in enumerate(xs):
        out = sae.forward_train(x, getattr(torch, cfg.sae_dtype))
        active = torch.zeros_like(out.pre_BF, dtype=torch.bool).scatter_(1, out.idx_BK, out.acts_BK > 0)
        residual = x - out.x_hat_BD
        dead = since_F >= cfg.dead_tokens
        loss = residual.pow(2).sum(-1).mean() + cfg.auxk_alpha * E.auxk_loss(out.pre_BF, dead, residual.detach(), sae.W_dec, 16 // 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        W = sae.W_dec
        with torch.no_grad():
            W.grad -= (W.grad * W).sum(-1, keepdim=True) * W
        torch.nn.utils.clip_grad_norm_(sae.parameters(), cfg.grad_clip)
        decay_from = int(cfg.lr_decay_start * cfg.total_steps)
        lr = cfg.resolved_lr if step < decay_from else cfg.resolved_lr * (cfg.total_steps - step) / max(1, cfg.total_steps - decay_from)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        with torch.no_grad():
            W /= W.norm(dim=-1, keepdim=True)
            since_F += len(x)
            since_F[active.any(0)] = 0


def test_none_variant_trains_bit_for_bit_as_plain_topk():
    xs = [torch.randn(32, 16, generator=torch.Generator().manual_seed(s)) * 3 for s in range(20)]  # into the lr decay
    trainer = make_trainer("none", dead_tokens=64, ortho_lambda_max=7.0)
    ref = copy.deepcopy(trainer.sae)
    for step, x in enumerate(xs):
        trainer.update(x, step)
    plain_topk_steps(ref, trainer.cfg, xs)
    assert trainer.ortho_scale is None
    for name, param in trainer.sae.named_parameters():
        assert torch.equal(param, getattr(ref, name)), name


def shares_over_training(d_in, dict_size, k, scale, lam, steps=12):
    """(loss share, P / recon) of the term on each step of a short run whose batches share a
    direction (latents co-fire) that grows stronger step by step, so P changes as it trains."""
    torch.manual_seed(0)
    sae = E.AutoEncoderTopK(d_in, dict_size, k, "m", 0, device="cpu", seed=1)
    cfg = E.Config(
        out_dir="x", dict_size=dict_size, k=k, batch_size=64, tokens=64 * steps, sae_dtype="float32", dead_tokens=10**9,
        ortho_lambda_max=lam, ortho_every=1, lr=1e-2,
    )  # fmt: skip
    trainer = E.TrainerTopK(cfg, sae)
    g = torch.Generator().manual_seed(3)
    shared = torch.randn(d_in, generator=g)
    shares, ratios = [], []
    for step in range(steps):
        x = (torch.randn(64, d_in, generator=g) + (1 + step) * shared) * scale
        out = trainer.update(x, step)
        assert out.terms["auxk"].value.item() == 0  # nothing dead: the loss is recon + the term
        shares.append(out.terms["ortho"].weight * out.terms["ortho"].value.item() / (out.ortho_lambda * out.terms["recon"].value.item()))
        ratios.append(out.terms["ortho"].value.item() / out.terms["recon"].value.item())
    return shares, ratios


def test_lambda_is_the_terms_share_of_the_recon_loss_on_every_step_and_profile():
    """The dose does not hang on P at initialisation: however far P / recon moves during training
    and between profiles (D, F, k, the activations' scale), the term is lambda2(p) x recon."""
    shares_a, ratios_a = shares_over_training(16, 64, 8, 1.0, 0.05)
    shares_b, ratios_b = shares_over_training(48, 256, 24, 5.0, 0.05)
    assert max(ratios_a) > 3 * min(ratios_a) and max(ratios_b) > 3 * min(ratios_b)  # P / recon moves within a run
    assert max(ratios_a + ratios_b) > 5 * min(ratios_a + ratios_b) > 0  # and between them
    assert shares_a + shares_b == pytest.approx([1.0] * len(shares_a + shares_b), rel=1e-5)


def test_the_dose_is_logged_and_summarised_per_run():
    trainer = make_trainer("progressive", ortho_every=1)
    records = []
    for step in range(4):
        x = torch.randn(32, 16, generator=torch.Generator().manual_seed(step))
        out = trainer.update(x, step)
        records.append(E.log_record(trainer.cfg, trainer, out, x, step, 0.0))
    assert all(r["ortho_scale"] == pytest.approx(r["recon_loss"] / r["ortho_penalty"]) for r in records)
    assert all(r["ortho_loss"] == pytest.approx(r["ortho_lambda"] * r["recon_loss"]) for r in records)
    assert all(r["ortho_grad_share"] > 0 for r in records)
    summary = rundir.dose_summary(records)
    scales = sorted(r["ortho_scale"] for r in records)
    assert summary["ortho_scale"] == scales[2] and summary["ortho_scale_range"] == [scales[0], scales[-1]]
    assert summary["ortho_share_mean"] == pytest.approx(sum(r["ortho_share"] for r in records) / 4)
    assert summary["ortho_lambda_mean"] == pytest.approx(sum(r["ortho_lambda"] for r in records) / 4)  # the dose the run got
    resumed = make_trainer("progressive", ortho_every=1)
    resumed.load_state_dict(copy.deepcopy(trainer.state_dict()))
    assert resumed.ortho_scale == trainer.ortho_scale and resumed.ortho_grad_share == trainer.ortho_grad_share
    assert rundir.dose_summary([]) == {}  # none and matryoshka: no dose


def test_nested_recon_loss_matches_a_dense_brute_force_in_value_and_gradient():
    """Matryoshka's inner levels: latents [0, m) alone reconstruct x, for each inner width m."""
    torch.manual_seed(0)
    B, F, D, k, widths = 16, 64, 8, 6, [4, 16, 32]
    x = torch.randn(B, D)
    W = torch.nn.functional.normalize(torch.randn(F, D), dim=-1).requires_grad_()
    b_dec = torch.randn(D, requires_grad=True)
    pre = torch.randn(B, F).relu().requires_grad_()
    acts, idx = pre.topk(k, dim=-1)
    fast = E.nested_recon_loss(x, acts, idx, W, b_dec, widths)
    g_fast = torch.autograd.grad(fast, (W, b_dec, pre), retain_graph=True)
    dense_BF = torch.zeros(B, F).scatter(1, idx, acts)
    brute = sum(((x - (dense_BF[:, :m] @ W[:m] + b_dec)) ** 2).sum(-1).mean() for m in widths)
    g_brute = torch.autograd.grad(brute, (W, b_dec, pre))
    torch.testing.assert_close(fast, brute, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_fast, g_brute):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert E.nested_recon_loss(x, acts, idx, W, b_dec, []).item() == 0.0


def test_matryoshka_variant_adds_the_nested_losses_and_no_term():
    d_in, F = 16, 64
    cfg = E.Config(
        out_dir="x", dict_size=F, k=8, batch_size=64, tokens=64 * 20, sae_dtype="float32", dead_tokens=10**9,
        variant="matryoshka", matryoshka_widths=[0.25, 0.5],
    )  # fmt: skip
    trainer = E.TrainerTopK(cfg, E.AutoEncoderTopK(d_in, F, 8, "m", 0, device="cpu", seed=1))
    x = torch.randn(64, d_in, generator=torch.Generator().manual_seed(3))
    trainer.start(lambda i: x)
    sae = trainer.sae
    with torch.no_grad():
        before = sae.forward_train(x)
        expected = E.nested_recon_loss(x, before.acts_BK, before.idx_BK, sae.W_dec, sae.b_dec, [16, 32])
    out = trainer.update(x, 0)
    assert out.terms["ortho"].weight == 0 and out.terms["ortho"].value.item() == 0 and trainer.ortho_scale is None
    assert trainer.matryoshka_widths == [16, 32]
    torch.testing.assert_close(out.terms["nested"].value, expected)
    torch.testing.assert_close(out.loss, out.terms["recon"].value + out.terms["nested"].value + cfg.auxk_alpha * out.terms["auxk"].value)


def ortsae_brute_force(W, blocks):
    """OrtSAE's loss written out pair by pair: for each latent, the largest squared cosine with
    another latent of its block; the mean over all latents."""
    total = 0.0
    for block in blocks:
        for i in block.tolist():
            others = [torch.dot(W[i], W[j]) ** 2 / (W[i].norm() ** 2 * W[j].norm() ** 2) for j in block.tolist() if j != i]
            total = total + torch.stack(others).max()
    return total / W.shape[0]


@pytest.mark.parametrize("chunks", [1, 3, 8])
def test_ortsae_penalty_matches_a_pairwise_brute_force_in_value_and_gradient(chunks):
    torch.manual_seed(0)
    W = (torch.randn(40, 6, dtype=torch.float64) * torch.rand(40, 1, dtype=torch.float64)).requires_grad_()  # rows not unit
    fast = E.ortsae_penalty(W, chunks, torch.Generator().manual_seed(5))
    blocks = torch.randperm(40, generator=torch.Generator().manual_seed(5)).chunk(chunks)
    assert len(blocks) == chunks and sum(len(b) for b in blocks) == 40
    brute = ortsae_brute_force(W, blocks)
    torch.testing.assert_close(fast, brute)
    torch.testing.assert_close(torch.autograd.grad(fast, W)[0], torch.autograd.grad(brute, W)[0])
    if chunks > 1:  # another split gives another value: the blocks really are sampled
        assert E.ortsae_penalty(W, chunks, torch.Generator().manual_seed(6)).item() != pytest.approx(fast.item())


def test_ortsae_variant_trains_on_its_penalty_at_static_matcheds_dose():
    trainer = make_trainer("ortsae", grad_clip=1e9, ortsae_chunks=2)
    ref = copy.deepcopy(trainer.sae)
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(0)) * 3
    out = trainer.update(x, 3)
    assert out.ortho_lambda == pytest.approx(0.5 / 3) == E.ortho_lambda(0.9, trainer.cfg)  # constant, progressive's mean
    fwd, _ = firing(ref, x)
    recon = (x - fwd.x_hat_BD).pow(2).sum(-1).mean()
    penalty = E.ortsae_penalty(ref.W_dec, 2, torch.Generator().manual_seed(trainer.cfg.seed * 1_000_003 + 3))
    torch.testing.assert_close(out.terms["ortho"].value, penalty.detach())
    assert out.terms["ortho"].weight * out.terms["ortho"].value.item() == pytest.approx(
        out.ortho_lambda * out.terms["recon"].value.item()
    )  # the same share
    (recon + out.ortho_lambda * (recon / penalty).detach() * penalty).backward()
    g, W = ref.W_dec.grad, ref.W_dec.detach()
    torch.testing.assert_close(trainer.sae.W_dec.grad, g - (g * W).sum(-1, keepdim=True) * W, rtol=1e-4, atol=1e-6)
