"""What every SAEBench eval shares: the eval settings (EvalContext, and the gemma-2-2b profile's
gemma2_eval_settings), seeding, the call into an SAEBench entry point, SAEBench's result file, the
hub check, the eval cache key and the held-out articles by label."""

import contextlib
import functools
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sae_harness.evals.eval_cache import sae_bench_version
from sae_harness.evals.registry import by_name
from sae_harness.run import profiles

SAE_ID = "custom_sae"  # SAEBench's id for an SAE object; result files are {sae_name}_{SAE_ID}_eval_results.json
HELDOUT_DATASET = "bbc_news_heldout"  # name under which the held-out articles are registered for sparse probing


@dataclass
class EvalContext:
    model_name: str = "google/gemma-3-270m"
    """TransformerLens / SAEBench model name (sae.cfg.model_name must match)."""
    profile: str = profiles.EMBEDDED
    """'gemma-3-270m' (embedded, offline CPU) or 'gemma-2-2b' (the seed's setting, CUDA + hub)."""
    layer: int = 9
    """Layer whose residual stream the SAE reads."""
    hook_name: str = "blocks.9.hook_resid_post"
    """TransformerLens hook the SAE reads."""
    device: str = "cpu"
    """Where SAEBench runs the LLM and the SAE."""
    llm_dtype: str = "float32"
    """LLM dtype, as SAEBench writes it ('float32', 'bfloat16'); SAEBench casts the SAE to it during an eval."""
    sae_name: str = "sae"
    """Unique per run: SAEBench caches and skips work by this name."""
    work_dir: Path = Path("saebench")
    """Folder inside the run dir for every SAEBench result, probe and cache."""
    heldout: list[tuple[str, str]] = field(default_factory=list)
    """Held-out (label, text) articles: the text for core and sparse probing (embedded profile)."""
    eval_seed: int = 42
    """Seeds Python, NumPy and torch before each eval stage, the absorption word sample and the probe
    train / test splits (SAEBench's absorption ignores its own seed). Separate from the SAE's seed."""
    cache_dir: Path | None = None
    """Shared eval cache directory (a run uses <its cache_dir>/evals); None: nothing is kept between runs."""
    cache_max_mb: float = 4096
    """LLM activations bigger than this are not cached (core's and sparse probing's on gemma-2-2b: 19 and ~24 GB)."""
    llm_batch_size: int = 8
    """Prompts per LLM forward in absorption and sparse probing."""
    context_size: int = 128
    """Tokens per sequence for core and sparse probing."""

    # absorption (first-letter)
    absorption_vocab_size: int | None = 5000
    """Single-token alphabetic words sampled from the vocabulary (None: all, as SAEBench does); drives its time."""
    absorption_min_probe_f1: float = 0.5
    """Gate: a letter counts only if SAEBench's LLM probe reaches this F1 (SAEBench default 0.6; its small-model tests use 0.3)."""
    absorption_min_letters: int = 20
    """Gate: absorption is reported only if this many letters pass the F1 gate (SAEBench default 20)."""
    absorption_precalc_sae_acts: bool = True
    """Encode the probe-training words once (fast; memory words x d_sae floats)."""

    # core
    core_dataset: str = HELDOUT_DATASET
    """Text for core: HELDOUT_DATASET (ctx.heldout) or a hub dataset name."""
    core_batch_prompts: int = 4
    """Sequences per core batch (each full-logit batch holds ~3 x B x 128 x 262k floats: 4 -> ~7 GB peak)."""
    core_reconstruction_batches: int = 48
    """Batches for KL / CE (three full forwards with 262k-wide logits each on a profile's first run, one
    once cached: the slow part). 48 x 4 x 128 tokens give KL and CE score standard errors below 0.002
    (0.0015 / 0.0019 measured; 0.0037 / 0.0047 at 8 batches) for about 115 s more per cached run."""
    core_sparsity_variance_batches: int = 48
    """Batches for explained variance, L0, L1, shrinkage and feature density."""

    # sparse probing
    sparse_probing_datasets: list[str] = field(default_factory=lambda: [HELDOUT_DATASET])
    """SAEBench dataset names, or HELDOUT_DATASET for one-vs-rest over ctx.heldout's labels."""
    sparse_probing_train_size: int | None = None
    """Probe training documents per one-vs-rest task (half of them the positive class), as in SAEBench;
    None (embedded): every held-out article, sparse_probing_train_fraction of each label for training."""
    sparse_probing_test_size: int | None = None
    """Probe test documents per one-vs-rest task (half of them the positive class); None: the rest."""
    sparse_probing_train_fraction: float = 0.5
    """Share of each label's held-out articles that trains the probes when the sizes are None."""
    sparse_probing_k_values: list[int] = field(default_factory=lambda: [1, 2, 5, 10, 20, 50])
    """Top-k latents / LLM dims for the k-sparse probes (the seed's list)."""
    sae_batch_size: int = 125
    """Sequences per SAE encode in sparse probing."""

    # unlearning (gemma-2-2b profile only)
    unlearning_model_name: str = "google/gemma-2-2b-it"
    """Instruct model SAEBench's unlearning eval runs on (the SAE is applied to it)."""

    def __post_init__(self):
        if self.profile not in (profiles.EMBEDDED, profiles.GEMMA2):
            raise ValueError(f"profile must be 'gemma-3-270m' or 'gemma-2-2b', not {self.profile!r}")
        if self.hook_name != f"blocks.{self.layer}.hook_resid_post":
            raise ValueError(f"hook_name {self.hook_name!r} does not match layer {self.layer}")
        self.work_dir = Path(self.work_dir).resolve()  # absorption runs inside a chdir


