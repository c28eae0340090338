"""Speed and memory of the harness, as ratios measured in one run. Not a test.

    python benchmarks/bench.py            # all measurements, about 70 minutes at the default's 4
                                          # passes (an estimate from the parts: four whole runs
                                          # ~23, plain and default interleaved over a whole run
                                          # ~12, the eval cache ~25, the rest ~10), plus about 5
                                          # minutes the first time, to build the activation cache
    python benchmarks/bench.py --quick    # no whole runs, extraction, start-up or evals (those keys are null)
    python benchmarks/bench.py --peers    # ours over SAELens's (lower is better): the plain TopK step
                                          # at the synth and embedded sizes, and a synth run's training
                                          # against SAELens's synthetic-data runner (~3 minutes)
    python benchmarks/bench.py --evals-only   # eval_first_s, eval_cached_s, eval_cached_ratio only
                                              # (two default-config runs of one training pass on an
                                              # empty eval cache, ~25 minutes)
    python benchmarks/bench.py --gemma2       # only the gemma-2-2b-dims keys (no embedded model needed; a
                                              # GPU run: benchmarks/gemma2_cost.py has the whole profile)
    python benchmarks/bench.py --arms synth   # each arm's training step against plain TopK's, interleaved
                                              # over a whole default run of that profile (synth: ~5 min;
                                              # gemma-3-270m: 40-52 min); keys arm_step_s, arm_step_ratio
    python benchmarks/bench.py --arms gemma-3-270m --arm_steps 200   # the same over 200 of the
                                              # schedule's steps, 10 blocks of 20 spread over it (~4 min;
                                              # the idea's ratio reads ~4% high: its SAEs stay young)

Every JSON carries the machine it came from: cpu_capability (AVX2, AVX512, AMX, ...), the measured
float32 / bfloat16 and float32 / int8 matmul speedups here (> 1: the low precision is faster), and
the dtypes `auto` picks here (llm_dtype, sae_dtype, eval_dtype); read every figure against them.
The durations above were measured on a 2-core CPU with AMX (native bfloat16); on an AVX2-only CPU
training steps take about twice as long (docs/performance.md).

It builds (or reuses) the default run's activation cache first, so the embedded numbers always
come from real activations and every key of the JSON is present, on a fresh clone too.
Run it on an idle machine: on 2 cores, torch slows down many times when the other core is busy.
Prints a table, then one JSON object as the last line.
"""

import argparse
import copy
import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sae_harness.run.threads import policy  # noqa: E402  (imports no torch)

os.environ.update(policy())  # before torch loads: the threads wait as in experiment.py, so the figures are a run's
import torch  # noqa: E402

import experiment as E  # noqa: E402
from sae_harness import evals as evals_module  # noqa: E402
from sae_harness.run import cli, data, precision  # noqa: E402
from sae_harness.run import ortho_fast as O  # noqa: E402
from sae_harness.run.schema import EVAL_KEYS  # noqa: E402
from sae_harness.run.tracking import Tracker  # noqa: E402


def embedded_config(**overrides):
    """The embedded profile's default config, with overrides."""
    return cli.apply_profile(E.Config(out_dir="bench", profile="gemma-3-270m", **overrides), E.PROFILES, cuda_available=False)


def timed(fn, repeat: int, device) -> float:
    """Median seconds of fn() over repeat calls, after one warm-up."""
    fn()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def make_trainer(cfg, d_model, device):
    torch.manual_seed(0)
    sae = E.AutoEncoderTopK(d_model, cfg.dict_size, cfg.k, "bench", 0, device="cpu", seed=0).to(device=device)
    return E.TrainerTopK(cfg, sae)


def warm_state(cfg, d_model, device, batch, warm_steps):
    """The trainer's state after warm_steps default (progressive) steps: right after init few
    latents fire and the term is nearly free; after a few hundred steps nearly all do, as through
    most of a real run."""
    trainer = make_trainer(cfg, d_model, device)
    with torch.no_grad():  # as experiment.train does; without it most latents die early
        trainer.sae.b_dec.copy_(E.geometric_median(batch(0)))
    for step in range(warm_steps):
        trainer.update(batch(step), step)
    return copy.deepcopy(trainer.state_dict())


