"""The fast orthogonality term (sae_harness/run/ortho_fast.py) against a brute-force loop and against
the reference definition in experiment.py, value and gradient, on random inputs."""

import pytest
import torch

import experiment as E
from sae_harness.run import ortho_fast as O


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


def force_blocks(monkeypatch, rows: int, n_fired: int = 24, tile: int | None = None):
    """Row blocks of `rows` fired latents in the term (in column tiles of `tile`, default rows + 3)
    and on both pair routes (the sparse route's block is counted in candidate pairs, rows x fired
    latents)."""
    monkeypatch.setattr(O, "ORTHO_BLOCK", rows)
    monkeypatch.setattr(O, "ORTHO_TILE", tile or rows + 3)
    monkeypatch.setattr(O, "SPARSE_PAIR_BLOCK", rows * n_fired)


@pytest.mark.parametrize("threshold", [0.05, 0.3, 0.7, 1.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_penalty_matches_brute_force(threshold, seed, monkeypatch):
    W, active = random_case(seed)
    force_blocks(monkeypatch, 5, int(active.any(0).sum()))  # several row blocks, a ragged last one
    expected = brute_force_penalty(W.double(), active, threshold)
    got = O.penalty_value_and_grad(W, active, threshold)[0]
    assert got.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)
    assert expected.item() > 0 or threshold == 1.0


def test_penalty_bfloat16_close_and_counts_exact_beyond_256():
    W, active = random_case(3, B=700, F=16, D=32, p=0.6)
    active[:, 4] = active[:, 5] = True  # 700 co-firings: not representable in one bf16 sum
    active[:, 6] = True
    active[:, 6][::7] = False  # 600 of 700, n(4,6) = 1 > any thr
    expected = brute_force_penalty(W.double(), active, 0.8).item()
    got = O.penalty_value_and_grad(W, active, 0.8, torch.bfloat16)[0].item()
    assert got == pytest.approx(expected, rel=2e-2)
    mask_FB = active.T.contiguous().to(torch.bfloat16)
    assert torch.equal(O.cofire_counts(mask_FB, mask_FB), active.float().T @ active.float())


def test_penalty_zero_when_nothing_cofires_above_threshold():
    W = torch.randn(6, 4)
    active = torch.zeros(10, 6, dtype=torch.bool)
    assert O.penalty_value_and_grad(W, active, 0.1)[0].item() == 0.0
    active[:, 0] = True  # a latent alone: no pair
    assert O.penalty_value_and_grad(W, active, 0.1)[0].item() == 0.0
    active[:5, 1] = active[5:, 2] = True  # pairs with latent 0, but 1 and 2 never co-fire: n = 1 ...
    _, grad = O.penalty_value_and_grad(W, active, 1.0)  # ... not above thr = 1
    assert grad.abs().sum() == 0


@pytest.mark.parametrize("rows", [7, 1000])
@pytest.mark.parametrize("int8", [True, False])
@pytest.mark.parametrize("route,dense_counts", [("dense", True), ("sparse", True), ("sparse", False), ("sparse", None)])
def test_cofiring_pairs_match_brute_force(route, dense_counts, int8, rows, monkeypatch):
    """dense_counts False: the sparse route's COO product (its route off CPU); None: dense where
    int8 products are fast; int8: the counts' dtype on a CPU where int8 products are fast (else float32)."""
    monkeypatch.setattr(O, "DENSE_COUNTS", dense_counts)
    monkeypatch.setattr(O.precision, "int8_counts", lambda device: int8)
    _, active = random_case(4, B=300, F=30)
    force_blocks(monkeypatch, rows, int(active.any(0).sum()))
    m = active.double()
    pairs = O.cofiring_pairs(active, route)
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


@pytest.mark.parametrize("int8", [True, False])
def test_cpu_counts_are_dense_only_where_int8_products_are_fast(int8, monkeypatch):
    """On an AVX2 CPU the float32 dense product lost to the COO one (docs/performance.md), so the
    sparse route takes dense int8 masks only where int8 products are measured fast."""
    monkeypatch.setattr(O.precision, "int8_counts", lambda device: int8)
    monkeypatch.setattr(O, "DENSE_COUNTS", None)  # the default
    _, active = random_case(4, B=50, F=20)
    masks = O._SparseMasks.of(active)
    assert (masks.mask_BA is not None) == int8 and (masks.M_BA is None) == int8
    assert not int8 or masks.mask_BA.dtype == torch.int8


def brute_force_separation(W, active, latents, threshold):
    """(|cos| of every co-firing pair i < j among latents, the number of them with n_ij > threshold),
    pair by pair."""
    W_hat, m = W / W.norm(dim=-1, keepdim=True), active.float()
    latents = list(latents)
    cos, above = [], 0
    for a, i in enumerate(latents):
        for j in latents[a + 1 :]:
            co = (m[:, i] * m[:, j]).sum().item()
            if co >= 1:
                cos.append((W_hat[i] @ W_hat[j]).abs().item())
                above += co / min(m[:, i].sum().item(), m[:, j].sum().item()) > threshold
    return cos, above


@pytest.mark.parametrize("route,rows", [("sparse", 1000), ("sparse", 3), ("dense", 3)])
def test_feature_separation_matches_brute_force(route, rows, monkeypatch):
    W, active = random_case(6, B=60, F=20)
    force_blocks(monkeypatch, rows, int(active.any(0).sum()))
    monkeypatch.setattr(O, "pairs_route", lambda device: route)
    cos, above = brute_force_separation(W, active, range(20), 0.3)
    got = O.feature_separation(W, active, 0.3, torch.float32)
    assert got["sep_cos_mean"] == pytest.approx(sum(cos) / len(cos), rel=1e-5)
    assert got["sep_cos_p95"] == pytest.approx(sorted(cos)[int(0.95 * (len(cos) - 1))], rel=1e-5)  # nearest rank, lower
    assert got["sep_pairs_penalized"] == above and got["sep_frac_above_thr"] == pytest.approx(above / len(cos))
    sampled = O.feature_separation(W, active, 0.3, torch.float32, max_pairs=10)
    assert sampled["sep_pairs_penalized"] == above and sampled["sep_cos_mean"] != got["sep_cos_mean"]


def test_penalty_gradient_equals_constant_c_reference():
    W, active = random_case(5)
    threshold = 0.2
    _, grad = O.penalty_value_and_grad(W, active, threshold)
    W2 = W.double().clone().requires_grad_()
    brute_force_penalty(W2, active, threshold).backward()  # c_ij are Python floats: constants
    torch.testing.assert_close(grad.double(), W2.grad, rtol=1e-4, atol=1e-6)
    assert grad[0].abs().sum() == 0 and grad[1].abs().sum() == 0  # never fired: no push


@pytest.mark.parametrize("threshold", [0.05, 0.3, 0.7])
@pytest.mark.parametrize("seed", [0, 1])
def test_reference_matches_brute_force(threshold, seed):
    W, active = random_case(seed)
    W1 = W.clone().requires_grad_()
    got = E.orthogonality_penalty(W1, active, threshold)
    W2 = W.double().clone().requires_grad_()
    expected = brute_force_penalty(W2, active, threshold)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)
    got.backward()
    expected.backward()
    torch.testing.assert_close(W1.grad.double(), W2.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("rows, tile", [(1, 1), (9, 4), (9, 100), (1000, 1000)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_equals_reference_value_and_gradient(seed, rows, tile, monkeypatch):
    """In row blocks and column tiles, narrower or wider than the blocks, ragged or not (the
    upper triangle's diagonal can fall in any tile)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(60, 12, generator=g) * (0.5 + torch.rand(60, 1, generator=g))
    active = torch.rand(200, 60, generator=g) < torch.rand(60, generator=g) * 0.3
    force_blocks(monkeypatch, rows, int(active.any(0).sum()), tile)
    thr = 0.1 + 0.2 * seed
    W_ref = W.clone().requires_grad_()
    ref = E.orthogonality_penalty(W_ref, active, thr)
    (grad_ref,) = torch.autograd.grad(ref, W_ref)
    value, grad = O.penalty_value_and_grad(W, active, thr, torch.float32)
    assert ref.item() > 0
    assert value.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-4, atol=1e-7)


def test_check_against_reference_accepts_the_definition_and_catches_an_edit(capsys):
    W, active = random_case(7, B=100, F=40, D=8)
    assert O.check_against_reference(E.orthogonality_penalty, W, active, 0.2, torch.float32) == "fast"
    assert capsys.readouterr().out == ""

    def squared(W_dec_FD, active_BF, threshold):  # a researcher's edit: |cos| -> cos^2
        fired = active_BF.any(0).nonzero().squeeze(1)
        m = active_BF[:, fired].float()
        co = m.T @ m
        n = co / torch.minimum(co.diagonal()[:, None], co.diagonal()[None, :])
        c = ((n - threshold) / threshold).clamp(0, 1).fill_diagonal_(0)
        Wh = W_dec_FD[fired] / W_dec_FD[fired].norm(dim=-1, keepdim=True)
        return (c * (Wh @ Wh.T).pow(2)).sum() / W_dec_FD.shape[0]

    assert O.check_against_reference(squared, W, active, 0.2, torch.float32) == "reference"
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "no longer matches" in lines[0] and "using the reference" in lines[0]


@pytest.mark.parametrize("route", ROUTES)
def test_blocks_bound_the_pairs_held_and_cover_every_row_once(route, monkeypatch):
    """Memory: each block holds at most rows x fired latents candidate pairs, whatever B, k and F."""
    _, active = random_case(8, B=200, F=40, p=0.5)
    A = int(active.any(0).sum())
    force_blocks(monkeypatch, 4, A)
    spans = []
    for start, stop, pairs in O.pair_blocks(active, route):
        assert stop - start <= 4 and ((pairs.row_P >= start) & (pairs.row_P < stop)).all()
        assert len(pairs.row_P) <= (stop - start) * A
        spans.append((start, stop))
    assert spans == [(s, min(s + 4, A)) for s in range(0, A, 4)]


@pytest.mark.parametrize("rows, tile", [(4, None), (9, 4), (1000, None)])
def test_bfloat16_close_to_the_reference_in_blocks(rows, tile, monkeypatch):
    g = torch.Generator().manual_seed(11)
    W = torch.randn(80, 64, generator=g)
    active = torch.rand(300, 80, generator=g) < torch.rand(80, generator=g) * 0.4
    force_blocks(monkeypatch, rows, int(active.any(0).sum()), tile)
    W_ref = W.clone().requires_grad_()
    ref = E.orthogonality_penalty(W_ref, active, 0.2)
    (grad_ref,) = torch.autograd.grad(ref, W_ref)
    value, grad = O.penalty_value_and_grad(W, active, 0.2, torch.bfloat16)
    assert value.item() == pytest.approx(ref.item(), rel=1e-2)
    cos = torch.nn.functional.cosine_similarity(grad.double().flatten(), grad_ref.double().flatten(), dim=0)
    assert cos > 0.9999  # the term redoes the penalised pairs with bfloat16 cos ~ 0 in float32: no sign flips
    assert O.check_against_reference(E.orthogonality_penalty, W, active, 0.2, torch.bfloat16) == "fast"


@pytest.mark.parametrize("route", ROUTES)
def test_feature_separation_beyond_max_latents_is_the_pairs_among_a_sample(route, monkeypatch):
    """Past max_latents fired latents, the record is the brute-force one over the pairs among the
    sampled latents, with the penalised-pair count scaled by the pair ratio; below it, unchanged."""
    monkeypatch.setattr(O, "pairs_route", lambda device: route)
    W, active = random_case(8, B=60, F=30)
    n = int(active.any(0).sum())
    assert O.feature_separation(W, active, 0.3, torch.float32, max_latents=n) == O.feature_separation(W, active, 0.3, torch.float32)
    fired = active.any(0).nonzero().squeeze(1)
    keep = O.separation_latents(fired, 12, seed=5)
    assert len(keep) == 12 and active[:, keep].any(0).all() and (keep.diff() > 0).all()
    cos, above = brute_force_separation(W, active, keep.tolist(), 0.3)
    got = O.feature_separation(W, active, 0.3, torch.float32, seed=5, max_latents=12)
    assert got["sep_cos_mean"] == pytest.approx(sum(cos) / len(cos), rel=1e-5)
    assert got["sep_frac_above_thr"] == pytest.approx(above / len(cos))
    assert got["sep_pairs_penalized"] == round(above * n * (n - 1) / (12 * 11))
    assert O.separation_latents(fired, 12, seed=6).tolist() != keep.tolist()


@pytest.mark.parametrize("shape", [(7, 96), (5, 37), (1, 32)])
def test_negative_entries_equal_a_full_scan(shape):
    """Two levels (columns in tiles of 32) or one (otherwise): the same entries, row-major; -0.0
    (a zero c times a negative) is not negative."""
    g = torch.Generator().manual_seed(sum(shape))
    X = torch.randn(*shape, generator=g)
    X[torch.rand(*shape, generator=g) < 0.8] = 0.0
    X[0, :3] = -0.0
    r, a = O.negative_entries(X)
    r0, a0 = (X < 0).nonzero(as_tuple=True)
    assert torch.equal(r, r0) and torch.equal(a, a0) and len(r0) > 0


def test_ortho_ab_refuses_an_unknown_commit_in_one_line():
    """benchmarks/ortho_ab.py (the README's A/B of the term between commits): a commit that does not
    exist gets one line and a non-zero exit, before any activation is read."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "ortho_ab.py"
    done = subprocess.run([sys.executable, str(script), "no-such-commit"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert (
        done.stderr.strip().splitlines() == [done.stderr.strip()] and "no sae_harness/run/ortho_fast.py at 'no-such-commit'" in done.stderr
    )


@pytest.mark.parametrize(
    "shape, p, first_row", [((64, 40), 0.05, 0), ((7, 13), 0.3, 0), ((33, 16), 0.0, 0), ((8, 8), 1.0, 0), ((17, 4), 0.3, 1)]
)
def test_bool_nonzero_equals_nonzero(shape, p, first_row):
    """Row-major (row, col) of the set entries, as nonzero, also where the size is not a multiple of
    8 and for a slice that does not start on a whole 8-byte word (from row 1 of 4 columns: 64 entries)."""
    mask = (torch.rand(shape, generator=torch.Generator().manual_seed(3)) < p)[first_row:]
    for got, want in zip(O.bool_nonzero(mask), mask.nonzero(as_tuple=True)):
        assert torch.equal(got, want)


@pytest.mark.parametrize("route", ROUTES)
def test_fast_cofiring_pairs_equal_the_one_definition(route):
    """The fast path's co-firing pairs are experiment.cofiring's: the same fired latents, a pair
    exactly where two latents co-fired, and the same n_ij there (so c_ij, a function of n_ij and thr)."""
    _, active = random_case(9, B=200, F=40)
    ref = E.cofiring(active, threshold=0.3)
    pairs = O.cofiring_pairs(active, route)
    assert torch.equal(pairs.fired_A, ref.fired_A)
    r, c = (ref.n_AA > 0).nonzero(as_tuple=True)
    order = (pairs.row_P * 1000 + pairs.col_P).argsort()
    assert torch.equal(pairs.row_P[order], r) and torch.equal(pairs.col_P[order], c)
    torch.testing.assert_close(pairs.n()[order], ref.n_AA[r, c])
    assert torch.equal(ref.c_AA, ((ref.n_AA - 0.3) / 0.3).clamp(0, 1).fill_diagonal_(0))


def test_p95_is_the_nearest_rank_below():
    """One p95 for the training diagnostics and the held-out eval: the value at rank
    int(0.95 (n - 1)) of the sorted values, never interpolated."""
    values = torch.tensor([5.0, 1.0, 4.0, 2.0, 3.0] * 4 + [100.0])  # 21 values: rank 19 of 0..20
    assert O.p95(values) == sorted(values.tolist())[19] == 5.0
    assert O.p95(torch.tensor([0.3])) == pytest.approx(0.3) and O.p95(torch.tensor([])) is None
