"""The loss terms against brute-force references on random inputs."""
import copy
import math

import pytest
import torch

import experiment as E


def brute_force_penalty(W_dec_FD, active_BF, threshold):
    """The definition, one pair at a time."""
    F_, _ = W_dec_FD.shape
    W_hat = W_dec_FD / W_dec_FD.norm(dim=-1, keepdim=True)
    m = active_BF.float()
    total = W_dec_FD.new_zeros(())
    for i in range(F_):
        for j in range(F_):
            if i == j:
                continue
            ci, cj = m[:, i].sum().item(), m[:, j].sum().item()
            if ci == 0 or cj == 0:
                continue
            n = (m[:, i] * m[:, j]).sum().item() / min(ci, cj)
            c = min(max((n - threshold) / threshold, 0.0), 1.0)
            total = total + c * (W_hat[i] @ W_hat[j]).abs()
    return total / F_


def random_case(seed, B=40, F=24, D=8, p=0.25):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(F, D, generator=g) * (0.5 + torch.rand(F, 1, generator=g))  # rows not unit
    active = torch.rand(B, F, generator=g) < p
    active[:, 0] = False  # never fires
    active[:, 1] = False
    active[:, 2] = active[:, 3] = torch.rand(B, generator=g) < 0.5  # always co-fire
    active[0, 2] = active[0, 3] = True
    return W, active


