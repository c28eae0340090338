"""The researcher's and the developer's loop, timed: a synth run's phases, the CPU shared by two
torch processes under each OpenMP wait policy, and the two test tiers. Not a test.

    python benchmarks/fast_loop.py phases     # a synth-profile run of experiment.py, by phase: start-up,
                                              # training, the ground-truth eval with the eval samples
                                              # drawn and then cached (world and training samples built first)
    python benchmarks/fast_loop.py sweep      # a synth sweep of 3 arms (one seed), caches warm: seconds a
                                              # run and runs an hour (--root OTHER_CHECKOUT times another version;
                                              # --profile synth-narrow the other regime; --parallel 2 two at once)
    python benchmarks/fast_loop.py sharing    # the synth profile's training step alone and two processes at
                                              # once, per wait policy, interleaved (~3 minutes)
    python benchmarks/fast_loop.py tests      # pytest -q (the fast tier) and pytest -q -m slow, timed
    python benchmarks/fast_loop.py records    # a training-log record's separation diagnostics at each
                                              # profile's sizes, per route for the co-firing pairs (~1 min)
    python benchmarks/fast_loop.py            # all five
    python benchmarks/fast_loop.py default    # the embedded default's first run (every cache empty) by phase, then
                                              # a second run on its caches (~1 h on a 2-core AVX2 CPU; named only)
    python benchmarks/fast_loop.py default --run_options "--epochs 1"   # the same, training one pass

Options: --epochs N shortens the phases' run (the profile's 6 passes by default); --seconds and
--rounds size the sharing measurement. Each part prints a table; the last line is one JSON object
with the machine it ran on (CPU model, capability, cores) and the load average before and after:
on a CPU that other work shares, every figure reads high, and ratios measured within one run
(sharing's) hold up far better than seconds. Measure on an idle machine for the record.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sae_harness.run import threads  # noqa: E402  (imports no torch: the policies below must reach each worker before its torch)

POLICIES = {
    # libgomp's own default, spelled out (its documented spin count when OMP_WAIT_POLICY is unset),
    # so that threads.policy() leaves it alone in the worker
    "spin (libgomp default)": {"GOMP_SPINCOUNT": "300000"},
    "passive (the harness's)": dict(threads.POLICY),
    "short spin (10k)": {"GOMP_SPINCOUNT": "10000"},
    "short spin (3k)": {"GOMP_SPINCOUNT": "3000"},  # on the AMX CPU 1.09x alone, 1.91x two at once (docs/performance.md)
    "1 thread, spin": {"GOMP_SPINCOUNT": "300000", "OMP_NUM_THREADS": "1"},
    "1 thread, passive": dict(threads.POLICY) | {"OMP_NUM_THREADS": "1"},
}
THREAD_VARIABLES = (*threads.KNOBS, "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def machine() -> dict:
    import torch

    from sae_harness.run import precision

    return dict(
        cpu_model=precision.cpu_model(),
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        cores=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        wait_policy={k: os.environ[k] for k in threads.KNOBS if k in os.environ} or threads.POLICY,  # what experiment.py runs with
    )


def load() -> float:
    return round(os.getloadavg()[0], 2)


def environment(extra: dict) -> dict:
    """This process's environment without any thread setting of its own, plus extra."""
    return {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES} | extra


# ----------------------------------------------------------------------------------------------
# sharing: the training step alone and two at once, per wait policy
# ----------------------------------------------------------------------------------------------


def worker() -> None:
    """One training process: the synth profile's trainer (its dims, k, batch, arm and precision) on
    random batches, warmed up; then for each "go <seconds>" line on stdin, steps for that long and
    prints the mean seconds per step."""
    import torch

    import experiment as E
    from sae_harness.run import cli

    cfg = cli.apply_profile(E.Config(out_dir="bench", profile="synth", device="cpu"), E.PROFILES, cuda_available=False)
    d_model = 256  # the synth-cpu world's width
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(cfg.batch_size, d_model, generator=gen) for _ in range(16)]
    torch.manual_seed(0)
    trainer = E.TrainerTopK(cfg, E.AutoEncoderTopK(d_model, cfg.dict_size, cfg.k, "bench", 0, device="cpu", seed=0))
    trainer.start(lambda i: batches[i % len(batches)])
    step = 0
    for _ in range(30):
        trainer.update(batches[step % len(batches)], step)
        step += 1
    print("ready", flush=True)
    for line in sys.stdin:
        seconds, n, t0 = float(line.split()[1]), 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            trainer.update(batches[step % len(batches)], step)
            step, n = step + 1, n + 1
        print(json.dumps(dict(step_s=(time.perf_counter() - t0) / n, steps=n, threads=torch.get_num_threads())), flush=True)


