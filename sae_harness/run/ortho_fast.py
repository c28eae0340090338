"""The fast implementation of the orthogonality term that experiment.orthogonality_penalty defines
(selected by --ortho_impl fast, the default), and the training-batch separation diagnostics.

Same math as the reference, tested against it (value and gradient) and against a brute-force
loop on random inputs.

The term (_ortho_dense, on every device): over the latents that fired only, sorted by firing
count, in tiles of the upper triangle (c and |cos| are symmetric: half the work of all pairs).
Counts are exact (int8 x int8 -> int32 on CPU, float32 accumulation on CUDA); cos and the
gradient are bfloat16 matmuls (tensor cores; AMX / AVX-512 on CPUs), with the penalised pairs
whose bfloat16 cos is within BF16_COS_ERROR of 0 redone in float32. Memory O(ORTHO_BLOCK x
ORTHO_TILE) per tile plus O(fired latents x D), never an F x F matrix.

The diagnostics enumerate the co-firing pairs (pair_blocks) on one of two routes, which compute
the same pairs and counts: sparse (CPU) keeps only the pairs that co-fire, from an int8 product of
the firing masks on a CPU with fast int8 products or a sparse x sparse product elsewhere, in row blocks of at most
SPARSE_PAIR_BLOCK candidate pairs; dense (CUDA) takes the nonzeros of row blocks of the counts.

Shape suffixes as in experiment.py: B batch, D model width, F latents, A latents that fired,
C a row block of them, P pairs.
"""

import itertools
import warnings
from typing import NamedTuple

import torch

from sae_harness.run import precision


def pairs_route(device: torch.device) -> str:
    """How the diagnostics enumerate co-firing pairs: sparse on CPU, dense on CUDA."""
    return "dense" if device.type == "cuda" else "sparse"


