"""Interleaved A/B of one training step (TrainerTopK.update, the arm's whole step): this checkout's
experiment.py against the same file at another commit, both on this checkout's package, from the
same SAE and on the same batches, alternating in blocks so a busy moment hits both alike.

    python benchmarks/step_ab.py 0778040                       # synth profile, default arm
    python benchmarks/step_ab.py 0778040 --dims 640,4096,64    # the embedded profile's D, F, k on random data

Prints the median milliseconds per step of each and their ratio (B / A: this checkout over the
other commit), and the final losses of both, which agree when the change is a refactor. Run it on
an idle machine; the CPU is named in the output.
"""

import argparse
import importlib.util
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import experiment as NEW  # noqa: E402
from sae_harness.run import cli, precision, synth  # noqa: E402


def experiment_at(commit: str):
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:experiment.py"], capture_output=True, text=True)
    if source.returncode:
        sys.exit(f"step_ab: no experiment.py at {commit!r} ({source.stderr.strip()})")
    path = Path(tempfile.mkdtemp()) / "experiment_old.py"
    path.write_text(source.stdout)
    spec = importlib.util.spec_from_file_location("experiment_old", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["experiment_old"] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def batches(args, cfg, device):
    if args.dims:
        D, _, _ = args.dims
        g = torch.Generator().manual_seed(0)
        data = torch.randn(args.steps + args.block, cfg.batch_size, D, generator=g) * (1 + torch.rand(D, generator=g))
        return D, lambda step: data[step % len(data)].to(device)
    buf = synth.activation_buffer(cfg, device)
    return buf.d_model, buf.batch


def main(argv) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("commit", help="the other commit (A)")
    parser.add_argument("--variant", default="progressive", help="the arm (default progressive)")
    parser.add_argument("--dims", default="", help="D,F,k on random data instead of the synth profile's world")
    parser.add_argument("--steps", type=int, default=400, help="steps timed for each (default 400)")
    parser.add_argument("--block", type=int, default=20, help="steps per block before switching (default 20)")
    args = parser.parse_args(argv)
    args.dims = tuple(int(x) for x in args.dims.split(",")) if args.dims else None
    old = experiment_at(args.commit)
    extra = ["--dict_size", str(args.dims[1]), "--k", str(args.dims[2])] if args.dims else []
    cfg = NEW.parse_args(["--out_dir", "step_ab", "--profile", "synth", "--variant", args.variant, *extra])
    device = precision.device_of(cfg)
    D, batch = batches(args, cfg, device)
    cfg_old = cli.apply_profile(old.Config(**{f: getattr(cfg, f) for f in old.Config.__dataclass_fields__}), old.PROFILES, False)
    trainers = {}
    for name, module, c in (("A", old, cfg_old), ("B", NEW, cfg)):
        torch.manual_seed(cfg.seed)
        sae = module.AutoEncoderTopK(D, cfg.dict_size, cfg.k, "ab", 0, device="cpu", seed=cfg.seed).to(device)
        trainers[name] = module.TrainerTopK(c, sae)
        trainers[name].start(batch)
    seconds = {"A": [], "B": []}
    losses = {}
    for start in range(0, args.steps, args.block):
        for name in ("A", "B") if (start // args.block) % 2 == 0 else ("B", "A"):
            t0 = time.perf_counter()
            for step in range(start, start + args.block):
                out = trainers[name].update(batch(step), step)
            seconds[name].append((time.perf_counter() - t0) / args.block)
            losses[name] = out.loss.item()
    a, b = statistics.median(seconds["A"]), statistics.median(seconds["B"])
    where = f"D {D}, F {cfg.dict_size}, k {cfg.k}, {'random data' if args.dims else 'synth world'}"
    print(f"{platform.processor() or 'CPU'} ({torch.backends.cpu.get_cpu_capability()}), {args.variant}, {where}, {args.steps} steps each")
    print(f"  A ({args.commit}): {1000 * a:.2f} ms/step   B (this checkout): {1000 * b:.2f} ms/step   B/A {b / a:.3f}")
    print(f"  final loss A {losses['A']:.6g}, B {losses['B']:.6g}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