ROUTES = ["dense", "sparse"]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("threshold", [0.05, 0.3, 0.7, 1.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_penalty_matches_brute_force(threshold, seed, route, monkeypatch):
    monkeypatch.setattr(E, "ORTHO_BLOCK", 5)  # several row blocks, a ragged last one
    W, active = random_case(seed)
    expected = brute_force_penalty(W.double(), active, threshold)
    got = E.orthogonality_penalty(W, active, threshold, route=route)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)
    assert expected.item() > 0 or threshold == 1.0


@pytest.mark.parametrize("route", ROUTES)
def test_penalty_bfloat16_close_and_counts_exact_beyond_256(route):
    W, active = random_case(3, B=700, F=16, D=32, p=0.6)
    active[:, 4] = active[:, 5] = True  # 700 co-firings: not representable in one bf16 sum
    active[:, 6] = True
    active[:, 6][::7] = False  # 600 of 700, n(4,6) = 1 > any thr
    expected = brute_force_penalty(W.double(), active, 0.8).item()
    got = E.orthogonality_penalty(W, active, 0.8, torch.bfloat16, route=route).item()
    assert got == pytest.approx(expected, rel=2e-2)
    mask_FB = active.T.contiguous().to(torch.bfloat16)
    assert torch.equal(E.cofire_counts(mask_FB, mask_FB), active.float().T @ active.float())


@pytest.mark.parametrize("route", ROUTES)
def test_penalty_zero_when_nothing_cofires_above_threshold(route):
    W = torch.randn(6, 4)
    active = torch.zeros(10, 6, dtype=torch.bool)
    assert E.orthogonality_penalty(W, active, 0.1, route=route).item() == 0.0
    active[:, 0] = True  # a latent alone: no pair
    assert E.orthogonality_penalty(W, active, 0.1, route=route).item() == 0.0
    active[:5, 1] = active[5:, 2] = True  # pairs with latent 0, but 1 and 2 never co-fire: n = 1 ...
    W1 = W.clone().requires_grad_()
    E.orthogonality_penalty(W1, active, 1.0, route=route).backward()  # ... not above thr = 1
    assert W1.grad.abs().sum() == 0


@pytest.mark.parametrize("route", ROUTES)
def test_cofiring_pairs_match_brute_force(route, monkeypatch):
    monkeypatch.setattr(E, "ORTHO_BLOCK", 7)
    _, active = random_case(4, B=300, F=30)
    m = active.double()
    pairs = E.cofiring_pairs(active, route)
    fired = m.sum(0).nonzero().squeeze(1)
    assert torch.equal(pairs.fired_A, fired)
    assert torch.equal(pairs.count_A, m.sum(0)[fired].float())
    counts = (m.T @ m)[fired][:, fired]  # the diagonal is |m_i|
    r, c = counts.nonzero(as_tuple=True)
    assert (pairs.row_P.diff() >= 0).all()  # grouped by row (columns within a row in any order)
    order = (pairs.row_P * 1000 + pairs.col_P).argsort()
    row, col = pairs.row_P[order], pairs.col_P[order]
    assert torch.equal(row, r) and torch.equal(col, c)
    assert torch.equal(pairs.cofire_P[order], counts[r, c].float())
    n = counts[r, c] / torch.minimum(m.sum(0)[fired][r], m.sum(0)[fired][c])
    torch.testing.assert_close(pairs.n()[order], n.float())


def test_feature_separation_matches_brute_force():
    W, active = random_case(6, B=60, F=20)
    W_hat = W / W.norm(dim=-1, keepdim=True)
    m = active.float()
    cos, above = [], 0
    for i in range(20):
        for j in range(i + 1, 20):
            co = (m[:, i] * m[:, j]).sum().item()
            if co >= 1:
                cos.append((W_hat[i] @ W_hat[j]).abs().item())
                above += co / min(m[:, i].sum().item(), m[:, j].sum().item()) > 0.3
    got = E.feature_separation(W, active, 0.3, torch.float32)
    assert got["sep_cos_mean"] == pytest.approx(sum(cos) / len(cos), rel=1e-5)
    assert got["sep_cos_p95"] == pytest.approx(torch.quantile(torch.tensor(cos), 0.95).item(), rel=1e-5)
    assert got["sep_pairs_penalized"] == above and got["sep_frac_above_thr"] == pytest.approx(above / len(cos))
    sampled = E.feature_separation(W, active, 0.3, torch.float32, max_pairs=10)
    assert sampled["sep_pairs_penalized"] == above and sampled["sep_cos_mean"] != got["sep_cos_mean"]


@pytest.mark.parametrize("route", ROUTES)
def test_penalty_gradient_equals_constant_c_reference(route):
    W, active = random_case(5)
    threshold = 0.2
    W1 = W.clone().requires_grad_()
    E.orthogonality_penalty(W1, active, threshold, route=route).backward()
    W2 = W.double().clone().requires_grad_()
    brute_force_penalty(W2, active, threshold).backward()  # c_ij are Python floats: constants
    torch.testing.assert_close(W1.grad.double(), W2.grad, rtol=1e-4, atol=1e-6)
    assert W1.grad[0].abs().sum() == 0 and W1.grad[1].abs().sum() == 0  # never fired: no push


def test_gradient_reaches_decoder_only():
    torch.manual_seed(0)
    sae = E.AutoEncoderTopK(8, 32, 4, "m", 0, device="cpu")
    cfg = E.Config(out_dir="x", dict_size=32, k=4, variant="static", ortho_lambda_max=1.0, ortho_base_threshold=0.1,
                   auxk_alpha=0.0, sae_bf16=False, tokens=64, batch_size=16)
    trainer = E.TrainerTopK(cfg, sae)
    terms = trainer.loss(torch.randn(16, 8), 0)
    assert terms["ortho_penalty"].item() > 0
    grads = torch.autograd.grad(terms["ortho_penalty"], [sae.W_enc, sae.b_enc, sae.b_dec, sae.W_dec], allow_unused=True)
    assert grads[0] is None and grads[1] is None and grads[2] is None
    assert grads[3].abs().sum() > 0


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
    cfg = E.Config(out_dir="x", dict_size=64, k=8, variant=variant, sae_bf16=False, tokens=640, batch_size=32,
                   ortho_lambda_max=0.5, ortho_base_threshold=0.2, dead_tokens=1, **kw)
    return E.TrainerTopK(cfg, sae)


def test_none_variant_is_plain_topk_loss():
    trainer = make_trainer("none")
    trainer.tokens_since_fired_F[:32] = 10  # half the latents dead: AuxK active
    x = torch.randn(32, 16)
    terms = trainer.loss(x, 3)
    sae = trainer.sae
    pre = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
    vals, idx = pre.topk(8, dim=-1)
    x_hat = torch.zeros(32, 64).scatter(1, idx, vals) @ sae.W_dec + sae.b_dec
    recon = (x - x_hat).pow(2).sum(-1).mean()
    dead = torch.arange(64) < 32
    aux_vals, aux_idx = pre.masked_fill(~dead, -torch.inf).topk(8, dim=-1)  # k_aux = d_in // 2 = 8
    e = (x - x_hat).detach()
    e_hat = torch.zeros(32, 64).scatter(1, aux_idx, aux_vals.relu()) @ sae.W_dec
    auxk = (e_hat - e).pow(2).sum(-1).mean() / (e - e.mean(0)).pow(2).sum(-1).mean()
    assert terms["ortho_lambda"] == 0.0
    torch.testing.assert_close(terms["recon_loss"], recon, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(terms["auxk_loss"], auxk, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms["loss"], recon + trainer.cfg.auxk_alpha * auxk, rtol=1e-5, atol=1e-5)


def test_progressive_adds_weighted_penalty():
    trainer = make_trainer("progressive")
    x = torch.randn(32, 16)
    terms = trainer.loss(x, 5)  # p = 5/20
    assert terms["ortho_lambda"] == pytest.approx(0.5 * 0.75**2)
    assert terms["threshold"] == pytest.approx(0.2 * 0.75)
    assert terms["ortho_penalty"].item() > 0
    torch.testing.assert_close(terms["loss"], terms["recon_loss"] + trainer.cfg.auxk_alpha * terms["auxk_loss"]
                               + terms["ortho_lambda"] * terms["ortho_penalty"])


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
    with pytest.raises(E.NonFiniteLoss, match="recon_loss .* at step 7"):
        trainer.update(x, 7)


def test_ortho_every_computes_on_its_stride_and_holds_the_gradient_in_between():
    trainer = make_trainer("progressive", ortho_every=3)
    x3, x4 = torch.randn(32, 16), torch.randn(32, 16)
    on = trainer.loss(x3, 3)
    held = trainer.held_ortho
    off = trainer.loss(x4, 4)  # not on the stride: the held value and gradient
    assert trainer.held_ortho is held
    torch.testing.assert_close(off["ortho_penalty"], on["ortho_penalty"])
    for terms in (on, off):
        torch.testing.assert_close(terms["loss"], terms["recon_loss"] + trainer.cfg.auxk_alpha * terms["auxk_loss"]
                                   + terms["ortho_lambda"] * terms["ortho_penalty"])
    grad = torch.autograd.grad(off["ortho_penalty"], trainer.sae.W_dec)[0]
    torch.testing.assert_close(grad, held[1] / 64)  # (1/F) dP/dW_hat; update() projects it off the (unit) rows
    measured = trainer.loss(x4, 4, measure_ortho=True)  # the log gets this batch's P; the loss keeps the held one
    torch.testing.assert_close(measured["loss"], off["loss"])
    fresh = E.orthogonality_penalty(trainer.sae.W_dec.detach(), measured["active_BF"], measured["threshold"], trainer.dtype)
    torch.testing.assert_close(measured["ortho_penalty"], fresh)
    assert measured["ortho_penalty"].item() != pytest.approx(on["ortho_penalty"].item())


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


def test_update_gradient_equals_autograd_through_the_unit_directions():
    """The trainer attaches the held gradient to W_dec directly; with unit rows and the parallel
    component removed, that is the gradient through w / |w| exactly."""
    trainer = make_trainer("progressive", grad_clip=1e9)
    ref = copy.deepcopy(trainer.sae)
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(0)) * 3
    trainer.update(x, 2)
    out = ref.forward_train(x)
    active = torch.zeros_like(out.pre_BF, dtype=torch.bool).scatter_(1, out.idx_BK, out.acts_BK > 0)
    p = 2 / trainer.total_steps
    lam, thr = E.ortho_lambda(p, trainer.cfg), E.ortho_threshold(p, trainer.cfg)
    loss = (x - out.x_hat_BD).pow(2).sum(-1).mean() + lam * E.orthogonality_penalty(ref.W_dec, active, thr, torch.float32)
    loss.backward()  # no latent is dead at step 2: no AuxK
    g, W = ref.W_dec.grad, ref.W_dec.detach()
    torch.testing.assert_close(trainer.sae.W_dec.grad, g - (g * W).sum(-1, keepdim=True) * W, rtol=1e-4, atol=1e-6)
