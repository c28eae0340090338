"""The evals after training (run_pending: each registry.py entry that has no result yet), and the
SAEBench evals: absorption, core, sparse probing and unlearning on the run's SAE, one module each.

Four evals, one signature: eval_X(sae, tl_model, ctx) -> dict, SAEBench's own result JSON for that
eval, or {"skipped": "<what to fetch and where>"}; real errors raise (run_pending records them).
The embedded profile hands the locally built model to SAEBench (load_tl_model) and uses the
held-out BBC articles; the gemma-2-2b profile lets SAEBench load models and datasets from the
hub with the seed's settings (gemma2_eval_settings). Everything SAEBench writes goes under
run_i/evals/, except the work that does not depend on the SAE (the LLM's activations and probes),
which goes into the shared eval cache (eval_cache.py) and is reused by later runs. Every eval seeds
Python, NumPy and torch with ctx.eval_seed before each of its stages, so a cached and an uncached
eval of the same SAE give the same numbers. SAEBench is imported inside the functions, so training
starts without it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sae_harness.evals.registry import run_order
from sae_harness.run import profiles

if TYPE_CHECKING:
    import torch

    from sae_harness.evals.context import EvalContext

_FROM = {  # heavy names, imported on first use: the registry and schema stay importable without torch
    "HELDOUT_DATASET": "context",
    "SAE_ID": "context",
    "EvalContext": "context",
    "gemma2_eval_settings": "context",
    "eval_absorption": "absorption",
    "eval_core": "core",
    "eval_sparse_probing": "sparse_probing",
    "eval_unlearning": "unlearning",
    "load_tl_model": "model",
    "tl_config_dict": "model",
    "EvalCache": "eval_cache",
}


def __getattr__(name: str):
    if name in _FROM:
        return getattr(importlib.import_module(f"sae_harness.evals.{_FROM[name]}"), name)
    if name in ("absorption", "context", "core", "core_recorder", "eval_cache", "model", "sparse_probing", "unlearning", "separation"):
        return importlib.import_module(f"sae_harness.evals.{name}")
    raise AttributeError(f"module 'sae_harness.evals' has no attribute {name!r}")


__all__ = [
    "HELDOUT_DATASET",
    "SAE_ID",
    "EvalContext",
    "eval_absorption",
    "eval_core",
    "eval_sparse_probing",
    "eval_unlearning",
    "gemma2_eval_settings",
    "load_tl_model",
    "tl_config_dict",
]


def eval_context(cfg, out: Path, heldout, device: torch.device) -> EvalContext:
    """The eval settings of this run: the profile's SAEBench settings, this run's model, layer and
    held-out text, its eval seed, a unique SAE name, a work dir inside the run dir, and the shared
    eval cache beside the activation cache."""
    from sae_harness.evals.context import EvalContext, gemma2_eval_settings
    from sae_harness.run import precision

    name_digest = hashlib.sha256(f"{out.resolve()}-{time.time()}".encode()).hexdigest()[:8]
    settings = gemma2_eval_settings() if cfg.profile == profiles.GEMMA2 else {}
    return EvalContext(
        **{
            **settings,
            **dict(
                model_name=cfg.lm_name,
                profile=cfg.profile,
                layer=cfg.layer,
                hook_name=cfg.hook_name,
                device=device.type,
                llm_dtype=precision.eval_dtype(cfg.profile, device),
                eval_seed=cfg.eval_seed,
                cache_dir=Path(cfg.cache_dir) / "evals",
                sae_name=f"{cfg.lm_name.split('/')[-1]}_{out.resolve().name}_{name_digest}",
                work_dir=out / "evals",
                heldout=[(topic, text) for topic, _, text in heldout],
            ),
        }
    )


def load_eval_model(cfg, ctx: EvalContext):
    """The embedded model as TransformerLens sees it (float32, as SAEBench runs it)."""
    import torch

    from sae_harness.evals.model import load_tl_model
    from sae_harness.run import data

    hf_model, tokenizer = data.load_language_model(dataclasses.replace(cfg, llm_dtype=ctx.llm_dtype), torch.device(ctx.device))
    return load_tl_model(hf_model, tokenizer, ctx)


class EvalInputs:
    """What an eval's function may use (registry.Eval.function): the run's config, directory, device
    and held-out articles; for the evals that need it, the profile's SAEBench settings (ctx) and
    model (tl_model), made by load_model once for all of them."""

    def __init__(self, cfg, out: Path, heldout, device: torch.device):
        self.cfg, self.out, self.heldout, self.device = cfg, out, heldout, device
        self.ctx: EvalContext | None = None
        self.tl_model = None

    def load_model(self) -> None:
        self.ctx = eval_context(self.cfg, self.out, self.heldout, self.device)
        self.tl_model = load_eval_model(self.cfg, self.ctx) if self.cfg.profile == profiles.EMBEDDED else None
        print(self.cache_line())

    def cache_line(self) -> str:
        from sae_harness.evals.eval_cache import EvalCache

        return EvalCache(self.ctx.cache_dir, self.ctx.work_dir).describe()


def run_pending(cfg, names: list[str], run, load_sae, heldout, device) -> list[str]:
    """Run the evals of names that have no result yet (or an error), in registry.run_order, each
    isolated: a failure is recorded as {"error": ...} and the others still run; run records each
    result as it comes. load_sae() returns the trained SAE (loaded only when an eval is pending).
    Returns the names of the evals that failed."""
    from sae_harness.run.rundir import disk_full
    from sae_harness.run.schema import block_status

    pending = [entry for entry in run_order(names) if entry.name in run.pending(names)]
    if not pending:
        return []
    sae = load_sae()
    inputs = EvalInputs(cfg, run.path, heldout, device)
    failed = []
    for entry in pending:
        if entry.needs_eval_model and inputs.ctx is None:
            inputs.load_model()
        print(f"eval: {entry.name} ...")
        t0 = time.time()
        try:
            result = entry.run(sae, inputs)
        except Exception as e:  # recorded, never fatal to the other evals or to training
            if disk_full(e):  # not the eval's failure: stop, keeping what is finished (rundir.stage says so)
                raise
            lines = str(e).strip().splitlines()
            result = {"error": f"{type(e).__name__}: {lines[0] if lines else ''}"}
            failed.append(entry.name)
        result["seconds"] = round(time.time() - t0, 1)
        if (hit := cache_hit(result)) is not None:
            result["cache_hit"] = hit
        run.record_eval(entry.block, result)
        cached = f" (eval cache {'hit' if hit else 'miss'})" if hit is not None else ""
        print(f"eval: {entry.name} {block_status(result)} in {result['seconds']:.0f} s{cached}")
    if inputs.ctx is not None:
        print(inputs.cache_line())
    return failed


def cache_hit(result: dict) -> bool | None:
    """Whether every cached part of an eval came from the eval cache; None when it has none."""
    flags = [v for k, v in result.get("cache", {}).items() if k.endswith("hit")]
    return all(flags) if flags else None