def seconds_per_step(cfg, d_model, device, batch, state, points, n_steps):
    """Mean seconds of a training step from `state`, over n_steps consecutive steps starting at
    each progress point p (so a stride is averaged over), on batches not seen in warm-up."""
    trainer = make_trainer(cfg, d_model, device)
    total = 0.0
    for p in points:
        trainer.load_state_dict(copy.deepcopy(state))
        first = int(p * cfg.total_steps) // cfg.ortho_every * cfg.ortho_every  # n_steps is a multiple of the stride
        trainer.update(batch(10_000 + first), first + 1)  # warm-up step off the stride
        for step in range(first, first + n_steps):
            x = batch(10_000 + step)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            trainer.update(x, step)
            if device.type == "cuda":
                torch.cuda.synchronize()
            total += time.perf_counter() - t
    return total / (len(points) * n_steps)


def step_ratios(d_model, dict_size, k, batch_size, device, batch, warm_steps, points, n_steps):
    """Seconds per step of plain TopK, of the default config (its ortho_every included), and of
    the term applied on every step, from the same warmed-up state."""
    base = embedded_config(dict_size=dict_size, k=k, batch_size=batch_size, device=device.type)
    state = warm_state(base, d_model, device, batch, warm_steps)
    t = {
        name: seconds_per_step(dataclasses.replace(base, **kw), d_model, device, batch, state, points, n_steps)
        for name, kw in (("none", dict(variant="none")), ("default", {}), ("every_step", dict(ortho_every=1)))
    }
    return t, state


def whole_run_seconds(cfg, device) -> float:
    """Training seconds of a whole run (experiment.train, logging and checkpoints included) on the
    cached activations."""
    buf = data.ActivationBuffer(data.cache_path(cfg), data.activation_key(cfg), cfg.batch_size, cfg.seed, device)
    with tempfile.TemporaryDirectory() as tmp:
        _, final = E.train(cfg, buf, device, Path(tmp), Tracker("", "", {}, tmp))
    return final["seconds"]


def dense_reference_penalty(W_dec_FD, active_BF, threshold):
    """The naive form: experiment.cofiring's weights spread to F x F, the whole F x F Gram, autograd
    through everything."""
    fired_A, _, c_AA = E.cofiring(active_BF, threshold)
    c_FF = W_dec_FD.new_zeros(W_dec_FD.shape[0], W_dec_FD.shape[0])
    c_FF[fired_A[:, None], fired_A[None, :]] = c_AA
    W_hat = W_dec_FD / W_dec_FD.norm(dim=-1, keepdim=True)
    return (c_FF * (W_hat @ W_hat.T).abs()).sum() / W_dec_FD.shape[0]


def peak_rss_during(fn) -> float:
    """Peak resident memory growth (MB) while fn runs, sampled every 2 ms (CPU)."""
    import psutil

    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.002)

    thread = threading.Thread(target=sample)
    thread.start()
    fn()
    done.set()
    thread.join()
    return (peak[0] - base) / 2**20


def ortho_memory_gemma2(device, batch_size):
    """Extra memory (MB) and seconds of one orthogonality-term value and gradient at F=16384, D=2304,
    k=320 (masks drawn at random, a graded bias so some latents fire far more than others)."""
    F_, D, K = 16384, 2304, 320
    W = torch.nn.functional.normalize(torch.randn(F_, D, device=device), dim=-1)
    logits = torch.randn(batch_size, F_, device=device) + torch.linspace(2, -2, F_, device=device)
    active = torch.zeros(batch_size, F_, dtype=torch.bool, device=device).scatter_(1, logits.topk(K, dim=-1).indices, True)
    dtype = precision.choose("auto", device)
    seconds = []

    def run():
        t = time.perf_counter()
        O.penalty_value_and_grad(W, active, 0.25, dtype)  # value and gradient in one pass, as the trainer runs it
        seconds.append(time.perf_counter() - t)

    if device.type == "cuda":
        run()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        run()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20, seconds[-1]
    run()  # warm-up: allocator caches
    return peak_rss_during(run), seconds[-1]


