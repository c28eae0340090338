"""Progressive Sparsity-Guided Orthogonality for Feature Separation.

A TopK sparse autoencoder is trained on residual-stream activations with

    L = L_recon + auxk_alpha * L_auxk + lambda2(p) * s * P,    p = step / total_steps
    P = (1/F) * sum_{i != j} c_ij(p) * |w_i . w_j|         (w_i: unit decoder direction of latent i)
    c_ij(p) = clamp((n_ij - thr(p)) / thr(p), 0, 1)        (n_ij: normalised co-firing in the batch)
    s = L_recon / P of the same step, without gradient (lambda2 is the term's share of L_recon)

so latents that fire together early in training are pushed apart hard, and the push relaxes as
training ends. `--variant` picks an arm of the ARMS table below: the idea, its controls (plain
TopK, the term held static) and the field's answers to absorption (Matryoshka, OrtSAE).

    python experiment.py --out_dir=run_1            # train + evaluate, writes run_1/final_info.json
    python experiment.py --out_dir=run_2 --variant none --k 32

This file is the idea: config -> SAE -> loss terms -> trainer -> training loop -> main. Data,
evals, reporting and the run directory live in sae_harness/, which a new idea never needs to read.

Shape suffixes on tensor names: B tokens in a batch, D model width, F latents (dict_size),
K latents kept per token (k), A latents that fired in the batch, N rows of a sample.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

from sae_harness.run.threads import policy

os.environ.update(policy())  # before torch loads: how its threads wait, so that two runs share the CPU (threads.py)

# beartype before nnsight: nnsight adds `save` to `object`, which beartype (imported later by
# SAEBench's probes) cannot hash if it loads after nnsight.
import beartype  # noqa: F401
import torch
import torch.nn.functional as F

from sae_harness.evals.registry import LM_EVAL_NAMES
from sae_harness.run import cli, data, ortho_fast, precision, profiles, rundir, runner
from sae_harness.run.buffer import geometric_median
from sae_harness.run.checks import (
    ARM,
    EVAL,
    LOG,
    PLACE,
    SEED,
    SEED_MAX,
    creatable_dir,
    eval_list,
    increasing_fractions,
    integer,
    real,
    seed_spec,
    text,
    word,
)
from sae_harness.run.sae_interface import SAEBenchSAE
from sae_harness.run.session import TrainingSession, batch_diagnostics
from sae_harness.run.tracking import Tracker

HERE = Path(__file__).resolve().parent

# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------


# The arms a comparison trains, one entry each: the CLI's --variant choices, sweep.py and the
# benchmarks read this table, so a new arm is one entry here (and a term of its own, if new).
@dataclass(frozen=True)
class Arm:
    weight: Literal["schedule", "start", "mean", "rising", "following"] = "schedule"
    """lambda2: weight_schedule over p | held at its p=0 value | constant at the schedule's mean over p (the same dose) | max p^2, rising while absorption forms (the same dose) | the mean's, times the contained co-firing overlap over its mean so far (TrainerTopK.follow_factor)"""
    threshold: Literal["schedule", "start"] = "schedule"
    """thr: threshold_schedule over p | held at its p=0 value"""
    term: Literal["cofiring", "ortsae"] | None = "cofiring"
    """the orthogonality term: P, weighted by co-firing (the idea) | OrtSAE's block-sampled cosine penalty | none"""
    nested: bool = False
    """Matryoshka's nested reconstruction losses join the loss"""
    pairs: Literal["all", "contained"] = "all"
    """c_ij as defined | c_ij x (1 - rarer count / other count): pairs where one latent fires inside a more frequent one's firings (a child inside its parent)"""
    cofire_on: Literal["fired", "candidates"] = "fired"
    """the masks n_ij counts: the k latents TopK kept | the top 2k pre-activations above 0, so a latent its neighbour outcompetes still counts"""


ARMS = {
    "progressive": Arm(),  # the idea
    "static": Arm(weight="start", threshold="start"),
    "static_matched": Arm(weight="mean", threshold="start"),  # static at progressive's dose
    "none": Arm(term=None),  # plain TopK, the baseline
    "matryoshka": Arm(term=None, nested=True),  # the field's answer to absorption: nested losses
    "ortsae": Arm(weight="mean", threshold="start", term="ortsae"),  # the field's orthogonality penalty, at static_matched's dose
    # variants designed from the ground truth (docs/method.md: hypotheses), each one change to the idea
    "rising": Arm(weight="rising", threshold="start"),  # the term grows while absorption forms
    "contained": Arm(pairs="contained"),  # the weight goes to parent/child-like pairs
    "candidates": Arm(cofire_on="candidates"),  # a suppressed parent stays visible
    "matryoshka_progressive": Arm(nested=True),  # the idea on top of nested losses
    "following": Arm(weight="following", threshold="start"),  # the dose follows the overlap forming between nested latents
}