def mask_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The firing masks' dtype for the co-firing counts: on CPU int8 where an int8 x int8 -> int32
    product is measured fast (AMX, VNNI; precision.int8_counts), else float32 (an emulated int8
    product is ~100x slower); elsewhere the matmul dtype."""
    if device.type == "cpu":
        return torch.int8 if precision.int8_counts(device) else torch.float32
    return dtype


def cofire_counts(mask_CB: torch.Tensor, mask_AB: torch.Tensor, mask_BA: torch.Tensor | None = None) -> torch.Tensor:
    """Exact |m_i & m_j| (C, A) as float32 from 0/1 firing masks laid out latent-major (C, B) and
    (A, B) (mask_BA: mask_AB.T, contiguous, if at hand). Low-precision products are exact; the
    sums are kept exact by accumulating in int32 (int8 masks, CPU) or float32 (CUDA), or by
    summing bfloat16 blocks of 256 tokens (every partial count <= 256 is representable)."""
    if mask_AB.dtype == torch.float32:
        return mask_CB @ mask_AB.T
    if mask_AB.dtype == torch.int8:
        return torch._int_mm(mask_CB, mask_AB.T.contiguous() if mask_BA is None else mask_BA).float()
    if mask_AB.is_cuda and "out_dtype" in torch.mm.__doc__:
        return torch.mm(mask_CB, mask_AB.T, out_dtype=torch.float32)
    counts_CA = torch.zeros(len(mask_CB), len(mask_AB), device=mask_AB.device)
    for b in range(0, mask_AB.shape[1], 256):
        counts_CA += (mask_CB[:, b : b + 256] @ mask_AB[:, b : b + 256].T).float()
    return counts_CA


ORTHO_BLOCK = 512  # rows per block of the term's upper triangle
ORTHO_TILE = 1024  # columns per tile of a row block: memory is O(ORTHO_BLOCK x ORTHO_TILE)


def fired_masks(active_BF: torch.Tensor, fired_A: torch.Tensor, dtype: torch.dtype):
    """(mask_AB, mask_BA, count_A) of the latents fired_A: their firing masks latent-major (A, B) in
    the counts' dtype (mask_dtype); with int8 (CPU) padded with never-firing rows up to a multiple
    of PAD_ROWS and also token-major (B, A_pad) for torch._int_mm (else None); |m_i| in float32
    (padding: 1, so n is 0 there). Built from the nonzeros of active_BF (B x k of them), not by
    transposing it: a transposed copy of a (B, F) mask costs about 6 ms here."""
    B, F = active_BF.shape
    masks_dtype = mask_dtype(active_BF.device, dtype)
    int8 = masks_dtype == torch.int8
    A_pad = -(-len(fired_A) // PAD_ROWS) * PAD_ROWS if int8 else len(fired_A)
    rank_F = torch.empty(F, dtype=torch.long, device=active_BF.device)
    rank_F[fired_A] = torch.arange(len(fired_A), device=active_BF.device)
    b_N, f_N = bool_nonzero(active_BF)
    a_N = rank_F[f_N]
    one = torch.ones((), dtype=masks_dtype, device=active_BF.device)
    mask_AB = torch.zeros(A_pad, B, dtype=masks_dtype, device=active_BF.device).index_put_((a_N, b_N), one)
    mask_BA = mask_AB.new_zeros(B, A_pad).index_put_((b_N, a_N), one) if int8 else None
    return mask_AB, mask_BA, torch.bincount(a_N, minlength=A_pad).float().clamp_min_(1)


def bool_nonzero(mask_BF: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """mask_BF.nonzero(as_tuple=True) of a sparse bool matrix, by 8-byte words: the nonzero words
    first, then the set bytes within them (on CPU 3 ms against 7 for nonzero on a 1,024 x 4,096
    TopK mask with 64 set per row)."""
    flat = mask_BF.reshape(-1)
    if flat.numel() % 8 or not mask_BF.is_contiguous() or mask_BF.storage_offset() % 8:  # no whole words
        return mask_BF.nonzero(as_tuple=True)
    words = flat.view(torch.int64).nonzero().squeeze(1)
    word, byte = flat.view(-1, 8)[words].nonzero(as_tuple=True)
    index = words[word] * 8 + byte
    return index // mask_BF.shape[1], index % mask_BF.shape[1]


def cofiring_blocks(active_BF: torch.Tensor, dtype: torch.dtype):
    """Dense route. Over the latents that fired only, in row blocks (never an F x F matrix): yields
    (fired_A, start, cofire_CA, n_CA) where row r of the block is fired latent start + r,
    cofire = |m_i & m_j| and n_ij = cofire / min(|m_i|, |m_j|). With int8 masks (CPU) the fired
    latents are padded with never-firing ones up to a multiple of PAD_ROWS (their cofire and n
    are 0): blocks are (C_pad, A_pad), rows and columns past A are padding."""
    fired_A = active_BF.any(0).nonzero().squeeze(1)
    mask_AB, mask_BA, count_A = fired_masks(active_BF, fired_A, dtype)
    for start in range(0, len(fired_A), ORTHO_BLOCK):
        stop = min(start + ORTHO_BLOCK, len(mask_AB))
        cofire_CA = cofire_counts(mask_AB[start:stop], mask_AB, mask_BA)
        n_CA = cofire_CA / torch.minimum(count_A[start:stop, None], count_A[None, :])
        yield fired_A, start, cofire_CA, n_CA


class CofiringPairs(NamedTuple):
    fired_A: torch.Tensor  # the latents that fired in the batch (ids into F)
    count_A: torch.Tensor  # |m_i|, float32
    row_P: torch.Tensor  # ordered pairs (i, j) that fire together at least once (i == j included),
    col_P: torch.Tensor  # as indices into fired_A, grouped by row (in a fixed order within a row)
    cofire_P: torch.Tensor  # |m_i & m_j|, float32, exact

    def n(self) -> torch.Tensor:
        """n_ij = |m_i & m_j| / min(|m_i|, |m_j|)."""
        return self.cofire_P / torch.minimum(self.count_A[self.row_P], self.count_A[self.col_P])


warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")  # the CSR ops used here are tested
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")  # the indices are built sorted here


def pair_cos(W_CD: torch.Tensor, W_AD: torch.Tensor, row_P: torch.Tensor, col_P: torch.Tensor):
    """w_i . w_j for pairs (row of W_CD, row of W_AD) grouped by row (float32 W): a sampled sparse
    matmul on CPU, which never gathers a P x D copy of the rows; a gather on CUDA."""
    if W_AD.is_cuda:
        return (W_CD[row_P] * W_AD[col_P]).sum(-1)
    pattern = _csr(_crow(row_P, len(W_CD)), col_P, W_AD.new_ones(len(col_P)), (len(W_CD), len(W_AD)))
    return torch.sparse.sampled_addmm(pattern, W_CD, W_AD.T, beta=0.0).values()


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape) -> torch.Tensor:
    return torch.sparse_csr_tensor(crow, col, values, size=shape, check_invariants=False)


def _crow(row_sorted: torch.Tensor, n_rows: int) -> torch.Tensor:
    crow = torch.zeros(n_rows + 1, dtype=torch.long, device=row_sorted.device)
    crow[1:] = torch.bincount(row_sorted, minlength=n_rows).cumsum(0)
    return crow


DENSE_COUNTS = None  # sparse route on CPU: the counts as dense mask products where int8 products are fast (None), always (True), never (False: the COO product, as elsewhere)
SPARSE_PAIR_BLOCK = 2**24  # sparse route: candidate pairs (rows x fired latents) per row block
SEPARATION_LATENTS = 4096  # feature_separation enumerates pairs among at most this many fired latents (all of them on the embedded profile)


def _empty_pairs(like: torch.Tensor) -> "CofiringPairs":
    return CofiringPairs(*(like.new_zeros(0, dtype=t) for t in (torch.long, torch.float32, torch.long, torch.long, torch.float32)))


def pair_blocks(active_BF: torch.Tensor, route: str = "sparse", dtype: torch.dtype = torch.float32):
    """The pairs of latents that fire together in the batch, with exact counts, in row blocks of the
    fired latents: yields (start, stop, pairs), pairs.row_P in [start, stop). Sparse route: the
    counts are M_C M^T, M the (A, B) firing mask as a sparse matrix and M_C its rows start:stop
    (float32 ones: products and sums of integers <= B are exact); at most SPARSE_PAIR_BLOCK
    candidate pairs per block. Dense route: the nonzeros of cofiring_blocks."""
    if route == "dense":
        count_A = None
        for fired_A, start, cofire_CA, _ in cofiring_blocks(active_BF, dtype):
            count_A = active_BF[:, fired_A].sum(0).float() if count_A is None else count_A
            r, a = cofire_CA.nonzero(as_tuple=True)
            stop = min(start + len(cofire_CA), len(fired_A))
            yield start, stop, CofiringPairs(fired_A, count_A, start + r, a, cofire_CA[r, a])
        return
    yield from _sparse_blocks(_SparseMasks.of(active_BF))


class HeldGradient(torch.autograd.Function):
    """P with dP/dW_dec computed beforehand (by the fast path or the reference, or held from an earlier
    step: experiment.TrainerTopK.ortho_term), so autograd hands weight x dP/dW_dec to W_dec.grad as
    it does every other term's gradient."""

    @staticmethod
    def forward(ctx, W_dec_FD: torch.Tensor, value: torch.Tensor, grad_FD: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(grad_FD)
        return value.clone()

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (grad_FD,) = ctx.saved_tensors
        return grad_output * grad_FD, None, None


def dense_counts(device: torch.device) -> bool:
    """Whether the sparse route counts co-firing pairs by a dense product of the firing masks on
    this device (_SparseMasks): on CPU, where int8 products are fast, unless DENSE_COUNTS says."""
    if torch.device(device).type != "cpu":
        return False
    return precision.int8_counts(device) if DENSE_COUNTS is None else DENSE_COUNTS


class _SparseMasks(NamedTuple):
    """The firing masks of the latents that fired. On a CPU with fast int8 products (AMX, VNNI; or
    wherever DENSE_COUNTS is True) a dense (tokens x latents) matrix in mask_dtype: a row block's
    counts are one product, exact, of which the co-firing pairs are the nonzeros (int8 on an AMX
    CPU, at a trained state of the embedded profile, where a third of all pairs co-fire: 44-57 ms
    for counts and pairs against 93-106 ms with the sparse product). Elsewhere sparse COO matrices:
    M_BA (tokens x latents) and the (latent, token) entries sorted by latent, so a row block of M_AB
    is a slice. Both give the same pairs in the same order. (On an AVX2 CPU the float32 dense
    product lost to the COO one at the synth and embedded profiles' sizes: docs/performance.md,
    `benchmarks/fast_loop.py records`. COO, not CSR: torch 2.14's CSR x CSR product on CPU leaks
    about 13 MB per call.)"""

    fired_A: torch.Tensor
    count_A: torch.Tensor
    mask_BA: torch.Tensor | None  # int8 or float32 (CPU: mask_dtype)
    M_BA: torch.Tensor | None  # sparse COO (elsewhere), and its entries by latent:
    crow_A: torch.Tensor | None  # entries of latent a are [crow_A[a], crow_A[a + 1]) of the two below
    a_by_latent_N: torch.Tensor | None
    b_by_latent_N: torch.Tensor | None

    @staticmethod
    def of(active_BF: torch.Tensor) -> "_SparseMasks":
        if dense_counts(active_BF.device):
            fired_A = active_BF.any(0).nonzero().squeeze(1)
            mask_BA = active_BF[:, fired_A].to(mask_dtype(active_BF.device, torch.float32))
            return _SparseMasks(fired_A, mask_BA.sum(0, dtype=torch.float32), mask_BA, None, None, None, None)
        B = len(active_BF)
        b_N, f_N = active_BF.nonzero(as_tuple=True)  # token-major, latents ascending within a token
        fired_A, a_N = torch.unique(f_N, return_inverse=True)
        A = len(fired_A)
        ones_N = torch.ones(len(b_N), device=active_BF.device)
        by_latent = a_N.argsort(stable=True)  # tokens ascending within a latent
        M_BA = torch.sparse_coo_tensor(torch.stack([b_N, a_N]), ones_N, (B, A), is_coalesced=True)
        count_A = torch.bincount(a_N, minlength=A).float()
        return _SparseMasks(fired_A, count_A, None, M_BA, _crow(a_N[by_latent], A), a_N[by_latent], b_N[by_latent])

    def rows_per_block(self) -> int:
        return max(1, SPARSE_PAIR_BLOCK // max(len(self.fired_A), 1))


def _sparse_blocks(masks: _SparseMasks):
    fired_A, count_A, mask_BA, M_BA, crow_A, a_by_latent_N, b_by_latent_N = masks
    A, rows = len(fired_A), masks.rows_per_block()
    for start in range(0, A, rows):
        stop = min(start + rows, A)
        if mask_BA is not None:
            C_CA = cofire_counts(mask_BA[:, start:stop].T.contiguous(), mask_BA.T, mask_BA)  # |m_i & m_j|, exact
            row_P, col_P = C_CA.nonzero(as_tuple=True)  # the pairs that co-fire at least once, by (row, col)
            yield start, stop, CofiringPairs(fired_A, count_A, row_P + start, col_P, C_CA[row_P, col_P])
            continue
        lo, hi = crow_A[start], crow_A[stop]
        rows_cols = torch.stack([a_by_latent_N[lo:hi] - start, b_by_latent_N[lo:hi]])
        M_CB = torch.sparse_coo_tensor(rows_cols, M_BA.values()[: hi - lo], (stop - start, M_BA.shape[0]), is_coalesced=True)
        C_CA = torch.sparse.mm(M_CB, M_BA).coalesce()  # only pairs that co-fire at least once, sorted by (row, col)
        row_P, col_P = C_CA.indices()
        yield start, stop, CofiringPairs(fired_A, count_A, row_P + start, col_P, C_CA.values())


def cofiring_pairs(active_BF: torch.Tensor, route: str = "sparse", dtype: torch.dtype = torch.float32) -> CofiringPairs:
    """Every pair of latents that fires together in the batch, with exact counts: all of
    pair_blocks at once (memory O(pairs); the training step goes block by block)."""
    blocks = [pairs for _, _, pairs in pair_blocks(active_BF, route, dtype)]
    if not blocks:
        return _empty_pairs(active_BF)
    if len(blocks) == 1:
        return blocks[0]
    fired_A, count_A = blocks[0].fired_A, blocks[0].count_A
    return CofiringPairs(fired_A, count_A, *(torch.cat([getattr(p, f) for p in blocks]) for f in ("row_P", "col_P", "cofire_P")))


def _ortho_dense(W_hat_FD: torch.Tensor, active_BF: torch.Tensor, threshold: float, dtype: torch.dtype):
    """Dense route over the upper triangle: c and |cos| are symmetric, so the sum over i != j is
    twice the sum over i < j and d/dw_i = 2 sum_j c_ij sign(cos_ij) w_j with c_ij = c_ji. The
    fired latents are sorted by firing count, so that for j > i min(|m_i|, |m_j|) = |m_i| (n_ij is
    the row's count scaled). Row blocks of ORTHO_BLOCK fired latents, in column tiles of ORTHO_TILE
    from the block's first latent on: about half the counts, Gram and elementwise work of all A x A
    pairs. Memory O(ORTHO_BLOCK x ORTHO_TILE) for a tile plus O(fired latents x D). With int8
    masks (CPU) the latents are padded with never-firing ones up to a multiple of PAD_ROWS (their
    c is 0), so that the matmuls see a few shapes. Returns (sum over i < j of c |cos|, its
    gradient with respect to the fired latents' unit rows, fired_A): half the term and half its
    gradient."""
    count_F = active_BF.sum(0, dtype=torch.int32)
    fired_A = count_F.nonzero().squeeze(1)
    fired_A = fired_A[count_F[fired_A].argsort(stable=True)]  # by firing count, ascending
    A, D = len(fired_A), W_hat_FD.shape[1]
    value = W_hat_FD.new_zeros((), dtype=torch.float32)
    if A == 0:
        return value, W_hat_FD.new_zeros(0, D, dtype=torch.float32), fired_A
    mask_AB, mask_BA, count_A = fired_masks(active_BF, fired_A, dtype)
    A_pad = len(mask_AB)
    W32_AD = _pad_rows(W_hat_FD[fired_A].float(), A_pad)
    W_AD = W32_AD.to(dtype)
    grad_AD = torch.zeros_like(W32_AD)
    scale_A1 = (1 / (threshold * count_A))[:, None]  # c = clamp(|m_i & m_j| / (thr |m_i|) - 1, 0, 1)
    for start in range(0, A, ORTHO_BLOCK):
        rows = slice(start, min(start + ORTHO_BLOCK, A_pad))
        for col in range(start, A_pad, ORTHO_TILE):
            value += _upper_tile(rows, slice(col, min(col + ORTHO_TILE, A_pad)), mask_AB, mask_BA, scale_A1, W_AD, W32_AD, grad_AD)
    return value, grad_AD[:A], fired_A


def _upper_tile(rows: slice, cols: slice, mask_AB, mask_BA, scale_A1, W_AD, W32_AD, grad_AD) -> torch.Tensor:
    """One (rows, cols) tile of the upper triangle (cols.start >= rows.start): returns the sum over
    its pairs j > i of c |cos| and adds their gradient, and its mirror's, to grad_AD. The matmuls
    run in W_AD's dtype."""
    dtype = W_AD.dtype
    low = dtype != torch.float32
    cofire_RC = cofire_counts(mask_AB[rows], mask_AB[cols], None if mask_BA is None else mask_BA[:, cols])
    c_RC = cofire_RC.mul_(scale_A1[rows]).sub_(1).clamp_(0, 1)  # c = clamp(n / thr - 1, 0, 1)
    if cols.start < rows.stop:  # j > i only
        c_RC[:, : rows.stop - cols.start].triu_(rows.start - cols.start + 1)
    cos_RC = torch.mm(W_AD[rows], W_AD[cols].T).float()
    if low:  # where the low-precision sign may be wrong (c > 0 and |cos| < error): redo in float32
        r, a = negative_entries(cos_RC.abs().sub_(BF16_COS_ERROR).mul_(c_RC))
        T_RC = c_RC.copysign_(cos_RC)  # c sign(cos), but c where cos is exactly 0: mended below
        if len(r):
            cos_ra = pair_cos(W32_AD[rows], W32_AD[cols], r, a)
            cos_RC[r, a] = cos_ra
            T_RC[r, a] = c_RC[r, a].abs().mul_(cos_ra.sign())  # an exact 0 can only be among these
    else:
        T_RC = c_RC.mul_(cos_RC.sign())
    value = torch.dot(T_RC.view(-1), cos_RC.view(-1))  # sum over j > i of c |cos|
    T_RC = T_RC.to(dtype)
    grad_AD[rows] += torch.mm(T_RC, W_AD[cols])  # the (i, j > i) terms ...
    grad_AD[cols] += torch.mm(T_RC.T, W_AD[rows])  # ... and their mirror (j, i)
    return value


def negative_entries(X_CA: torch.Tensor, tile: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of the entries < 0, row-major, as X.lt(0).nonzero() but in two levels when the
    columns split into tiles: the tiles with a negative minimum first, then the entries within
    them (a scan of the whole matrix by nonzero costs ~7x an elementwise pass on CPU)."""
    C, A = X_CA.shape
    if A % tile or not X_CA.is_contiguous():
        return (X_CA < 0).nonzero(as_tuple=True)
    X_CTt = X_CA.view(C, A // tile, tile)
    r, t = (X_CTt.amin(-1) < 0).nonzero(as_tuple=True)
    i, j = (X_CTt[r, t] < 0).nonzero(as_tuple=True)
    return r[i], t[i] * tile + j


# |cos in bfloat16 - cos| near cos = 0, for unit rows rounded to bfloat16 (unit roundoff u = 2^-8) and
# products summed in float32: at most 2u sum_k |w_ik w_jk|, so 2^-7 in the worst case (rows whose
# entries match in magnitude), about u sqrt(2 / D) for typical rows. The largest measured on a
# trained SAE's rows (D 640) at |cos| < 0.01 was 9.2e-4; this margin is 4x that, not the worst case.
BF16_COS_ERROR = 4e-3


PAD_ROWS = 256


def _pad_rows(X_ND: torch.Tensor, n_pad: int | None = None) -> torch.Tensor:
    """X with zero rows appended up to n_pad (default: a multiple of PAD_ROWS). On CPU a
    low-precision matmul of a shape not seen before costs 3-5x a repeated one (oneDNN builds a
    kernel per shape), and the number of fired latents changes with every batch: padded, a run
    sees a few shapes."""
    n = len(X_ND)
    n_pad = -(-n // PAD_ROWS) * PAD_ROWS if n_pad is None else n_pad
    return X_ND if n_pad == n else torch.cat([X_ND, X_ND.new_zeros(n_pad - n, *X_ND.shape[1:])])


def unit_rows(W_dec_FD: torch.Tensor) -> torch.Tensor:
    return W_dec_FD / W_dec_FD.norm(dim=-1, keepdim=True)


@torch.no_grad()
def penalty_value_and_grad(W_dec_FD: torch.Tensor, active_BF: torch.Tensor, threshold: float, dtype: torch.dtype | None = None):
    """(P, dP/dW_dec) for P as experiment.orthogonality_penalty defines it, without autograd, in
    one pass (c is symmetric, so d/dw_i = 2 sum_j c_ij sign(w_i . w_j) w_j). dtype: the matmuls'
    for cos and the gradient (default W_dec's); the counts are exact."""
    W_dec_FD = W_dec_FD.detach()
    norm_F1 = W_dec_FD.norm(dim=-1, keepdim=True)
    W_hat_FD = W_dec_FD / norm_F1
    half_value, half_grad_AD, fired_A = _ortho_dense(W_hat_FD, active_BF, threshold, dtype or W_dec_FD.dtype)
    n_latents = W_dec_FD.shape[0]
    # through w_hat = w / |w|, for the latents that fired: remove the radial component, divide by |w|
    W_hat_AD, norm_A1 = W_hat_FD[fired_A], norm_F1[fired_A]
    radial_A1 = torch.linalg.vecdot(half_grad_AD, W_hat_AD)[:, None]
    grad_AD = half_grad_AD.sub_(W_hat_AD.mul_(radial_A1)).mul_(2 / n_latents).div_(norm_A1)
    grad_FD = torch.zeros_like(W_dec_FD, dtype=torch.float32).index_copy_(0, fired_A, grad_AD)
    return 2 * half_value / n_latents, grad_FD


def feature_separation(
    W_dec_FD: torch.Tensor,
    active_BF: torch.Tensor,
    threshold: float,
    dtype: torch.dtype,
    max_pairs: int = 50_000,
    seed: int = 0,
    blocks=None,
    max_latents: int = SEPARATION_LATENTS,
) -> dict:
    """How separated the decoder directions of co-firing latents (|m_i & m_j| >= 1, i < j) are in
    this batch: mean and 95th-percentile |cos| (over a seeded sample of at most max_pairs pairs),
    the fraction of co-firing pairs with n_ij above the threshold, and the number of pairs with
    c_ij > 0 (the same pairs: c_ij > 0 exactly when n_ij > thr). Block by block (pair_blocks), so
    memory stays bounded; the sample is uniform over all blocks (the pairs with the max_pairs
    smallest seeded random keys).

    With more than max_latents fired latents, only the pairs among a seeded uniform sample of
    max_latents of them are enumerated (every pair equally likely to be kept, so the means and the
    fraction estimate the whole batch's, and the count is scaled up): at k 320, F 16384 nearly all
    A^2 / 2 pairs co-fire and enumerating them cost about 2 s a log record on an H200."""
    fired_A = active_BF.any(0).nonzero().squeeze(1)
    if len(fired_A) > max_latents:
        keep_S = separation_latents(fired_A, max_latents, seed)
        record = feature_separation(W_dec_FD[keep_S], active_BF[:, keep_S], threshold, dtype, max_pairs, seed, max_latents=max_latents)
        n, s = len(fired_A), max_latents
        return record | dict(sep_pairs_penalized=round(record["sep_pairs_penalized"] * n * (n - 1) / (s * (s - 1))))
    if blocks is None:
        blocks = pair_blocks(active_BF, pairs_route(W_dec_FD.device), dtype)
    blocks = iter(blocks)
    first = next(blocks, None)
    second = next(blocks, None) if first is not None else None
    if second is None:  # one block (or none): sample it as one array
        return _separation_one_block(W_dec_FD, first[2] if first else _empty_pairs(active_BF), threshold, max_pairs, seed)
    gen = torch.Generator().manual_seed(seed)
    n_cofiring = n_above = 0
    keys_S = torch.empty(0)
    rows_S = cols_S = torch.empty(0, dtype=torch.long)
    for _, _, pairs in itertools.chain([first, second], blocks):
        fired_A = pairs.fired_A
        off = pairs.row_P != pairs.col_P
        n_cofiring += int(off.sum())
        n_above += int(((pairs.n() > threshold) & off).sum())
        upper = (pairs.row_P < pairs.col_P).nonzero().squeeze(1)
        keys_S = torch.cat([keys_S, torch.rand(len(upper), generator=gen)])
        rows_S = torch.cat([rows_S, pairs.row_P[upper].cpu()])
        cols_S = torch.cat([cols_S, pairs.col_P[upper].cpu()])
        if len(keys_S) > max_pairs:  # keep the max_pairs smallest keys so far
            keep = keys_S.topk(max_pairs, largest=False).indices
            keys_S, rows_S, cols_S = keys_S[keep], rows_S[keep], cols_S[keep]
    n_cofiring, n_above = n_cofiring // 2, n_above // 2  # each pair appears as (i, j) and (j, i)
    if n_cofiring == 0:
        return dict(sep_cos_mean=None, sep_cos_p95=None, sep_frac_above_thr=None, sep_pairs_penalized=0)
    order = (rows_S * len(fired_A) + cols_S).argsort()  # grouped by row for pair_cos
    W_AD = unit_rows(W_dec_FD)[fired_A].float()
    device = W_AD.device
    cos_P = pair_cos(W_AD, W_AD, rows_S[order].to(device), cols_S[order].to(device)).abs()
    return _separation_record(cos_P, n_cofiring, n_above)


def separation_latents(fired_A: torch.Tensor, max_latents: int, seed: int) -> torch.Tensor:
    """A seeded uniform sample of max_latents of the latents that fired (fired_A), in index order."""
    pick = torch.randperm(len(fired_A), generator=torch.Generator().manual_seed(seed))[:max_latents]
    return fired_A[pick.to(fired_A.device)].sort().values


def _separation_one_block(W_dec_FD: torch.Tensor, pairs: CofiringPairs, threshold: float, max_pairs: int, seed: int) -> dict:
    off = pairs.row_P != pairs.col_P
    n_cofiring = int(off.sum()) // 2  # each pair appears as (i, j) and (j, i)
    if n_cofiring == 0:
        return dict(sep_cos_mean=None, sep_cos_p95=None, sep_frac_above_thr=None, sep_pairs_penalized=0)
    n_above = int(((pairs.n() > threshold) & off).sum()) // 2
    upper = (pairs.row_P < pairs.col_P).nonzero().squeeze(1)
    if len(upper) > max_pairs:  # a seeded sample, kept in pair order (grouped by row)
        pick = torch.randperm(len(upper), generator=torch.Generator().manual_seed(seed))[:max_pairs].sort().values
        upper = upper[pick.to(upper.device)]
    W_AD = unit_rows(W_dec_FD)[pairs.fired_A].float()
    cos_P = pair_cos(W_AD, W_AD, pairs.row_P[upper], pairs.col_P[upper]).abs()
    return _separation_record(cos_P, n_cofiring, n_above)


def p95(values_P: torch.Tensor) -> float | None:
    """The 95th percentile of a 1-D tensor by nearest rank, rounding down (sorted[int(0.95 (n - 1))]):
    the one definition, for the training diagnostics and the held-out separation eval."""
    return values_P.sort().values[int(0.95 * (len(values_P) - 1))].item() if len(values_P) else None


def _separation_record(cos_P: torch.Tensor, n_cofiring: int, n_above: int) -> dict:
    return dict(
        sep_cos_mean=cos_P.mean().item(),
        sep_cos_p95=p95(cos_P),
        sep_frac_above_thr=n_above / n_cofiring,
        sep_pairs_penalized=n_above,
    )


def check_against_reference(reference, W_dec_FD: torch.Tensor, active_BF: torch.Tensor, threshold: float, dtype: torch.dtype) -> str:
    """Compare this implementation with the reference definition (experiment.orthogonality_penalty,
    which a researcher may have edited) on one batch: value within 1e-3 relative and gradient
    cosine >= 0.95 (the bf16 dense route differs from float32 in sign flips at cos ~ 0). Returns
    "fast" when they agree, else prints one line and returns "reference"."""
    W_FD = W_dec_FD.detach().clone().requires_grad_()
    value_ref = reference(W_FD, active_BF, threshold)
    (grad_ref,) = torch.autograd.grad(value_ref, W_FD)
    value, grad = penalty_value_and_grad(W_dec_FD, active_BF, threshold, dtype)
    value_ref, value = value_ref.item(), value.item()
    cos = torch.nn.functional.cosine_similarity(grad.flatten().double(), grad_ref.flatten().double(), dim=0).item()
    same_value = abs(value - value_ref) <= 1e-3 * max(abs(value_ref), 1e-8)
    zero_grads = grad.abs().max().item() == 0 and grad_ref.abs().max().item() == 0
    if same_value and (zero_grads or cos >= 0.95):
        return "fast"
    print(
        f"ortho_impl: the reference orthogonality_penalty no longer matches sae_harness/run/ortho_fast.py on the first batch "
        f"(P {value_ref:.6g} vs {value:.6g}, gradient cosine {cos:.3f}); using the reference (as --ortho_impl reference)"
    )
    return "reference"