def gemma2_eval_settings() -> dict:
    """EvalContext overrides for the seed's gemma-2-2b run (the eval_config blocks of its results,
    run_0/final_info.json); pass with sae_name, work_dir, eval_seed, cache_dir."""
    from sae_bench.evals.sparse_probing.eval_config import SparseProbingEvalConfig

    return dict(
        model_name="google/gemma-2-2b",
        profile=profiles.GEMMA2,
        layer=12,
        hook_name="blocks.12.hook_resid_post",
        device="cuda",
        llm_dtype="bfloat16",
        llm_batch_size=32,
        context_size=128,
        absorption_vocab_size=None,  # SAEBench's full alphabetic vocabulary
        absorption_min_probe_f1=0.6,
        absorption_min_letters=20,
        absorption_precalc_sae_acts=False,
        core_dataset="Skylion007/openwebtext",
        core_batch_prompts=16,
        core_reconstruction_batches=200,
        core_sparsity_variance_batches=2000,
        sparse_probing_datasets=list(SparseProbingEvalConfig().dataset_names),  # SAEBench's eight
        sparse_probing_train_size=4000,
        sparse_probing_test_size=1000,
        sparse_probing_k_values=[1, 2, 5, 10, 20, 50],
        sae_batch_size=125,
        unlearning_model_name="google/gemma-2-2b-it",
    )


class GivenModel:
    """Stands in for HookedTransformer inside an SAEBench module: its loader returns our model."""

    def __init__(self, model):
        self.model = model

    def from_pretrained_no_processing(self, *args, **kwargs):
        return self.model


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def reseeded(fn, seed: int, **fixed):
    """fn with `fixed` keyword arguments, every global RNG reseeded at each call: a stage then draws
    the same numbers whether or not an earlier stage's work came from the cache."""

    @functools.wraps(fn)
    def call(*args, **kwargs):
        seed_everything(seed)
        return fn(*args, **{**kwargs, **fixed})

    return call


@contextlib.contextmanager
def sae_bench_call(sae, module, tl_model, ctx: EvalContext):
    """Around one SAEBench entry point: seed, point its model loader at tl_model (if given), and
    undo what SAEBench leaves behind (it casts the SAE in place, and absorption turns grad on)."""
    from unittest import mock

    seed_everything(ctx.eval_seed)
    dtype, device, grad = sae.dtype, sae.device, torch.is_grad_enabled()
    patch = mock.patch.object(module, "HookedTransformer", GivenModel(tl_model)) if tl_model is not None else contextlib.nullcontext()
    try:
        with patch:
            yield
    finally:
        sae.to(device=device, dtype=dtype)
        torch.set_grad_enabled(grad)


def saebench_result(out_dir: Path, ctx: EvalContext) -> dict:
    """SAEBench's own result JSON for this SAE, as it wrote it."""
    from sae_bench.sae_bench_utils import general_utils

    path = general_utils.get_results_filepath(str(out_dir), ctx.sae_name, SAE_ID)
    with open(path) as f:
        return json.load(f)


def hub_skip(ctx: EvalContext, needs: str) -> dict | None:
    """The gemma-2-2b profile needs CUDA and the hub; say what is missing, or None."""
    import huggingface_hub.constants

    if ctx.device.startswith("cuda") and not torch.cuda.is_available():
        return {"skipped": f"needs a CUDA GPU (device={ctx.device!r}) for {needs}; run on a GPU machine."}
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        return {
            "skipped": f"needs Hugging Face hub access for {needs}; unset HF_HUB_OFFLINE and log in with a token that has accepted the Gemma licence."
        }
    return None


def cache_key(eval_name: str, ctx: EvalContext, **computed) -> dict:
    """An eval cache entry's key: what every entry depends on (model, layer, dtype, device, eval
    seed, SAEBench version), the settings the eval's registry entry names (its cache_key), and
    what the eval computes."""
    settings = {part: getattr(ctx, name) for part, name in by_name(eval_name).cache_key.items()}
    return dict(
        eval=eval_name,
        model=ctx.model_name,
        layer=ctx.layer,
        llm_dtype=ctx.llm_dtype,
        device=torch.device(ctx.device).type,
        eval_seed=ctx.eval_seed,
        **settings,
        **computed,
        sae_bench=sae_bench_version(),
    )


def heldout_by_label(ctx: EvalContext) -> dict[str, list[str]]:
    by_label: dict[str, list[str]] = {}
    for label, text in ctx.heldout:
        by_label.setdefault(label, []).append(text)
    if not by_label:
        raise ValueError("ctx.heldout is empty: the embedded profile needs the held-out (label, text) articles")
    return by_label