def extraction_ratio(device, n_batches=6):
    """Activation-buffer tokens/s (nnsight trace stopped after the layer, BOS dropped, written to disk)
    divided by a bare forward of the same model truncated at the hook layer."""
    from nnsight import TransformersModel

    cfg = embedded_config(device=device.type)
    model, tok = data.load_language_model(cfg, device)
    articles = [t for _, _, t in data.load_bbc_articles()[:200]]
    windows = list(data.token_windows(articles, tok, cfg.context_length, n_batches * cfg.llm_batch_size))
    n_rows = len(windows) * (cfg.context_length - 1)
    lm = TransformersModel(model, task="text-generation", tokenizer=tok)
    with tempfile.TemporaryDirectory() as tmp:

        def buffer_pass():
            data.extract_activations(lm, tok, iter(windows), cfg.layer, n_rows, Path(tmp) / "a.npy", cfg.llm_batch_size, device)

        t_buffer = timed(buffer_pass, 2, device)
    layers = model.model.layers
    model.model.layers = layers[: cfg.layer + 1]  # the bare forward: embeddings and layers 0..L only

    @torch.no_grad()
    def bare_pass():
        for b in range(0, len(windows), cfg.llm_batch_size):
            model.model(torch.tensor(windows[b : b + cfg.llm_batch_size], device=device))

    t_bare = timed(bare_pass, 2, device)
    model.model.layers = layers
    return t_bare / t_buffer, dict(buffer_s=t_buffer, bare_s=t_bare, tokens=n_rows)


def cached_start_seconds() -> float:
    """Process start to the first training step of the default run, on an activation-cache hit."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run_1"
        cmd = [sys.executable, str(ROOT / "experiment.py"), "--out_dir", str(out), "--evals", "none", "--profile", "gemma-3-270m"]
        t0 = time.time()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        log = out / "training_log.jsonl"
        while not (log.exists() and log.read_text().strip()):
            if proc.poll() is not None:
                raise RuntimeError("experiment.py exited before its first training step")
            time.sleep(0.05)
        elapsed = time.time() - t0
        proc.terminate()
        proc.wait()
        return elapsed


# Every key of the JSON line, always present (null only for what --quick skips).
KEYS = (
    "ortho_step_ratio",
    "ortho_step_ratio_interleaved",
    "whole_run_s_plain",
    "whole_run_s_default",
    "ortho_every",
    "ortho_step_ratio_trained_state",
    "ortho_applied_step_ratio",
    "dense_vs_optimized_ratio",
    "ortho_step_ratio_gemma2",
    "ortho_applied_step_ratio_gemma2",
    "gemma2_batch_size",
    "ortho_peak_mem_mb_gemma2",
    "ortho_seconds_gemma2",
    "ortho_route_gemma2",
    "extraction_ratio",
    "cached_start_s",
    "eval_first_s",
    "eval_cached_s",
    "eval_cached_ratio",
    "core_first_s",
    "step_s_default",
    "extraction_tok_s",
    "device",
    "cpu_capability",
    "bf16_matmul_speedup",
    "int8_matmul_speedup",
    "llm_dtype",
    "sae_dtype",
    "eval_dtype",
    "peer_step_s",
    "peer_step_ratio",
    "peer_synth_training_s",
    "peer_synth_training_ratio",
    "peer_synth_steps",
)


def measure_whole_runs(cfg, device, results, rows, repeat=2):
    """The headline: a whole default run against plain TopK (training only, on the cached
    activations), each run `repeat` times alternately; the fastest of each."""
    plain, default = [], []
    for _ in range(repeat):
        plain.append(whole_run_seconds(dataclasses.replace(cfg, variant="none"), device))
        default.append(whole_run_seconds(cfg, device))
    results.update(whole_run_s_plain=min(plain), whole_run_s_default=min(default), ortho_step_ratio=min(default) / min(plain))
    results["step_s_default"] = min(default) / cfg.total_steps
    rows.append(
        (
            f"whole default run, training only ({cfg.total_steps} steps), fastest of {repeat}",
            f"{min(plain):.1f} s plain, {min(default):.1f} s default (all: {', '.join(f'{t:.0f}' for t in plain + default)} s)",
            f"ortho_step_ratio {results['ortho_step_ratio']:.3f} (target <= 1.10)",
        )
    )


def sampled_steps(total: int, n: int, block: int = 20) -> list[int]:
    """n of a schedule's total steps, rounded down to whole blocks of `block` consecutive steps (at
    least one) spread evenly over the schedule, first and last step included; all of them when n is
    0 or >= total. Every p is visited, and a block of 20 holds every phase of a term computed every
    5th (or 2nd, 4th, 10th) step equally often."""
    if not n or n >= total:
        return list(range(total))
    block = min(block, total)
    n_blocks = max(1, n // block)
    spacing = (total - block) / (n_blocks - 1) if n_blocks > 1 else 0
    return [round(i * spacing) + j for i in range(n_blocks) for j in range(block)]


def interleaved_step_seconds(cfg, device, buf, arms=None, steps=None) -> dict:
    """Seconds of plain TopK and of the default (or of each {name: variant} in arms), stepping
    alternately in one process over the whole schedule (cfg.total_steps steps, or the given step
    indices of it; the same batches, training steps only: no logging or checkpoints). Each step of
    one is timed next to the same step of the others, so a drift in the machine's speed (whole runs
    on this CPU have differed by 12% between identical runs) falls on all alike."""
    trainers = {}
    for name, variant in (arms or {"plain": "none", "default": cfg.variant}).items():
        c = dataclasses.replace(cfg, variant=variant)
        torch.manual_seed(c.seed)
        sae = E.AutoEncoderTopK(buf.d_model, c.dict_size, c.k, c.lm_name, c.layer, device="cpu", seed=c.seed).to(device)
        trainers[name] = E.TrainerTopK(c, sae)
        trainers[name].start(buf.batch)  # as experiment.train starts a fresh run
    if steps is not None:  # a sample: the one-time work of a first step (the fast term checked against
        for trainer in trainers.values():  # the reference) is spread over a whole run, not over the sample
            trainer.update(buf.batch(0), 0)
    steppers = {name: trainer.update for name, trainer in trainers.items()}
    return alternate_seconds(steppers, buf.batch, range(cfg.total_steps) if steps is None else steps, device)


def alternate_seconds(steppers: dict, batch, steps, device) -> dict:
    """{name: seconds} each of steppers ({name: step(x_BD, step)}) spent over steps, the same batch
    handed to each in turn, so that a drift in the machine's speed falls on all alike."""
    seconds = dict.fromkeys(steppers, 0.0)
    for step in steps:
        x_BD = batch(step)
        for name, do in steppers.items():
            t = time.perf_counter()
            do(x_BD, step)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds[name] += time.perf_counter() - t
    return seconds


