"""Interleaved A/B of core's reconstruction batches on a first run (nothing cached): this checkout's
core eval (sae_harness/evals/core.py, core_recorder.py) against sae_harness/evals.py at another
commit (one from before evals.py became a package), on the embedded model and the same held-out BBC
batches (4 x 128 tokens, as the default core eval).

    python benchmarks/core_ab.py 255565d              # 6 batches, a random TopK SAE (4,096 latents, k 64)
    python benchmarks/core_ab.py 255565d --batches 10
    python benchmarks/core_ab.py 255565d --whole      # the whole core eval of each, on an empty eval
                                                      # cache (old first; ~30 min on 2 AVX2 cores)

A first run's core eval spends nearly all its time in these batches (48 of them by default): for
each, the clean and the zero-ablated model's statistics over the 262k-token vocabulary, then one
forward with the SAE spliced in. Prints each version's median seconds per batch, their ratio (new /
old; lower is better), the machine's CPU capability, and checks that both give the same numbers
to float rounding (the losses and KL with the ablated model to 2e-3 nats; KL with the SAE, which both
get by an identity whose float32 error is ~1e-3 nats a token, to 1e-2). Run it on an idle machine.
"""

import dataclasses
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import experiment as E  # noqa: E402
from sae_harness import evals  # noqa: E402
from sae_harness.evals import core_recorder  # noqa: E402
from sae_harness.run import cli, data  # noqa: E402

NEW = SimpleNamespace(CoreRecorder=core_recorder.CoreRecorder, eval_core=evals.eval_core, EvalContext=evals.EvalContext)


def module_at(commit: str):
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:sae_harness/evals.py"], capture_output=True, text=True)
    if source.returncode:
        sys.exit(f"core_ab: no sae_harness/evals.py at {commit!r}: give a commit before the evals package ({source.stderr.strip()})")
    path = Path(tempfile.mkdtemp()) / "evals_old.py"
    path.write_text(source.stdout)
    spec = importlib.util.spec_from_file_location("evals_old", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return SimpleNamespace(CoreRecorder=module._CoreRecorder, eval_core=module.eval_core, EvalContext=module.EvalContext)


def first_run_batch(module, tl_model, sae, hook_name, tokens_BT, ignore):
    """(seconds, metrics) of one reconstruction batch with nothing cached, as eval_core runs it."""
    recorder = module.CoreRecorder(tl_model, sae, hook_name, ignore, None, keep=False)
    start = time.perf_counter()
    metrics = recorder.shortcut_recons_loss(
        sae, tl_model, tokens_BT, None, True, True, ignore_tokens=ignore, exclude_special_tokens_from_reconstruction=True
    )
    return time.perf_counter() - start, metrics


def whole_evals(old, commit, cfg, tl_model, sae, heldout):
    """Seconds of each version's whole core eval (the default settings) on its own empty eval cache."""
    seconds = {}
    for label, module in (("old", old), ("new", NEW)):
        with tempfile.TemporaryDirectory() as tmp:
            ctx = evals.eval_context(dataclasses.replace(cfg, cache_dir=tmp), Path(tmp) / "run", heldout, torch.device("cpu"))
            start = time.perf_counter()
            result = module.eval_core(sae, tl_model, module.EvalContext(**dataclasses.asdict(ctx)))
            seconds[label] = time.perf_counter() - start
        metrics = result["eval_result_metrics"]["model_performance_preservation"]
        print(f"{label}: whole core eval {seconds[label]:.0f} s (ce_loss_score {metrics['ce_loss_score']:.6f})", flush=True)
    print(
        f"core eval, first run (CPU {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads): "
        f"old ({commit}) {seconds['old']:.0f} s, new {seconds['new']:.0f} s, ratio {seconds['new'] / seconds['old']:.2f} (lower is better)"
    )


def main(argv):
    if not argv or argv[0].startswith("-"):
        sys.exit(__doc__)
    old = module_at(argv[0])
    n_batches = int(argv[argv.index("--batches") + 1]) if "--batches" in argv else 6
    cfg = cli.apply_profile(E.Config(out_dir="unused", profile="gemma-3-270m"), E.PROFILES, cuda_available=False)
    device = torch.device("cpu")
    ctx = evals.eval_context(cfg, Path(tempfile.mkdtemp()), [], device)
    tl_model = evals.load_eval_model(cfg, ctx)
    if "--whole" in argv:
        torch.manual_seed(0)
        sae = E.AutoEncoderTopK(tl_model.cfg.d_model, cfg.dict_size, cfg.k, cfg.lm_name, cfg.layer, device="cpu", seed=0)
        return whole_evals(old, argv[0], cfg, tl_model, sae, data.text_split(cfg)[1])
    tok = tl_model.tokenizer
    ignore = {tok.pad_token_id, tok.eos_token_id, tok.bos_token_id}
    _, heldout, _ = data.text_split(cfg)
    windows = list(data.token_windows((text for _, _, text in heldout), tok, ctx.context_size, 4 * n_batches))
    torch.manual_seed(0)
    sae = E.AutoEncoderTopK(tl_model.cfg.d_model, cfg.dict_size, cfg.k, cfg.lm_name, cfg.layer, device="cpu", seed=0)
    times = {"old": [], "new": []}
    for b in range(n_batches):
        tokens_BT = torch.tensor(windows[4 * b : 4 * b + 4])
        order = (("old", old), ("new", NEW)) if b % 2 == 0 else (("new", NEW), ("old", old))
        out = {}
        for label, module in order:
            seconds, out[label] = first_run_batch(module, tl_model, sae, ctx.hook_name, tokens_BT, ignore)
            times[label].append(seconds)
        for name in ("ce_loss_with_sae", "ce_loss_without_sae", "ce_loss_with_ablation", "kl_div_with_ablation"):
            # float32 sums over 262k logits: the old version's log-softmax was measured up to 1e-4
            # nats off a float64 computation, this one's 1e-6
            torch.testing.assert_close(out["new"][name], out["old"][name], rtol=0, atol=2e-3)
        # both compute KL with the SAE by the identity in clean_statistics: each is ~1.5e-3 nats from a
        # float64 computation per token on average (measured), so they differ by about that much
        kl_gap = (out["new"]["kl_div_with_sae"] - out["old"]["kl_div_with_sae"]).abs().max().item()
        assert kl_gap < 1e-2, kl_gap
        print(
            f"batch {b}: old {times['old'][-1]:.2f} s, new {times['new'][-1]:.2f} s, KL with the SAE differs by <= {kl_gap:.1e}", flush=True
        )
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    print(
        f"core reconstruction batch, first run (CPU {torch.backends.cpu.get_cpu_capability()}, "
        f"{torch.get_num_threads()} threads): old ({argv[0]}) {med['old']:.2f} s, new {med['new']:.2f} s, "
        f"ratio {med['new'] / med['old']:.2f} (lower is better); same numbers"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