@dataclass
class Config:
    # run
    out_dir: str = field(default="", metadata=creatable_dir("--out_dir=run_1") | PLACE)
    """run directory (required): results, logs, the SAE and plots go here"""
    profile: Literal[(profiles.AUTO, *PROFILES)] = profiles.AUTO
    """fills every field left at None (see PROFILES); auto = gemma-2-2b with CUDA, else gemma-3-270m"""
    overwrite: bool = field(default=False, metadata=PLACE)
    """replace a finished run in out_dir instead of refusing"""
    seed: int = field(default=42, metadata=integer(0, SEED_MAX) | SEED)
    """seed of the SAE: its initialisation and the order of training batches"""
    seeds: str = field(default="1", metadata=seed_spec() | SEED)
    """SAEs trained and evaluated in this run: a count N (seeds seed .. seed+N-1) or a comma list (42,43); several go into out_dir/seed_<s>/"""
    data_seed: int = field(default=42, metadata=integer(0, SEED_MAX))
    """seed of the data: the train / held-out text split, so the activation cache and the evals' held-out text"""
    eval_seed: int = field(default=42, metadata=integer(0, SEED_MAX))
    """seed of the evals: absorption's word sample, the probes' train / test splits, every eval stage's RNG"""
    device: Literal["auto", "cpu", "cuda"] | None = None
    """where the model and the SAE run (profile)"""
    # text and model
    lm_name: str | None = field(default=None, metadata=text())
    """language model whose activations are encoded (profile)"""
    layer: int | None = field(default=None, metadata=integer(0))
    """residual stream after this decoder layer, resid_post (profile)"""
    text_source: Literal["bbc", "pile", "synth"] | None = None
    """bbc (BBC News, embedded) | pile (monology/pile-uncopyrighted, hub) | synth (samples of the world lm_name names) (profile)"""
    heldout_fraction: float = field(default=0.3, metadata=real(0, 1, lo_open=True, hi_open=True))
    """share of BBC articles per topic held out for evals"""
    heldout_tokens: int = field(default=65_536, metadata=integer(1))
    """held-out tokens for the separation eval, extracted once into a small cache beside the training one"""
    context_length: int = field(default=128, metadata=integer(2))
    """tokens per context window (BOS first; BOS is not trained on)"""
    tokens: int | None = field(default=None, metadata=integer(1))
    """training activations (tokens) extracted and cached (profile)"""
    epochs: int | None = field(default=None, metadata=integer(1))
    """passes over the cached activations (a fresh order each pass): trains on epochs x tokens (profile)"""
    llm_batch_size: int | None = field(default=None, metadata=integer(1))
    """contexts per language-model forward during extraction (profile)"""
    llm_dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    """precision of the language-model forward during extraction; auto = bfloat16 where a matmul is measured faster in it here (CUDA; CPUs with AMX / AVX-512-BF16), else float32"""
    cache_dir: str = field(default=str(HERE / ".cache"), metadata=creatable_dir("--cache_dir=.cache") | PLACE)
    """activation cache shared by all run dirs"""
    # SAE
    dict_size: int | None = field(default=None, metadata=integer(1))
    """number of latents F (profile)"""
    k: int | None = field(default=None, metadata=integer(1))
    """latents kept per token, TopK (profile)"""
    batch_size: int | None = field(default=None, metadata=integer(1))
    """activations per SAE training step (profile)"""
    lr: float = field(default=0.0, metadata=real(0))
    """Adam learning rate; 0 = auto, 2e-4 / sqrt(dict_size / 2^14) (the 1/sqrt(F) scaling law of Gao et al. 2024, figure 3, as dictionary_learning's TopK trainer applies it)"""
    lr_decay_start: float = field(default=0.8, metadata=real(0, 1))
    """fraction of training after which lr decays linearly to 0"""
    auxk_alpha: float = field(default=1 / 32, metadata=real(0))
    """weight of the AuxK loss on dead latents"""
    dead_tokens: int | None = field(default=None, metadata=integer(1))
    """a latent that has not fired for this many tokens is dead (profile)"""
    grad_clip: float = field(default=1.0, metadata=real(0, lo_open=True))
    """max gradient norm"""
    sae_dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    """precision of the SAE's training matmuls (the encoder under autocast, the orthogonality term's products; weights and Adam stay float32); auto as llm_dtype"""
    # orthogonality
    variant: Literal[tuple(ARMS)] = field(default="progressive", metadata=ARM)
    """the arm to train: an entry of ARMS above (how lambda2 and thr follow p, its term, nested losses)"""
    matryoshka_widths: list[float] = field(default_factory=lambda: [1 / 16, 1 / 8, 1 / 4, 1 / 2], metadata=increasing_fractions() | ARM)
    """matryoshka: the inner levels, as fractions of dict_size; each reconstructs x from latents [0, width) alone (the whole dictionary is the outer level)"""
    ortsae_chunks: int = field(default=4, metadata=integer(1) | ARM)
    """ortsae: the latents are split into this many random blocks each step; cosines are taken within blocks only"""
    ortho_lambda_max: float = field(default=0.05, metadata=real(0) | ARM)
    """lambda2 at p=0, in units of the recon loss: P is scaled by recon / P of each step, so the term is lambda2(p) x recon on every step and profile (0.05: 5 percent of the recon loss at p=0)"""
    ortho_base_threshold: float = field(default=0.25, metadata=real(0, 1, lo_open=True) | ARM)
    """co-firing threshold thr at p=0"""
    weight_schedule: Literal["quadratic", "constant"] = field(default="quadratic", metadata=ARM)
    """lambda2(p): quadratic = max*(1-p)^2 | constant"""
    threshold_schedule: Literal["linear", "exponential", "constant"] = field(default="linear", metadata=ARM)
    """thr(p): linear = base*(1-p) | exponential = base*exp(-decay_rate*p) | constant"""
    decay_rate: float = field(default=3.0, metadata=real(0) | ARM)
    """rate of the exponential threshold schedule"""
    threshold_floor: float = field(default=1e-3, metadata=real(0, 1, lo_open=True) | ARM)
    """thr(p) never goes below this, so p -> 1 stays finite"""
    ortho_every: int = field(default=5, metadata=integer(1) | ARM)
    """compute the orthogonality term on every n-th step and hold its gradient in between (1 = every step)"""
    ortho_impl: Literal["fast", "reference"] = field(default="fast", metadata=ARM)
    """reference = orthogonality_penalty below, by autograd; fast = sae_harness/run/ortho_fast.py, the same math"""
    # logging, checkpoints, evals
    log_every: int = field(default=0, metadata=integer(0) | LOG)
    """steps between training_log.jsonl records; 0 = auto (about 100 records)"""
    checkpoint_every: int = field(default=200, metadata=integer(1) | PLACE)
    """steps between checkpoints (an interrupt always writes one)"""
    evals: str | None = field(default=None, metadata=eval_list() | EVAL)
    """comma list of evals to run after training, or none (separation: decoder |cos| of latents co-firing on held-out text; synth: ground truth) (profile)"""
    wandb_project: str = field(default="", metadata=word() | PLACE)
    """log to this Weights & Biases project too (off when empty; WANDB_MODE=offline works)"""

    @property
    def resolved_lr(self) -> float:
        return self.lr or 2e-4 / math.sqrt(self.dict_size / 2**14)

    @property
    def total_steps(self) -> int:
        return (self.epochs or 1) * (self.tokens // self.batch_size)

    @property
    def hook_name(self) -> str:
        return f"blocks.{self.layer}.hook_resid_post"


SYNTH_PROFILE = dict(  # ground truth: a SynthSAEBench world (sae_harness/run/synth.py; docs/synthetic.md), offline, CPU
    lm_name="synth:synth-cpu",  # synth:synthsaebench-16k is the published 16k world (a GPU job)
    layer=0,
    text_source="synth",
    device="auto",
    tokens=2**19,  # world samples drawn once into the cache
    epochs=6,  # 3,072 steps
    llm_batch_size=1,
    dict_size=1024,
    k=13,  # the world's true L0 (13.1)
    batch_size=1024,
    dead_tokens=100_000,
    evals="synth",
)

# The one place for every value that differs between profiles: a Config field left at None takes
# its value from here; a value given on the command line wins.
PROFILES = {
    profiles.EMBEDDED: dict(  # gemma-3-270m, the embedded default: offline, CPU
        lm_name="google/gemma-3-270m",
        layer=9,
        text_source="bbc",
        device="auto",
        tokens=600_000,
        epochs=4,  # one pass over 600k tokens leaves the SAE under-trained (results/history.md: size_epochs)
        llm_batch_size=16,
        dict_size=4096,
        k=64,
        batch_size=1024,
        dead_tokens=100_000,
        evals=",".join(LM_EVAL_NAMES),
    ),
    profiles.GEMMA2: dict(  # gemma-2-2b, the seed's setting: CUDA and the Hugging Face hub
        lm_name="google/gemma-2-2b",
        layer=12,
        text_source="pile",
        device="cuda",
        tokens=2441 * 2048,
        epochs=1,
        llm_batch_size=32,
        dict_size=16384,
        k=320,
        batch_size=2048,
        dead_tokens=10_000_000,
        evals=",".join(LM_EVAL_NAMES),
    ),
    profiles.SYNTH: SYNTH_PROFILE,
    # SynthSAEBench-16k's regime at CPU size: mutually exclusive siblings, 1 latent per 4 true features
    # (1,024); k the world's true L0 (10.8); the 6 passes stop where plain TopK's absorption has
    # stopped climbing (results/history.md: synth_narrow_curve)
    profiles.SYNTH_NARROW: SYNTH_PROFILE | dict(lm_name="synth:synth-cpu-me", dict_size=256, k=11),
}


# ----------------------------------------------------------------------------------------------
# SAE
# ----------------------------------------------------------------------------------------------


class TrainOutput(NamedTuple):
    x_hat_BD: torch.Tensor  # reconstruction
    acts_BK: torch.Tensor  # values of the k kept latents (>= 0)
    idx_BK: torch.Tensor  # their indices
    pre_BF: torch.Tensor  # post-ReLU pre-activations of all latents (for AuxK)


class AutoEncoderTopK(SAEBenchSAE):
    """A TopK SAE as SAEBench's evals read it (sae_harness/run/sae_interface.py: the weights, decode,
    forward, device, dtype, its config), with the k buffer, the TopK encode and the training forward.
    Decoder rows are kept at unit norm."""

    def __init__(self, d_in: int, d_sae: int, k: int, model_name: str, hook_layer: int, device, dtype=torch.float32, seed: int = 0):
        super().__init__(d_in, d_sae, model_name, hook_layer, architecture="topk")
        self.register_buffer("k", torch.tensor(k, dtype=torch.int))
        W_dec_FD = torch.randn(d_sae, d_in, generator=torch.Generator().manual_seed(seed))
        W_dec_FD /= W_dec_FD.norm(dim=-1, keepdim=True)
        with torch.no_grad():
            self.W_dec.copy_(W_dec_FD)
            self.W_enc.copy_(W_dec_FD.T)
        self.cfg.dtype = str(dtype).removeprefix("torch.")
        self.to(device=device, dtype=dtype)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The k largest post-ReLU pre-activations of each token, the rest 0 (x: (..., D) -> (..., F))."""
        pre = F.relu((x - self.b_dec) @ self.W_enc + self.b_enc)
        top = pre.topk(int(self.k), dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, top.indices, top.values)

    def forward_train(self, x_BD: torch.Tensor, dtype: torch.dtype = torch.float32) -> TrainOutput:
        with torch.autocast(x_BD.device.type, dtype=dtype, enabled=dtype != torch.float32):
            pre_BF = F.relu((x_BD - self.b_dec) @ self.W_enc + self.b_enc)
        pre_BF = pre_BF.float()
        acts_BK, idx_BK = pre_BF.topk(int(self.k), dim=-1, sorted=False)
        x_hat_BD = sparse_decode(acts_BK, idx_BK, self.W_dec) + self.b_dec
        return TrainOutput(x_hat_BD, acts_BK, idx_BK, pre_BF)

    @classmethod
    def from_saelens(cls, lens, device="cpu") -> AutoEncoderTopK:
        meta = lens.cfg.metadata
        sae = cls(lens.cfg.d_in, lens.cfg.d_sae, lens.cfg.k, meta.model_name, meta.hook_layer, device="cpu")
        with torch.no_grad():
            for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
                getattr(sae, name).copy_(getattr(lens, name).detach().float())
        return sae.to(device=device)


def sparse_decode(acts_BK: torch.Tensor, idx_BK: torch.Tensor, W_dec_FD: torch.Tensor) -> torch.Tensor:
    """sum_k acts[b, k] * W_dec[idx[b, k]]: B*K*D work instead of the dense B*F*D."""
    return F.embedding_bag(idx_BK, W_dec_FD, per_sample_weights=acts_BK.to(W_dec_FD.dtype), mode="sum")


def load_sae(path: Path, device="cpu") -> AutoEncoderTopK:
    return AutoEncoderTopK.from_saelens(rundir.load_lens_sae(path), device=device)


# ----------------------------------------------------------------------------------------------
# Loss terms: pure functions of tensors
# ----------------------------------------------------------------------------------------------


def ortho_lambda(p: float, cfg: Config) -> float:
    """lambda2(p) as the arm asks: weight_schedule at p, or at p=0 (start), or constant at the schedule's
    mean over p (mean: the integral of max * (1-p)^2 dp = max / 3, so the same dose), or rising as the
    schedule mirrored, max * p^2 (the same dose); following: the mean, which the trainer scales by
    follow_factor; 0 without a term."""
    arm = ARMS[cfg.variant]
    if arm.term is None:
        return 0.0
    quadratic = cfg.weight_schedule == "quadratic"
    if arm.weight in ("mean", "following"):
        return cfg.ortho_lambda_max / 3 if quadratic else cfg.ortho_lambda_max
    p = {"start": 0.0, "rising": 1 - p}.get(arm.weight, p)
    return cfg.ortho_lambda_max * (1 - p) ** 2 if quadratic else cfg.ortho_lambda_max


def ortho_threshold(p: float, cfg: Config) -> float:
    """thr(p), never below threshold_floor; an arm with threshold 'start' holds p at 0."""
    p = 0.0 if ARMS[cfg.variant].threshold == "start" else p
    base = cfg.ortho_base_threshold
    thr = {"linear": base * (1 - p), "exponential": base * math.exp(-cfg.decay_rate * p), "constant": base}[cfg.threshold_schedule]
    return max(thr, cfg.threshold_floor)


class Cofiring(NamedTuple):
    fired_A: torch.Tensor  # the latents that fired in the batch (a latent that never fired has c = 0)
    n_AA: torch.Tensor  # n_ij = |m_i & m_j| / min(|m_i|, |m_j|)
    c_AA: torch.Tensor  # c_ij = clamp((n_ij - thr) / thr, 0, 1), 0 on the diagonal


def cofiring(active_BF: torch.Tensor, threshold: float, contained: bool = False) -> Cofiring:
    """The co-firing weight c_ij of the idea, from a batch's firing masks (m_i: the tokens where
    latent i fired) and thr, for the latents that fired. The one definition: the penalty, the
    mechanism log and the benchmark's naive form call it; ortho_fast is tested equal to it.
    contained (the arm's pairs): c_ij x (1 - min(|m_i|, |m_j|) / max(|m_i|, |m_j|)), most weight
    where a rare latent fires inside a frequent one's firings, none between equally frequent ones."""
    fired_A = active_BF.any(0).nonzero().squeeze(1)
    mask_BA = active_BF[:, fired_A].float()
    cofire_AA = mask_BA.T @ mask_BA  # |m_i & m_j|, exact in float32; the diagonal is |m_i|
    count_A = cofire_AA.diagonal()
    rarer_AA = torch.minimum(count_A[:, None], count_A[None, :])
    n_AA = cofire_AA / rarer_AA
    c_AA = ((n_AA - threshold) / threshold).clamp(0, 1)
    if contained:
        c_AA = c_AA * (1 - rarer_AA / torch.maximum(count_A[:, None], count_A[None, :]))
    return Cofiring(fired_A, n_AA, c_AA.fill_diagonal_(0))


def near_firing(pre_BF: torch.Tensor, k: int) -> torch.Tensor:
    """The candidates' masks (an arm's cofire_on): each token's top k pre-activations above 0."""
    top_BK = pre_BF.topk(min(k, pre_BF.shape[1]), dim=-1)
    return torch.zeros_like(pre_BF, dtype=torch.bool).scatter_(1, top_BK.indices, top_BK.values > 0)


def orthogonality_penalty(W_dec_FD: torch.Tensor, active_BF: torch.Tensor, threshold: float, contained: bool = False) -> torch.Tensor:
    """P = (1/F) * sum_{i != j} c_ij * |w_i . w_j|, the definition (edit here or in cofiring to try a
    variant; run it with --ortho_impl reference). w_i: unit decoder row of latent i; c_ij comes from
    the firing masks, so it has no gradient."""
    fired_A, _, c_AA = cofiring(active_BF, threshold, contained)
    W_AD = W_dec_FD[fired_A]
    W_hat_AD = W_AD / W_AD.norm(dim=-1, keepdim=True)
    cos_AA = W_hat_AD @ W_hat_AD.T
    return (c_AA * cos_AA.abs()).sum() / W_dec_FD.shape[0]


def ortsae_penalty(W_dec_FD: torch.Tensor, chunks: int, generator: torch.Generator) -> torch.Tensor:
    """OrtSAE's orthogonality loss (Korznikov et al. 2025, arXiv 2509.22033), as this harness reads it:
    the latents are split into `chunks` random blocks; each latent's largest squared cosine with
    another latent of its block, averaged over latents. No co-firing weight; cost F^2 D / chunks."""
    W_hat_FD = W_dec_FD / W_dec_FD.norm(dim=-1, keepdim=True)
    order = torch.randperm(W_dec_FD.shape[0], generator=generator).to(W_dec_FD.device)
    total = W_dec_FD.new_zeros(())
    for block in order.chunk(chunks):
        cos_CC = W_hat_FD[block] @ W_hat_FD[block].T
        self_CC = torch.eye(len(block), dtype=torch.bool, device=W_dec_FD.device)
        total = total + cos_CC.pow(2).masked_fill(self_CC, 0).max(dim=1).values.sum()
    return total / W_dec_FD.shape[0]


def recon_loss(residual_BD: torch.Tensor) -> torch.Tensor:
    """Squared error summed over D, mean over tokens (inputs are scaled to E||x||^2 = D)."""
    return residual_BD.pow(2).sum(-1).mean()


def auxk_loss(pre_BF: torch.Tensor, dead_F: torch.Tensor, residual_BD: torch.Tensor, W_dec_FD: torch.Tensor, k_aux: int) -> torch.Tensor:
    """AuxK (Gao et al. 2024): the top-k_aux dead latents reconstruct the residual error, normalised
    by the residual's variance. 0 when no latent is dead."""
    n_dead = int(dead_F.sum())
    if n_dead == 0:
        return pre_BF.new_zeros(())
    aux_acts_BK, aux_idx_BK = pre_BF.masked_fill(~dead_F, -torch.inf).topk(min(k_aux, n_dead), dim=-1, sorted=False)
    e_hat_BD = sparse_decode(aux_acts_BK.relu(), aux_idx_BK, W_dec_FD)
    variance = (residual_BD - residual_BD.mean(0)).pow(2).sum(-1).mean()
    return (e_hat_BD - residual_BD).pow(2).sum(-1).mean() / variance.clamp_min(1e-8)


def nested_recon_loss(
    x_BD: torch.Tensor, acts_BK: torch.Tensor, idx_BK: torch.Tensor, W_dec_FD: torch.Tensor, b_dec_D: torch.Tensor, widths: list[int]
) -> torch.Tensor:
    """Matryoshka SAEs (Bussmann et al. 2025), as SAELens trains them: the sum over inner widths m of
    the recon loss of x reconstructed from the kept latents with index < m alone (plus b_dec), so the
    first latents must reconstruct on their own and cannot leave a general feature to later ones.
    One pass: each token's kept latents sorted by index fall into G + 1 contiguous bags (the levels'
    increments and the rest), decoded by one embedding_bag, then taken off the residual in turn."""
    if not widths:
        return x_BD.new_zeros(())
    B, K = idx_BK.shape
    G = len(widths)
    idx_BK, order_BK = idx_BK.sort(dim=1)
    acts_BK = acts_BK.gather(1, order_BK)
    ends_BG = torch.searchsorted(idx_BK, torch.tensor(widths, device=idx_BK.device).expand(B, G).contiguous())
    starts_BG1 = torch.cat([ends_BG.new_zeros(B, 1), ends_BG], dim=1)  # bag g: sorted positions [starts[g], starts[g + 1])
    offsets = (starts_BG1 + K * torch.arange(B, device=idx_BK.device)[:, None]).flatten()
    increments = F.embedding_bag(idx_BK.flatten(), W_dec_FD, offsets, per_sample_weights=acts_BK.flatten().to(W_dec_FD.dtype), mode="sum")
    residual_BD, total = x_BD - b_dec_D, x_BD.new_zeros(())
    for increment_BD in increments.view(B, G + 1, -1).unbind(1)[:G]:  # unbind: no zero-filled slice gradients
        residual_BD = residual_BD - increment_BD
        total = total + recon_loss(residual_BD)
    return total


# ----------------------------------------------------------------------------------------------
# Trainer
# ----------------------------------------------------------------------------------------------


class Term(NamedTuple):
    """One loss term of a step: its value (unweighted) and its weight in the loss."""

    value: torch.Tensor
    weight: float  # 0: off on this step


class StepOutput(NamedTuple):
    """What one training step did, for the logger."""

    loss: torch.Tensor  # the sum of weight x value over the terms
    terms: dict  # name -> Term (detached), in the order the log and the figures show them
    ortho_lambda: float  # lambda2(p)
    threshold: float  # thr(p)
    active_BF: torch.Tensor  # which latents fired for which token
    cofire_BF: torch.Tensor  # the masks the term counted co-firing on (active_BF, or the arm's candidates)
    dead_F: torch.Tensor  # latents that had not fired for dead_tokens tokens before this step


class TrainerTopK:
    """The TopK recipe (geometric-median b_dec, AuxK on dead latents, gradient parallel to decoder
    rows removed, clip, Adam step, decoder renormalised, linear lr decay late) plus the
    orthogonality term."""

    def __init__(self, cfg: Config, sae: AutoEncoderTopK):
        self.cfg = cfg
        self.arm = ARMS[cfg.variant]
        self.sae = sae
        self.total_steps = cfg.total_steps
        self.optimizer = torch.optim.Adam(sae.parameters(), lr=cfg.resolved_lr)
        self.tokens_since_fired_F = torch.zeros(cfg.dict_size, dtype=torch.long, device=sae.W_dec.device)
        self.k_aux = sae.cfg.d_in // 2  # AuxK's k: half the model width (Gao et al. 2024, appendix B.1; dictionary_learning's TopK trainer)
        self.dtype = precision.choose(cfg.sae_dtype, sae.W_dec.device)  # of the encoder's and the fast term's matmuls
        self.ortho_impl = "reference" if self.arm.pairs == "contained" else cfg.ortho_impl  # the fast path computes the idea's c_ij only
        self.matryoshka_widths = [max(1, round(w * cfg.dict_size)) for w in cfg.matryoshka_widths]
        self.held_ortho = None  # (P, dP/dW_dec) from the last step that computed the term
        self.ortho_scale = None  # s = recon / P of the latest step with the term on (logged)
        self.ortho_grad_share = None  # |weight * dP/dW_dec| / |the rest of W_dec's gradient| on that step (logged)
        self.follow = (0.0, 0, None)  # the following arm: M summed over the steps it was computed on, their count, the held factor

    def start(self, batch) -> None:
        """A fresh run's start: b_dec at the geometric median of the first batch (batch(i): the i-th)."""
        with torch.no_grad():
            self.sae.b_dec.copy_(geometric_median(batch(0)))

    def follow_factor(self, cofire_BF: torch.Tensor, threshold: float, step: int) -> float:
        """The following arm's factor on lambda2 (the mean dose, max/3): M / mean of M so far, clamped
        to [0, 3] (so lambda2 stays within [0, max]). M is this batch's contained co-firing overlap,
        the contained arm's P: decoder |cos| on pairs where a rare latent fires inside a frequent
        one's firings. The dose rises while such pairs' directions converge (the overlap absorption
        builds) and falls back when that stops: it follows the batch, not p. Computed when P is
        (every ortho_every-th step) and held in between."""
        total, count, held = self.follow
        if held is None or step % self.cfg.ortho_every == 0:
            with torch.no_grad():
                m = orthogonality_penalty(self.sae.W_dec, cofire_BF, threshold, contained=True).item()
            total, count = total + m, count + 1
            held = min(3.0, m * count / total) if total > 0 else 1.0
            self.follow = (total, count, held)
        return held

    def lr_at(self, step: int) -> float:
        decay_from = int(self.cfg.lr_decay_start * self.total_steps)
        if step < decay_from:
            return self.cfg.resolved_lr
        return self.cfg.resolved_lr * (self.total_steps - step) / max(1, self.total_steps - decay_from)

    def penalty_value_and_grad(self, active_BF: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(P, dP/dW_dec) on this batch, by the selected implementation."""
        if self.ortho_impl == "reference":
            W_dec_FD = self.sae.W_dec.detach().clone().requires_grad_()
            value = orthogonality_penalty(W_dec_FD, active_BF, threshold, self.arm.pairs == "contained")
            return value.detach(), torch.autograd.grad(value, W_dec_FD)[0]
        return ortho_fast.penalty_value_and_grad(self.sae.W_dec, active_BF, threshold, self.dtype)

    def ortho_term(self, active_BF: torch.Tensor, threshold: float, step: int, lam: float, recon: torch.Tensor) -> Term:
        """P with its weight lambda2(p) x s, s = recon / P of this step (both detached): the term's
        value is lambda2(p) x recon on every step, so lambda2 is its share of the recon loss whatever
        the data, D, F, k and however P grows as co-firing forms (docs/method.md: the dose). P and
        dP/dW_dec are computed on every ortho_every-th step and held in between (from a batch at most
        ortho_every - 1 steps old). ortsae: its penalty instead, on every step, by plain autograd."""
        if lam == 0:
            return Term(recon.new_zeros(()), 0.0)
        if self.arm.term == "ortsae":
            blocks = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + step)  # a fresh split each step, the same on resume
            value = ortsae_penalty(self.sae.W_dec, self.cfg.ortsae_chunks, blocks)
        else:
            if self.held_ortho is None or step % self.cfg.ortho_every == 0:
                if self.held_ortho is None and self.ortho_impl == "fast":
                    self.ortho_impl = ortho_fast.check_against_reference(
                        orthogonality_penalty, self.sae.W_dec, active_BF, threshold, self.dtype
                    )
                self.held_ortho = self.penalty_value_and_grad(active_BF, threshold)
            value = ortho_fast.HeldGradient.apply(self.sae.W_dec, *self.held_ortho)
        if value.item() <= 0:
            return Term(value, 0.0)
        self.ortho_scale = recon.item() / value.item()
        return Term(value, lam * self.ortho_scale)

    def loss_terms(self, x_BD: torch.Tensor, out: TrainOutput, cofire_BF, dead_F, step: int, lam: float, thr: float) -> dict:
        """This step's loss terms by name, each with its weight. The loss is their weighted sum; the
        log records each as <name>_loss (weight x value), and the progress line and the loss figure
        show each. A new term is its function (above) and one entry here."""
        residual_BD = x_BD - out.x_hat_BD
        recon = recon_loss(residual_BD)
        W_dec, b_dec = self.sae.W_dec, self.sae.b_dec
        nested = self.arm.nested
        return dict(
            recon=Term(recon, 1.0),
            auxk=Term(auxk_loss(out.pre_BF, dead_F, residual_BD.detach(), W_dec, self.k_aux), self.cfg.auxk_alpha),
            nested=Term(
                nested_recon_loss(x_BD, out.acts_BK, out.idx_BK, W_dec, b_dec, self.matryoshka_widths) if nested else recon.new_zeros(()),
                float(nested),
            ),
            ortho=self.ortho_term(cofire_BF, thr, step, lam, recon.detach()),
        )

    def update(self, x_BD: torch.Tensor, step: int) -> StepOutput:
        p = step / self.total_steps
        lam, thr = ortho_lambda(p, self.cfg), ortho_threshold(p, self.cfg)
        out = self.sae.forward_train(x_BD, self.dtype)
        active_BF = torch.zeros_like(out.pre_BF, dtype=torch.bool).scatter_(1, out.idx_BK, out.acts_BK > 0)
        dead_F = self.tokens_since_fired_F >= self.cfg.dead_tokens
        cofire_BF = active_BF if self.arm.cofire_on == "fired" else near_firing(out.pre_BF.detach(), 2 * int(self.sae.k))
        lam *= self.follow_factor(cofire_BF, thr, step) if self.arm.weight == "following" else 1.0
        terms = self.loss_terms(x_BD, out, cofire_BF, dead_F, step, lam, thr)
        for name, term in terms.items():
            if not torch.isfinite(term.value):
                raise NonFiniteLoss(f"{name} became {term.value.item()} at step {step}")
        loss = sum(term.weight * term.value for term in terms.values() if term.weight)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        W_dec = self.sae.W_dec
        with torch.no_grad():
            ortho = terms["ortho"]
            if ortho.weight and self.arm.term == "cofiring":  # the term's gradient against the other terms' on W_dec (logged)
                term_grad = ortho.weight * self.held_ortho[1]
                rest = (W_dec.grad - term_grad).norm().item()
                self.ortho_grad_share = term_grad.norm().item() / rest if rest else None
            W_dec.grad -= (W_dec.grad * W_dec).sum(-1, keepdim=True) * W_dec  # none parallel to the (unit) rows
        torch.nn.utils.clip_grad_norm_(self.sae.parameters(), self.cfg.grad_clip)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(step)
        self.optimizer.step()
        with torch.no_grad():
            W_dec /= W_dec.norm(dim=-1, keepdim=True)
            self.tokens_since_fired_F += len(x_BD)
            self.tokens_since_fired_F[active_BF.any(0)] = 0
        detached = {name: Term(term.value.detach(), term.weight) for name, term in terms.items()}
        return StepOutput(loss.detach(), detached, lam, thr, active_BF, cofire_BF, dead_F)

    def state_dict(self) -> dict:
        return dict(
            sae=self.sae.state_dict(),
            optimizer=self.optimizer.state_dict(),
            tokens_since_fired=self.tokens_since_fired_F,
            held_ortho=self.held_ortho,
            ortho_impl=self.ortho_impl,
            ortho_scale=self.ortho_scale,
            ortho_grad_share=self.ortho_grad_share,
            follow=self.follow,
        )

    def load_state_dict(self, state: dict) -> None:
        self.sae.load_state_dict(state["sae"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.tokens_since_fired_F.copy_(state["tokens_since_fired"])
        self.held_ortho, self.ortho_impl, self.ortho_scale = state["held_ortho"], state["ortho_impl"], state["ortho_scale"]
        self.ortho_grad_share = state.get("ortho_grad_share")
        self.follow = tuple(state.get("follow", (0.0, 0, None)))


class NonFiniteLoss(Exception):
    pass


# ----------------------------------------------------------------------------------------------
# Training loop
# ----------------------------------------------------------------------------------------------


def log_record(cfg: Config, trainer: TrainerTopK, out: StepOutput, x_BD: torch.Tensor, step: int, elapsed: float) -> dict:
    """One training_log.jsonl line: each loss term's part of the loss (<name>_loss = weight x value),
    the term's schedule and dose, then the batch's diagnostics (session.batch_diagnostics: sparsity,
    dead latents, FVU, on synth the true parent / child pairs against all others, and sep_*: what the
    term itself minimises, so not evidence of separation)."""
    losses = {f"{name}_loss": term.weight * term.value.item() for name, term in out.terms.items()}
    ortho, weight = out.terms["ortho"].value.item(), out.terms["ortho"].weight
    if out.ortho_lambda > 0 and step % cfg.ortho_every and trainer.arm.term == "cofiring":  # the held P is older: report this batch's
        ortho = trainer.penalty_value_and_grad(out.cofire_BF, out.threshold)[0].item()
        losses["ortho_loss"] = weight * ortho
    loss = out.loss.item()
    record = dict(step=step, progress=step / cfg.total_steps, tokens=(step + 1) * cfg.batch_size, elapsed_s=round(elapsed, 3))
    record |= dict(lr=trainer.lr_at(step), loss=loss) | losses
    record |= dict(
        ortho_penalty=ortho,
        ortho_lambda=out.ortho_lambda,
        ortho_scale=trainer.ortho_scale if weight else None,
        ortho_grad_share=trainer.ortho_grad_share if weight else None,
        threshold=out.threshold,
        ortho_share=losses["ortho_loss"] / loss if loss else None,
    )
    contained = trainer.arm.pairs == "contained"  # the pairs as this arm's term weighs them, for synth's mechanism
    pairs = cofiring(out.cofire_BF, out.threshold, contained) if cfg.text_source == "synth" else None
    return record | batch_diagnostics(cfg, trainer.sae.W_dec, out, x_BD, trainer.dtype, step, pairs)


def train(cfg: Config, buffer: data.ActivationBuffer, device: torch.device, out: Path, tracker: Tracker) -> tuple[AutoEncoderTopK, dict]:
    """The training loop. The session keeps its books (sae_harness/run/session.py): it resumes from
    out/checkpoint.pt, logs to out/training_log.jsonl (and wandb), and writes a checkpoint every
    cfg.checkpoint_every steps and on SIGINT / SIGTERM."""
    torch.manual_seed(cfg.seed)
    sae = AutoEncoderTopK(buffer.d_model, cfg.dict_size, cfg.k, cfg.lm_name, cfg.layer, device="cpu", seed=cfg.seed).to(device=device)
    trainer = TrainerTopK(cfg, sae)
    with TrainingSession(cfg, trainer, out, device, tracker) as session:
        if not session.resumed:
            trainer.start(buffer.batch)
        for step in session.steps():
            x_BD = buffer.batch(step)
            try:
                step_out = trainer.update(x_BD, step)
            except NonFiniteLoss as e:
                raise session.failure(f"training stopped: {e}") from None
            if session.logs(step):
                session.log(log_record(cfg, trainer, step_out, x_BD, step, session.elapsed()), step_out.terms)
    return sae, session.final_info(ortho_impl=trainer.ortho_impl)


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> Config:
    return cli.parse_config(Config, PROFILES, argv, torch.cuda.is_available(), doc=__doc__)


def main(argv: list[str]) -> int:
    cfg = parse_args(argv)
    defaults = cli.profile_defaults(Config, PROFILES, cfg.profile)  # what the notes compare a run's config with
    return runner.run(cfg, train, load_sae, defaults)


if __name__ == "__main__":
    sys.exit(cli.run(main, sys.argv[1:]))