def measure_interleaved(cfg, device, buf, results, rows):
    """The headline's drift-robust twin: plain and default steps interleaved over a whole run."""
    seconds = interleaved_step_seconds(cfg, device, buf)
    results.update(ortho_step_ratio_interleaved=seconds["default"] / seconds["plain"])
    rows.append(
        (
            f"plain and default steps interleaved, one process ({cfg.total_steps} steps each)",
            f"{seconds['plain']:.1f} s plain, {seconds['default']:.1f} s default",
            f"ortho_step_ratio_interleaved {results['ortho_step_ratio_interleaved']:.3f} (target <= 1.10)",
        )
    )


def measure_trained_state(cfg, device, batch, results, rows):
    """A train step from a trained state (all latents firing), embedded dims, real activations;
    returns the state for the next measurement."""
    points = (0.0, 0.25, 0.5, 0.75)
    n_steps = cfg.ortho_every * math.ceil(16 / cfg.ortho_every)
    t, state = step_ratios(640, cfg.dict_size, cfg.k, cfg.batch_size, device, batch, warm_steps=300, points=points, n_steps=n_steps)
    results["ortho_every"] = cfg.ortho_every
    results["ortho_step_ratio_trained_state"] = t["default"] / t["none"]
    results["ortho_applied_step_ratio"] = t["every_step"] / t["none"]
    dims = f"B={cfg.batch_size}, D=640, F={cfg.dict_size}, k={cfg.k}"
    rows.append(
        (
            f"train step from a trained state (all latents firing), embedded dims ({dims}), cached activations, mean over p in {points}",
            f"{t['none'] * 1e3:.1f} ms plain, {t['default'] * 1e3:.1f} ms default (ortho_every {cfg.ortho_every})",
            f"ratio {results['ortho_step_ratio_trained_state']:.3f}",
        )
    )
    rows.append(
        (
            "  the same, the term computed on every step",
            f"{t['every_step'] * 1e3:.1f} ms",
            f"ortho_applied_step_ratio {results['ortho_applied_step_ratio']:.3f}",
        )
    )
    return state


