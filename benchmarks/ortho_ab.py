"""Interleaved A/B of the fast orthogonality term: this checkout's sae_harness/run/ortho_fast.py against
the same file at another commit, on the same batches of the embedded profile (its activation cache
must exist: run experiment.py or bench.py once).

    python benchmarks/ortho_ab.py ef87f1d                      # early state: 100 steps from init
    python benchmarks/ortho_ab.py ef87f1d --sae <run>/sae      # also a trained SAE's state

Prints, per state, the latents firing, the median milliseconds of each version over 17 batches
(after 3 warm-up calls each) and their ratio, and checks that the two agree (value to 1e-5
relative, gradient cosine > 0.99999). Run it on an idle machine.
"""

import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import experiment as E  # noqa: E402
from sae_harness.run import cli, data, precision  # noqa: E402
from sae_harness.run import ortho_fast as NEW  # noqa: E402


def module_at(commit: str):
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:sae_harness/run/ortho_fast.py"], capture_output=True, text=True)
    if source.returncode:
        sys.exit(f"ortho_ab: no sae_harness/run/ortho_fast.py at {commit!r} ({source.stderr.strip()})")
    path = Path(tempfile.mkdtemp()) / "ortho_fast_old.py"
    path.write_text(source.stdout)
    spec = importlib.util.spec_from_file_location("ortho_fast_old", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def masks(sae, buf, scale, start, n=20):
    out = []
    for step in range(start, start + n):
        with torch.no_grad():
            o = sae.forward_train(buf.batch(step) * scale, precision.choose("auto", torch.device("cpu")))
        out.append(torch.zeros_like(o.pre_BF, dtype=torch.bool).scatter_(1, o.idx_BK, o.acts_BK > 0))
    return out


def call(module, W, active, dtype):
    if hasattr(module, "_last_pairs"):  # versions that cached the last batch's pairs: time a cold call
        module._last_pairs[:] = [None, None]
    return module.penalty_value_and_grad(W, active, 0.2, dtype)


def compare(name, W, acts, old, dtype):
    t = {"old": [], "new": []}
    for a in acts[:3]:
        call(old, W, a, dtype), call(NEW, W, a, dtype)
    for a in acts[3:]:
        out = {}
        for label, module in (("old", old), ("new", NEW)):
            start = time.perf_counter()
            out[label] = call(module, W, a, dtype)
            t[label].append(time.perf_counter() - start)
        (v0, g0), (v1, g1) = out["old"], out["new"]
        assert abs(v1.item() - v0.item()) <= 1e-5 * abs(v0.item()), (v0, v1)
        assert torch.nn.functional.cosine_similarity(g0.flatten().double(), g1.flatten().double(), dim=0) > 0.99999
    med = {k: sorted(x)[len(x) // 2] * 1e3 for k, x in t.items()}
    print(
        f"{name}: {int(acts[3].any(0).sum())} latents firing, old {med['old']:.0f} ms, new {med['new']:.0f} ms, ratio {med['new'] / med['old']:.2f}"
    )


def main(argv):
    if not argv or argv[0].startswith("-"):
        sys.exit(__doc__)
    old = module_at(argv[0])
    cfg = cli.apply_profile(E.Config(out_dir="unused", profile="gemma-3-270m", epochs=1), E.PROFILES, cuda_available=False)
    if not data.cache_path(cfg).exists():
        sys.exit(f"ortho_ab: no activation cache at {data.cache_path(cfg)}: run experiment.py or benchmarks/bench.py once")
    buf = data.ActivationBuffer(data.cache_path(cfg), data.activation_key(cfg), cfg.batch_size, cfg.seed, torch.device("cpu"))
    dtype = precision.choose("auto", torch.device("cpu"))
    torch.manual_seed(cfg.seed)
    sae = E.AutoEncoderTopK(buf.d_model, cfg.dict_size, cfg.k, cfg.lm_name, cfg.layer, device="cpu", seed=cfg.seed)
    trainer = E.TrainerTopK(cfg, sae)
    trainer.start(buf.batch)
    for step in range(100):
        trainer.update(buf.batch(step), step)
    compare("early (100 steps from init)", sae.W_dec.detach().clone(), masks(sae, buf, 1.0, 100), old, dtype)
    if "--sae" in argv:
        trained = E.load_sae(argv[argv.index("--sae") + 1])
        compare("trained (--sae)", trained.W_dec.detach().clone(), masks(trained, buf, buf.scale, 300), old, dtype)


if __name__ == "__main__":
    main(sys.argv[1:])