class Worker:
    def __init__(self, env: dict):
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "_worker"], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT
        )

    def ready(self) -> None:
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("a sharing worker did not start (run it alone: python benchmarks/fast_loop.py _worker)")

    def go(self, seconds: float) -> None:
        self.proc.stdin.write(f"go {seconds}\n")
        self.proc.stdin.flush()

    def result(self) -> dict:
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def sharing(seconds: float, rounds: int) -> dict:
    """Per policy: the step's seconds alone, and each process's when two step at once, the policies
    interleaved round by round so that the machine's other load falls on each alike. The ratios
    that matter: two at once over alone (the goal: about 2 on 2 cores, not 6-10), and a policy's
    alone over the libgomp default's alone (the goal: about 1)."""
    workers = {name: (Worker(environment(env)), Worker(environment(env))) for name, env in POLICIES.items()}
    alone, paired = {name: [] for name in POLICIES}, {name: [] for name in POLICIES}
    try:
        for pair in workers.values():  # started together, each warmed up before any measurement
            for w in pair:
                w.ready()
        for _ in range(rounds):
            for name, (a, b) in workers.items():
                a.go(seconds)
                alone[name].append(a.result()["step_s"])
                a.go(seconds)
                b.go(seconds)
                paired[name].append(statistics.mean((a.result()["step_s"], b.result()["step_s"])))
    finally:
        for pair in workers.values():
            for w in pair:
                w.close()
    base = statistics.median(alone[next(iter(POLICIES))])
    out = {}
    print(f"{'policy':<26} {'alone ms':>9} {'two at once ms':>15} {'two / alone':>12} {'alone / default alone':>22}")
    for name in POLICIES:
        a, p = statistics.median(alone[name]), statistics.median(paired[name])
        out[name] = dict(env=POLICIES[name], alone_step_s=a, paired_step_s=p, paired_over_alone=p / a, alone_over_default=a / base)
        out[name] |= dict(alone_all=alone[name], paired_all=paired[name])
        print(f"{name:<26} {1e3 * a:9.1f} {1e3 * p:15.1f} {p / a:12.2f} {a / base:22.2f}")
    return out


# ----------------------------------------------------------------------------------------------
# phases: a synth run of experiment.py, by phase
# ----------------------------------------------------------------------------------------------