def measure_dense_vs_optimized(cfg, device, batch, state, results, rows):
    """The naive dense F x F form against ours, at embedded dims (at p = 0.5)."""
    trainer = make_trainer(cfg, 640, device)
    trainer.load_state_dict(state)
    out = trainer.sae.forward_train(batch(20_000), trainer.dtype)
    active = torch.zeros_like(out.pre_BF, dtype=torch.bool).scatter_(1, out.idx_BK, out.acts_BK > 0)
    W = trainer.sae.W_dec.detach().clone().requires_grad_()
    thr = E.ortho_threshold(0.5, cfg)
    t_dense = timed(lambda: dense_reference_penalty(W, active, thr).backward(), 5, device)
    t_fast = timed(lambda: O.penalty_value_and_grad(W, active, thr, trainer.dtype), 5, device)
    results["dense_vs_optimized_ratio"] = t_dense / t_fast
    rows.append(
        (
            f"ortho term fwd+bwd, embedded dims, {int(active.any(0).sum())} latents fired, thr {thr:.3f}",
            f"{t_dense * 1e3:.1f} ms dense F x F, {t_fast * 1e3:.1f} ms ours (dense upper-triangle route)",
            f"ratio {t_dense / t_fast:.2f}",
        )
    )


def measure_gemma2(cfg, device, results, rows):
    """gemma-2-2b dims (D 2304, F 16384, k 320): train steps on Gaussian inputs (no Gemma 2
    activations here; the batch is reduced on CPU) and the term's extra memory at B 2048."""
    B2 = 2048 if device.type == "cuda" else 256
    n_steps = max(cfg.ortho_every, 2) * (4 if device.type == "cuda" else 1)  # a GPU step is short: average more strides
    data2 = [torch.randn(B2, 2304, device=device) for _ in range(8)]
    t2, _ = step_ratios(2304, 16384, 320, B2, device, lambda i: data2[i % len(data2)], warm_steps=4, points=(0.0,), n_steps=n_steps)
    results["ortho_step_ratio_gemma2"] = t2["default"] / t2["none"]
    results["ortho_applied_step_ratio_gemma2"] = t2["every_step"] / t2["none"]
    results["gemma2_batch_size"] = B2
    rows.append(
        (
            f"train step, gemma-2-2b dims (B={B2}, D=2304, F=16384, k=320), Gaussian inputs",
            f"{t2['none'] * 1e3:.1f} ms plain, {t2['default'] * 1e3:.1f} ms default, {t2['every_step'] * 1e3:.1f} ms every step",
            f"ratio {results['ortho_step_ratio_gemma2']:.3f} (every step {results['ortho_applied_step_ratio_gemma2']:.3f})",
        )
    )
    mem, seconds = ortho_memory_gemma2(device, 2048)
    route = "dense"  # the term has one route on every device
    results.update(ortho_peak_mem_mb_gemma2=mem, ortho_seconds_gemma2=seconds, ortho_route_gemma2=route)
    rows.append(
        (
            "ortho term extra memory, gemma-2-2b dims (B=2048, random masks)",
            f"{mem:.0f} MB, {seconds:.2f} s, {route} route",
            "target <= 2560 MB",
        )
    )


def measure_extraction(device, results, rows):
    r, t3 = extraction_ratio(device)
    results["extraction_ratio"] = r
    results["extraction_tok_s"] = t3["tokens"] / t3["buffer_s"]
    rows.append(
        (
            "activation buffer vs bare truncated forward",
            f"{t3['tokens'] / t3['buffer_s']:.0f} vs {t3['tokens'] / t3['bare_s']:.0f} tok/s",
            f"ratio {r:.3f}",
        )
    )


def measure_cached_start(results, rows):
    s = cached_start_seconds()
    results["cached_start_s"] = s
    rows.append(("process start to first training step, cache hit", f"{s:.1f} s", "target <= 10 s"))


