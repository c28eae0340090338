"""Separation of decoder directions measured on held-out activations, after training: not the
training batches the orthogonality term minimises on, and at fixed settings that do not follow
any variant's schedule, so every variant is measured the same way.

- cofire_cos_mean / cofire_cos_p95: |cos| between the decoder directions of latent pairs that
  co-fire on the held-out tokens: n_ij = |m_i & m_j| / min(|m_i|, |m_j|) >= COFIRE_MIN_N, each
  latent firing on at least MIN_FIRES tokens (m_i: the held-out tokens where latent i is among
  the top k). Lower = more separated.
- nn_cos_above_half: the fraction of all latents whose nearest other decoder direction has
  |cos| > 0.5 (near-duplicate directions). Lower = more separated.

The block is "separation evaluation results" in final_info.json; it runs as the eval named
"separation" in --evals (its entry in registry.py).

Shape suffixes: N held-out tokens, D model width, F latents, K top-k, C a chunk of tokens.
"""

import torch

from sae_harness.run import data, precision
from sae_harness.run.ortho_fast import cofire_counts, p95

COFIRE_MIN_N = 0.1
"""A pair co-fires when n_ij >= this (chance level is about k / F: 0.016 on the embedded profile)."""
MIN_FIRES = 10
"""Latents that fire on fewer held-out tokens are left out of the pairs (n_ij of a rare latent is noise)."""
NN_COS = 0.5
"""nn_cos_above_half counts latents whose nearest decoder neighbour has |cos| above this."""
CHUNK = 8192  # tokens per encode / co-firing count chunk


@torch.no_grad()
def top_k_indices(sae, x_ND: torch.Tensor) -> torch.Tensor:
    """(N, K) indices of the latents the SAE keeps per token (its own encode: ReLU, top k)."""
    out = []
    for start in range(0, len(x_ND), CHUNK):
        acts_CF = sae.encode(x_ND[start : start + CHUNK].to(sae.W_enc.device, sae.W_enc.dtype))
        acts_CK, idx_CK = acts_CF.topk(int(sae.k), dim=-1)
        out.append(torch.where(acts_CK > 0, idx_CK, -1).cpu())
    return torch.cat(out)


@torch.no_grad()
def cofire_matrix(idx_NK: torch.Tensor, n_latents: int) -> torch.Tensor:
    """(F, F) float32 exact co-firing counts |m_i & m_j| (diagonal |m_i|) from top-k indices (-1 = none)."""
    dtype = precision.choose("auto", torch.device("cpu"))
    counts_FF = torch.zeros(n_latents, n_latents)
    for start in range(0, len(idx_NK), CHUNK):
        idx_CK = idx_NK[start : start + CHUNK]
        mask_CF = torch.zeros(len(idx_CK), n_latents + 1, dtype=dtype)
        mask_CF.scatter_(1, idx_CK % (n_latents + 1), 1.0)  # -1 lands in the extra column
        mask_FC = mask_CF[:, :n_latents].T.contiguous()
        counts_FF += cofire_counts(mask_FC, mask_FC)
    return counts_FF


@torch.no_grad()
def separation_measures(W_dec_FD: torch.Tensor, idx_NK: torch.Tensor) -> dict:
    """The held-out separation measures of a decoder (F, D) given the held-out top-k indices."""
    F = W_dec_FD.shape[0]
    counts_FF = cofire_matrix(idx_NK, F)
    fires_F = counts_FF.diagonal().clone()
    W_hat_FD = W_dec_FD.float() / W_dec_FD.float().norm(dim=-1, keepdim=True)
    cos_FF = (W_hat_FD @ W_hat_FD.T).abs_()
    n_FF = counts_FF / torch.minimum(fires_F[:, None], fires_F[None, :]).clamp_min(1)
    often_F = fires_F >= MIN_FIRES
    pairs_FF = (n_FF >= COFIRE_MIN_N) & often_F[:, None] & often_F[None, :]
    pairs_FF = pairs_FF.triu_(diagonal=1)
    cos_P = cos_FF[pairs_FF]
    cos_FF.fill_diagonal_(0)
    return dict(
        cofire_cos_mean=cos_P.mean().item() if len(cos_P) else None,
        cofire_cos_p95=p95(cos_P),
        cofire_pairs=int(len(cos_P)),
        nn_cos_above_half=(cos_FF.max(dim=1).values > NN_COS).float().mean().item(),
        nn_cos_mean=cos_FF.max(dim=1).values.mean().item(),
        alive_fraction=(fires_F > 0).float().mean().item(),
        tokens=len(idx_NK),
        settings=dict(cofire_min_n=COFIRE_MIN_N, min_fires=MIN_FIRES, nn_cos=NN_COS, p95="nearest-rank, lower"),
    )


def evaluate(sae, inputs) -> dict:
    """The separation block (registry.py): the saved SAE on cfg.heldout_tokens held-out activations."""
    x_ND = data.heldout_activations(inputs.cfg, inputs.device, inputs.heldout)
    return separation_measures(sae.W_dec.detach().cpu(), top_k_indices(sae, x_ND.to(inputs.device)))
