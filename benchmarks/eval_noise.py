"""Eval noise: one trained SAE evaluated again with other eval seeds (other absorption words, core
tokens, probe splits), to set against the seed noise (other SAEs, same eval seed).

    python benchmarks/eval_noise.py run_1 --eval_seeds 43,44 --evals core

Reads the run's recorded config and its SAE (a single-seed run directory, e.g.
sweeps/ablation/none/seed_42), evaluates it once per eval seed (each seed fills its own eval cache
entries: a first evaluation at a new seed costs what a profile's first run does), and writes
<run>/eval_noise.json: per eval seed the headline summary and seconds, and per metric the values
(the run's own eval seed first), their mean and sample std. The run's results are not touched.
"""

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a finished single-seed run directory")
    parser.add_argument("--eval_seeds", default="43,44", help="comma list of eval seeds to add (default 43,44)")
    parser.add_argument("--evals", default="absorption,core,sparse_probing", help="comma list of evals (default: all embedded)")
    args = parser.parse_args(argv)

    import torch

    import experiment as X
    from sae_harness import data, evals
    from sae_harness.rundir import read_info, write_json_atomic
    from sae_harness.schema import EVAL_KEYS, info_training_key, summarize

    info = read_info(args.run_dir)
    training = info.get(info_training_key(info))
    if training is None or not (args.run_dir / "sae").exists():
        print(f"error: {args.run_dir} holds no finished single-seed run (final_info.json with a training block, sae/)", file=sys.stderr)
        return 2
    fields = {f.name for f in dataclasses.fields(X.Config)}
    cfg = X.Config(**{k: v for k, v in training["config"].items() if k in fields})
    names = [n for n in args.evals.split(",") if n]
    if unknown := [n for n in names if n not in evals.EVAL_FUNCTIONS]:
        print(f"error: unknown evals {unknown}; choose from {sorted(evals.EVAL_FUNCTIONS)}", file=sys.stderr)
        return 2
    seeds = [int(s) for s in args.eval_seeds.split(",") if s]
    device = torch.device("cpu")
    _, heldout, _ = data.text_split(cfg)
    sae = X.load_sae(args.run_dir / "sae", device)
    base = summarize(info)
    runs = [dict(eval_seed=cfg.eval_seed, summary=base, seconds=None)]  # the run's own evaluation first
    tl_model = None
    for seed in seeds:
        seeded = dataclasses.replace(cfg, eval_seed=seed)
        work = args.run_dir / f"eval_seed_{seed}"
        ctx = evals.eval_context(seeded, work, heldout, device)
        tl_model = tl_model or evals.load_eval_model(seeded, ctx)
        blocks, seconds = {}, {}
        for name in names:
            t0 = time.time()
            blocks[EVAL_KEYS[name]] = evals.EVAL_FUNCTIONS[name](sae, tl_model, ctx)
            seconds[name] = round(time.time() - t0, 1)
            print(f"eval seed {seed}: {name} in {seconds[name]:.0f} s", flush=True)
        runs.append(dict(eval_seed=seed, summary=summarize(blocks), seconds=seconds))
    metrics = {}
    for metric in base:
        values = [r["summary"][metric]["value"] for r in runs]
        if all(v is not None for v in values) and len(values) > 1:
            metrics[metric] = dict(values=values, mean=statistics.fmean(values), std=statistics.stdev(values))
    eval_seeds = [r["eval_seed"] for r in runs]
    result = dict(run_dir=str(args.run_dir), eval_seeds=eval_seeds, evals=names, metrics=metrics, runs=runs)
    write_json_atomic(args.run_dir / "eval_noise.json", result)
    print(f"eval noise over eval seeds {eval_seeds} (std: sample std over eval seeds):")
    for metric, entry in metrics.items():
        print(f"  {metric}: " + " / ".join(f"{v:.4g}" for v in entry["values"]) + f"; std {entry['std']:.2g}")
    print(f"wrote {args.run_dir / 'eval_noise.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