def eval_cache_seconds(seed: int = 42) -> dict:
    """Eval seconds of two default runs in a row (seeds `seed` and seed + 1) on an empty eval cache:
    the first computes and caches the LLM's side of every eval, the second reuses it. Both share the
    default run's activation cache (linked into a temporary cache_dir, so nothing real is touched).
    They train for one pass instead of the default's four: the evals' work does not depend on how
    long the SAE trained, and the three passes would add about 10 minutes that are not measured.
    Returns each run's per-eval seconds and cache hits, and the sums."""
    cfg = embedded_config()
    acts = data.cache_path(cfg)
    if data.read_cache(acts, data.activation_key(cfg)) is None:
        raise SystemExit(f"the default activation cache {acts} is missing: run `python experiment.py --out_dir run_1` once first")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "cache").mkdir()
        (Path(tmp) / "cache" / acts.name).symlink_to(acts.resolve())
        for i, run_seed in enumerate((seed, seed + 1)):
            out = Path(tmp) / f"run_{i + 1}"
            cmd = [sys.executable, str(ROOT / "experiment.py"), "--out_dir", str(out), "--profile", "gemma-3-270m", "--epochs", "1"]
            subprocess.run(cmd + ["--cache_dir", str(Path(tmp) / "cache"), "--seed", str(run_seed)], check=True, stdout=subprocess.DEVNULL)
            info = json.loads((out / "final_info.json").read_text())
            blocks = {name: info.get(key, {}) for name, key in EVAL_KEYS.items() if name in cli.eval_names(cfg)}
            runs.append({name: dict(seconds=b.get("seconds", 0.0), hit=evals_module.cache_hit(b)) for name, b in blocks.items()})
    first, cached = (sum(r["seconds"] for r in run.values()) for run in runs)
    return dict(first=runs[0], cached=runs[1], eval_first_s=first, eval_cached_s=cached, eval_cached_ratio=cached / first)


def measure_eval_cache(results, rows):
    r = eval_cache_seconds()
    results.update({k: r[k] for k in ("eval_first_s", "eval_cached_s", "eval_cached_ratio")})
    results["core_first_s"] = r["first"].get("core", {}).get("seconds")
    for label, run in (("  first run (empty eval cache)", r["first"]), ("  second run (eval cache)", r["cached"])):
        rows.append((label, ", ".join(f"{n} {v['seconds']:.0f} s ({'hit' if v['hit'] else 'miss'})" for n, v in run.items()), ""))
    rows.append(
        (
            "evals of a default run: first (empty eval cache) vs second (cached)",
            f"{r['eval_first_s']:.0f} s vs {r['eval_cached_s']:.0f} s",
            f"eval_cached_ratio {r['eval_cached_ratio']:.3f} (target <= 0.25)",
        )
    )


def measure_machine(device, results, rows):
    """The kind of machine every figure came from: the CPU's capability, the measured low-precision
    speedups and the dtypes auto chooses here (sae_harness/run/precision.py)."""
    prec = precision.resolve("auto", "auto", device, "gemma-3-270m")
    results.update(
        cpu_capability=prec.cpu_capability,
        bf16_matmul_speedup=prec.bf16_speedup,
        int8_matmul_speedup=prec.int8_speedup,
        llm_dtype=prec.llm,
        sae_dtype=prec.sae,
        eval_dtype=prec.evals,
    )
    rows.append(("machine", f"{device_name(device)}, CPU {prec.cpu_capability}", prec.line().removeprefix("precision: ")))


def measure_arms(profile, device, results, rows, n_steps=0):
    """What each arm costs: its training step over plain TopK's, all interleaved over one whole
    default run of the profile (the same batches), or over n_steps of its steps in blocks spread
    over the schedule (sampled_steps)."""
    cfg = cli.apply_profile(E.Config(out_dir="bench", profile=profile), E.PROFILES, cuda_available=device.type == "cuda")
    if profile == "synth":
        from sae_harness.run import synth

        buf = synth.activation_buffer(cfg, device)
    else:
        buf = data.activation_buffer(cfg, device, data.text_split(cfg)[0])
    steps = sampled_steps(cfg.total_steps, n_steps)
    whole = len(steps) == cfg.total_steps
    seconds = interleaved_step_seconds(cfg, device, buf, {arm: arm for arm in E.ARMS}, None if whole else steps)
    per_step = {arm: s / len(steps) for arm, s in seconds.items()}
    results.update(
        arms_profile=profile,
        arm_steps=len(steps),
        arm_step_s=per_step,
        arm_step_ratio={arm: s / per_step["none"] for arm, s in per_step.items()},
    )
    which = f"{cfg.total_steps} steps" if whole else f"{len(steps)} of {cfg.total_steps} steps (blocks of 20)"
    for arm in E.ARMS:
        rows.append(
            (
                f"{profile}: {arm}, {which} interleaved with the other arms",
                f"{1000 * per_step[arm]:.1f} ms/step",
                f"{per_step[arm] / per_step['none']:.2f}x plain TopK",
            )
        )