def timed_run(argv: list[str]) -> tuple[float, dict]:
    t0 = time.time()
    done = subprocess.run([sys.executable, str(ROOT / "experiment.py"), *argv], cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - t0
    if done.returncode != 0:
        raise RuntimeError(f"experiment.py failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    out_dir = Path(argv[argv.index("--out_dir") + 1])
    return wall, json.loads((out_dir / "final_info.json").read_text())


def phases(epochs: int | None) -> dict:
    """A synth-profile run as a sweep runs it (its own process), with the world and the training
    samples cached, twice: first with the eval samples still to draw, then with them cached.
    start-up = the process's wall time less training and the eval (imports, the precision probe,
    loading the world and samples, saving the SAE, the report)."""
    import experiment as E
    from sae_harness.run import cli, synth

    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        argv = ["--profile", "synth", "--cache_dir", str(cache), *(["--epochs", str(epochs)] if epochs else [])]
        cfg = cli.apply_profile(E.parse_args(["--out_dir", tmp, *argv]), E.PROFILES, cuda_available=False)
        world_cfg, seed = synth.world_of(cfg.lm_name), synth.world_seed(cfg.data_seed)
        t0 = time.time()
        synth.training_cache(world_cfg, seed, cfg.tokens, cfg.data_seed, cache)  # builds the world too
        built = time.time() - t0
        t0 = time.time()
        subprocess.run([sys.executable, "-c", "import experiment"], cwd=ROOT, check=True)
        imports = time.time() - t0
        out = dict(world_and_samples_built_s=built, import_experiment_s=imports, steps=cfg.total_steps)
        print(f"world and training samples built once: {built:.0f} s; `import experiment`: {imports:.1f} s")
        print(f"{'run':<24} {'wall s':>8} {'start-up s':>11} {'training s':>11} {'synth eval s':>13}")
        for label in ("eval samples drawn", "eval samples cached"):
            wall, info = timed_run(["--out_dir", str(Path(tmp) / label.replace(" ", "_")), *argv])
            train = info["training results for layer 0"]["final_info"]["seconds"]
            evals = info["synthetic evaluation results"]["seconds"]
            out[label] = dict(wall_s=wall, startup_s=wall - train - evals, training_s=train, synth_eval_s=evals)
            print(f"{label:<24} {wall:8.1f} {wall - train - evals:11.1f} {train:11.1f} {evals:13.1f}")
    return out


def sweep(epochs: int | None, arms: str, root: Path, profile: str = "synth", parallel: int = 1) -> dict:
    """A synth sweep as a study runs it (`sweep.py --variants <arms> --seeds 1`, world, training
    samples and eval samples cached by a first sweep of one arm), timed whole: seconds per run and
    runs per hour, collect and figures included. root: the checkout whose sweep.py runs (another
    worktree times another version on the same caches); profile: synth or synth-narrow, the two
    regimes of a ground-truth study; parallel: runs at once (sweep.py --parallel: each run gets
    cores / parallel torch threads, so its numbers differ from a lone run's in the last bits)."""
    with tempfile.TemporaryDirectory() as tmp:
        base = [
            sys.executable,
            "sweep.py",
            "--profile",
            profile,
            "--parallel",
            str(parallel),
            "--seeds",
            "1",
            "--executor",
            "local",
            "--cache_dir",
            str(Path(tmp) / "cache"),
        ]
        base += ["--results", str(Path(tmp) / "results"), *(["--epochs", str(epochs)] if epochs else [])]
        run = lambda name, variants: subprocess.run(  # noqa: E731
            [*base, "--name", name, "--variants", variants, "--runs_dir", str(Path(tmp) / "sweeps")],
            cwd=root,
            capture_output=True,
            text=True,
        )
        if (warm := run("warm", arms.split(",")[0])).returncode:
            raise RuntimeError(f"sweep.py failed: {warm.stderr.strip().splitlines()[-1:]}")
        t0 = time.time()
        if (done := run("timed", arms)).returncode:
            raise RuntimeError(f"sweep.py failed: {done.stderr.strip().splitlines()[-1:]}")
        wall, n = time.time() - t0, len(arms.split(","))
    print(
        f"sweep of {n} {profile} runs, {parallel} at once ({root}): {wall:.0f} s, {wall / n:.1f} s a run, {3600 * n / wall:.0f} runs an hour"
    )
    return dict(root=str(root), profile=profile, parallel=parallel, runs=n, wall_s=wall, s_per_run=wall / n, runs_per_hour=3600 * n / wall)


# ----------------------------------------------------------------------------------------------
# default: the embedded default's first run and a second one on its caches
# ----------------------------------------------------------------------------------------------


def default_run(options: list[str]) -> dict:
    """`experiment.py` on the embedded profile twice in one empty cache folder: the first run builds
    everything (the model folder from the GGUF, the activation caches, the eval cache's language-model
    side), the second reuses it all. Each run's phases from its final_info.json: training, each eval;
    the rest of the wall time is start-up and the caches built (model, activations)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = {}
        for label in ("first run", "second run"):
            argv = [
                "--out_dir",
                str(Path(tmp) / label.replace(" ", "_")),
                "--profile",
                "gemma-3-270m",
                "--cache_dir",
                str(Path(tmp) / "cache"),
                *options,
            ]
            wall, info = timed_run(argv)
            train = next(block for key, block in info.items() if key.startswith("training results"))["final_info"]["seconds"]
            evals = {
                key.split(" evaluation")[0]: block.get("seconds", 0.0) for key, block in info.items() if key.endswith("evaluation results")
            }
            out[label] = dict(wall_s=wall, training_s=train, evals_s=evals, rest_s=wall - train - sum(evals.values()))
            shown = ", ".join(f"{name} {seconds:.0f}" for name, seconds in evals.items())
            print(f"{label}: {wall:.0f} s = training {train:.0f} + evals ({shown}) + start-up and caches built {out[label]['rest_s']:.0f}")
    return out


# ----------------------------------------------------------------------------------------------
# records: a training-log record's separation diagnostics, on each route for the co-firing pairs
# ----------------------------------------------------------------------------------------------


def records(repeats: int) -> dict:
    """ortho_fast.feature_separation (each training-log record's sep_* keys) at each profile's sizes
    (dict_size, k, batch_size; decoder width 256) on random firing with Zipfian latent frequencies,
    by the two CPU routes for the co-firing pairs: dense mask products (int8 where fast, else
    float32) and the sparse COO product. Median ms of `repeats` each, COO over dense, and the route
    the harness takes here (ortho_fast.DENSE_COUNTS None); the two records are checked equal."""
    import torch

    import experiment as E
    from sae_harness.run import ortho_fast

    out = {}
    for profile in (E.profiles.SYNTH, E.profiles.SYNTH_NARROW, E.profiles.EMBEDDED):
        sizes = E.PROFILES[profile]
        F, k, B = sizes["dict_size"], sizes["k"], sizes["batch_size"]
        gen = torch.Generator().manual_seed(0)
        frequency_F = 1 / (torch.arange(F) + 20.0) ** 0.8
        active_BF = torch.zeros(B, F, dtype=torch.bool).scatter_(1, torch.multinomial(frequency_F.expand(B, F), k, generator=gen), True)
        W_FD = torch.randn(F, 256, generator=gen)
        ms, seen = {}, []
        for route, dense in (("dense", True), ("coo", False)):
            ortho_fast.DENSE_COUNTS = dense
            seen.append(ortho_fast.feature_separation(W_FD, active_BF, 0.05, torch.float32, seed=1))
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                ortho_fast.feature_separation(W_FD, active_BF, 0.05, torch.float32, seed=1)
                times.append(1000 * (time.perf_counter() - t0))
            ms[route] = statistics.median(times)
        ortho_fast.DENSE_COUNTS = None
        assert seen[0] == seen[1], f"the two routes disagree at {profile}: {seen}"
        taken = "dense" if ortho_fast.dense_counts(torch.device("cpu")) else "coo"
        out[profile] = dict(F=F, k=k, B=B, dense_ms=ms["dense"], coo_ms=ms["coo"], coo_over_dense=ms["coo"] / ms["dense"], taken=taken)
        print(
            f"{profile:14s} F {F:5d} k {k:3d}: dense {ms['dense']:7.1f} ms, COO {ms['coo']:7.1f} ms, COO / dense {ms['coo'] / ms['dense']:.2f}; taken here: {taken}"
        )
    return out


# ----------------------------------------------------------------------------------------------
# tests: the two tiers
# ----------------------------------------------------------------------------------------------


def tests() -> dict:
    """The README's two test commands, timed (each tier's own summary line kept)."""
    out = {}
    for tier, extra in (("fast", []), ("slow", ["-m", "slow"])):
        t0 = time.time()
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra], cwd=ROOT, capture_output=True, text=True
        )
        summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
        out[tier] = dict(
            wall_s=time.time() - t0, exit=done.returncode, summary=summary, passed=int((re.findall(r"(\d+) passed", summary) or [0])[0])
        )
        print(f"{tier} tier: {out[tier]['wall_s']:.0f} s, {summary}")
    return out


PARTS = dict(
    phases=lambda args: phases(args.epochs),
    sweep=lambda args: sweep(args.epochs, args.arms, Path(args.root).resolve(), args.profile, args.parallel),
    sharing=lambda args: sharing(args.seconds, args.rounds),
    tests=lambda args: tests(),
    records=lambda args: records(args.repeats),
    default=lambda args: default_run(args.run_options.split()),
)
NAMED_ONLY = ("default",)  # not part of a bare `fast_loop.py`: an hour on a 2-core AVX2 CPU


def main(argv: list[str]) -> int:
    if argv[:1] == ["_worker"]:
        worker()
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parts", nargs="*", help="phases, sweep, sharing, tests, records (all five by default), default (only when named)")
    parser.add_argument("--epochs", type=int, default=None, help="the phases' run: passes over the samples (the profile's by default)")
    parser.add_argument("--arms", default="none,progressive,static", help="sweep: the arms, one seed each")
    parser.add_argument("--root", default=str(ROOT), help="sweep: the checkout whose sweep.py is timed")
    parser.add_argument("--profile", default="synth", choices=("synth", "synth-narrow"), help="sweep: the regime (profile) of its runs")
    parser.add_argument("--parallel", type=int, default=1, help="sweep: runs at once (sweep.py --parallel)")
    parser.add_argument("--seconds", type=float, default=5.0, help="sharing: seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="sharing: rounds over the policies")
    parser.add_argument("--repeats", type=int, default=10, help="records: timings per route and profile")
    parser.add_argument("--run_options", default="", help='default: experiment.py options for both runs (e.g. "--epochs 1")')
    args = parser.parse_args(argv)
    parts = args.parts or [part for part in PARTS if part not in NAMED_ONLY]
    if set(parts) - set(PARTS):
        parser.error(f"unknown part {sorted(set(parts) - set(PARTS))[0]!r}: choose from {', '.join(PARTS)}")
    result = dict(machine=machine(), load_before=load(), date=time.strftime("%Y-%m-%d %H:%M"))
    for part in parts:
        result[part] = PARTS[part](args)
    result["load_after"] = load()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