# ----------------------------------------------------------------------------------------------
# Side by side with SAELens (--peers)
# ----------------------------------------------------------------------------------------------


def saelens_trainer(d_in: int, cfg, device):
    """SAELens's own TopK training SAE and trainer at cfg's sizes, float32, as its synthetic-data
    runner (sae_lens.synthetic.train_toy_sae) configures them: constant lr, no logging or evals."""
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(cfg.seed)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=cfg.dict_size, k=cfg.k, dtype="float32", device=device.type))
    trainer_cfg = SAETrainerConfig(
        total_training_samples=cfg.total_steps * cfg.batch_size,
        train_batch_size_samples=cfg.batch_size,
        lr=cfg.resolved_lr,
        lr_end=cfg.resolved_lr,
        device=device.type,
        logger=LoggingConfig(log_to_wandb=False, eval_every_n_wandb_logs=2**31 - 1),
    )
    return SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=iter(()))


def peer_step_seconds(cfg, device, buf, steps: int) -> dict:
    """Seconds per training step of our plain TopK (TrainerTopK.update, variant none) and of SAELens's
    TopK (SAETrainer.step: forward with its aux loss, backward, clip, Adam), float32, on the same
    batches, stepping alternately so that a drift in the machine's speed falls on both alike."""
    ours_cfg = dataclasses.replace(cfg, variant="none", sae_dtype="float32")
    torch.manual_seed(cfg.seed)
    sae = E.AutoEncoderTopK(buf.d_model, cfg.dict_size, cfg.k, cfg.lm_name, cfg.layer, device="cpu", seed=cfg.seed).to(device)
    ours, theirs = E.TrainerTopK(ours_cfg, sae), saelens_trainer(buf.d_model, cfg, device)
    ours.start(buf.batch)

    def saelens_step(x_BD, step):
        theirs.step(x_BD)
        theirs.n_training_steps += 1  # as its fit() counts them

    steppers = dict(ours=ours.update, saelens=saelens_step)
    batch = lambda i: buf.batch(i).float()  # noqa: E731
    alternate_seconds(steppers, batch, range(1), device)  # the first step of each (one-time work), not timed
    return {name: s / steps for name, s in alternate_seconds(steppers, batch, range(1, steps + 1), device).items()}


def peer_synth_training_seconds(cfg, device, buf) -> dict:
    """Training seconds of a whole synth-profile run of plain TopK (experiment.train on the cached
    samples: its logging, diagnostics and checkpoints included) and of SAELens's synthetic-data
    runner (train_toy_sae, drawing its samples from the same world) for the same steps and batch."""
    from sae_lens.synthetic import train_toy_sae

    from sae_harness.run import synth

    plain = dataclasses.replace(cfg, variant="none", sae_dtype="float32")
    with tempfile.TemporaryDirectory() as tmp:
        _, final = E.train(plain, buf, device, Path(tmp), Tracker("", "", {}, tmp))
    model = synth.world(synth.world_of(cfg.lm_name), synth.world_seed(cfg.data_seed), cfg.cache_dir, verbose=False)
    sae = saelens_trainer(buf.d_model, cfg, device).sae
    t = time.perf_counter()
    train_toy_sae(
        sae,
        model.feature_dict,
        model.activation_generator,
        cfg.total_steps * cfg.batch_size,
        cfg.batch_size,
        cfg.resolved_lr,
        device=device,
    )
    return dict(ours=final["seconds"], saelens=time.perf_counter() - t)


def measure_peers(device, results, rows, epochs: int = 1, steps: int = 200):
    """Ours over SAELens's: the plain TopK step at the synth profile's sizes and the embedded
    profile's (random batches at the embedded sizes: no language model needed), and a whole synth
    run's training against SAELens's synthetic-data runner (epochs passes of the profile)."""
    from sae_harness.run import synth

    cfg = cli.apply_profile(E.Config(out_dir="bench", profile="synth", epochs=epochs), E.PROFILES, cuda_available=device.type == "cuda")
    buf = synth.activation_buffer(cfg, device)
    step = {"synth": peer_step_seconds(cfg, device, buf, steps)}
    emb = embedded_config(device=device.type)
    d_model = 640  # Gemma 3 270M's residual width
    gen = torch.Generator().manual_seed(0)
    random_batches = [torch.randn(emb.batch_size, d_model, generator=gen) for _ in range(16)]
    random_buf = type("Batches", (), dict(d_model=d_model, batch=lambda self, i: random_batches[i % 16].to(device)))()
    step["gemma-3-270m"] = peer_step_seconds(emb, device, random_buf, max(20, steps // 5))
    whole = peer_synth_training_seconds(cfg, device, buf)
    results.update(
        peer_step_s=step,
        peer_step_ratio={name: s["ours"] / s["saelens"] for name, s in step.items()},
        peer_synth_training_s=whole,
        peer_synth_training_ratio=whole["ours"] / whole["saelens"],
        peer_synth_steps=cfg.total_steps,
    )
    for name, s in step.items():
        rows.append(
            (
                f"plain TopK step, {name} sizes, float32",
                f"{1000 * s['ours']:.1f} ms ours, {1000 * s['saelens']:.1f} ms SAELens",
                f"{s['ours'] / s['saelens']:.2f}x SAELens's (lower is better)",
            )
        )
    rows.append(
        (
            f"synth training, plain TopK, {cfg.total_steps} steps",
            f"{whole['ours']:.1f} s ours, {whole['saelens']:.1f} s SAELens's runner",
            f"{whole['ours'] / whole['saelens']:.2f}x SAELens's (lower is better)",
        )
    )


def parse_args(argv):
    """The modes in the docstring; --help prints it instead of starting a 70-minute benchmark."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="no whole runs, extraction, start-up or evals")
    mode.add_argument("--evals-only", action="store_true", help="only the eval-cache measurement")
    mode.add_argument("--gemma2", action="store_true", help="only the gemma-2-2b-dims keys")
    mode.add_argument(
        "--arms",
        metavar="PROFILE",
        nargs="?",
        const="synth",
        choices=list(E.PROFILES),
        help="each arm's step cost on one profile (default synth)",
    )
    mode.add_argument("--peers", action="store_true", help="ours over SAELens's: the TopK step and the synth training")
    parser.add_argument(
        "--arm_steps",
        type=int,
        default=0,
        metavar="N",
        help="with --arms: time N steps (blocks of 20 spread over the schedule) instead of the whole run",
    )
    return parser.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    results, rows = dict.fromkeys(KEYS), []
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    measure_machine(device, results, rows)
    results["device"] = device_name(device)
    if args.arms:  # only the arms' step costs on one profile
        measure_arms(args.arms, device, results, rows, args.arm_steps)
        machine = ("device", "cpu_capability", "bf16_matmul_speedup", "int8_matmul_speedup", "sae_dtype")
        return report({k: results[k] for k in results if k.startswith("arm") or k in machine}, rows)
    if args.peers:  # only the side-by-side with SAELens
        measure_peers(device, results, rows)
        machine = ("device", "cpu_capability", "bf16_matmul_speedup", "int8_matmul_speedup")
        return report({k: results[k] for k in results if k.startswith("peer") or k in machine}, rows)
    if args.evals_only:  # only the eval-cache measurement (two default runs)
        measure_eval_cache(results, rows)
        return report(results, rows)
    torch.manual_seed(0)

    cfg = embedded_config()
    if args.gemma2:
        measure_gemma2(cfg, device, results, rows)
        machine = ("device", "cpu_capability", "bf16_matmul_speedup", "int8_matmul_speedup")
        return report({k: results[k] for k in results if "gemma2" in k or k in machine}, rows)
    buf = data.activation_buffer(cfg, device, data.text_split(cfg)[0])  # reused, or built first on a fresh clone
    batch = lambda i: buf.batch(i % cfg.total_steps)  # noqa: E731
    if not args.quick:
        measure_whole_runs(cfg, device, results, rows)
        measure_interleaved(cfg, device, buf, results, rows)
    state = measure_trained_state(cfg, device, batch, results, rows)
    measure_dense_vs_optimized(cfg, device, batch, state, results, rows)
    measure_gemma2(cfg, device, results, rows)
    if not args.quick:
        measure_extraction(device, results, rows)
        measure_cached_start(results, rows)
        measure_eval_cache(results, rows)
    report(results, rows)


def device_name(device) -> str:
    return torch.cuda.get_device_name() if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads"


def report(results, rows):
    width = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:<44}  {note}")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in results.items()}))


if __name__ == "__main__":
    main(sys.argv[1:])
