"""Eval noise: trained SAEs evaluated again with other eval seeds (other absorption words, core
tokens, probe splits), to set against the seed noise (other SAEs, same eval seed); and a sweep's
comparison redone on each SAE's mean over eval seeds.

    python benchmarks/eval_noise.py run_1 --eval_seeds 43,44 --evals core
    python benchmarks/eval_noise.py sweeps/ablation_e4/*/seed_* --eval_seeds 43,44 --evals absorption
    python benchmarks/eval_noise.py --compare results/ablation_e4.json --name ablation_e4_evalseeds

Evaluate (run directories given): reads each run's recorded config and its SAE (single-seed run
directories, e.g. sweeps/ablation/none/seed_42) and evaluates it once per eval seed, eval seeds
outer and runs inner: the first run at a new seed fills that seed's eval cache entries (it costs
what a profile's first run does), the others hit them. After each evaluation <run>/eval_noise.json
is rewritten: per eval seed the headline summary and seconds (the run's own eval seed first, from
its final_info.json), and per metric the values, their mean and sample std. An evaluation already
there is skipped, so an interrupted call resumes. The runs' own results are not touched.

Compare (--compare): from a sweep's results/<name>.json, every run's metrics of the re-run evals
replaced by their mean over the eval seeds that every run has, the others as they were; then the
sweep's table (mean ± std over training seeds, Δ vs the baseline arm with Welch's 95% interval)
into results/<name>.json, .md and .png, with the pooled std over eval seeds of each averaged metric.
"""

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
NOISE_FILE = "eval_noise.json"


class Usage(Exception):
    pass


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", type=Path, nargs="*", help="finished single-seed run directories to evaluate")
    parser.add_argument("--eval_seeds", default="43,44", help="comma list of eval seeds to add (default 43,44)")
    parser.add_argument("--evals", default="absorption,core,sparse_probing", help="comma list of evals (default: all embedded)")
    parser.add_argument("--compare", type=Path, help="a sweep's results/<name>.json: redo its table on the means over eval seeds")
    parser.add_argument("--name", help="with --compare: write results/<name>.json, .md, .png (default <sweep>_evalseeds)")
    parser.add_argument("--results", type=Path, default=ROOT / "results", help="with --compare: where they go (default ./results)")
    args = parser.parse_args(argv)
    if bool(args.run_dirs) == bool(args.compare):
        raise Usage("give run directories to evaluate, or --compare results/<name>.json, not both")
    return args


# ---------------------------------------------------------------- evaluate


def merged(old: dict | None, new: dict) -> dict:
    """A seed's summary after another eval: the new entry where it is ok, else the old one."""
    return {m: e if e.get("status") == "ok" or not old else old.get(m, e) for m, e in new.items()}


def noise_metrics(runs: list[dict]) -> dict:
    """Per metric ok at every eval seed: the values (eval-seed order), their mean and sample std."""
    out = {}
    for metric in runs[0]["summary"]:
        values = [(r["summary"].get(metric) or {}).get("value") for r in runs]
        if len(values) > 1 and all(v is not None for v in values):
            out[metric] = dict(values=values, mean=statistics.fmean(values), std=statistics.stdev(values))
    return out


def evaluate(run_dirs: list[Path], seeds: list[int], names: list[str]) -> None:
    import torch

    import experiment as X
    from sae_harness import evals
    from sae_harness.evals import registry
    from sae_harness.run import data
    from sae_harness.run.rundir import read_info, write_json_atomic
    from sae_harness.run.schema import info_training_key, summarize

    saebench = {e.name: e for e in registry.EVALS if e.needs_eval_model}  # the evals an eval seed changes
    if unknown := [n for n in names if n not in saebench]:
        raise Usage(f"unknown evals {unknown}; choose from {sorted(saebench)}")
    fields = {f.name for f in dataclasses.fields(X.Config)}
    runs = []
    for run_dir in run_dirs:
        info = read_info(run_dir)
        training = info.get(info_training_key(info))
        if training is None or not (run_dir / "sae").exists():
            raise Usage(f"{run_dir} holds no finished single-seed run (final_info.json with a training block, sae/)")
        cfg = X.Config(**{k: v for k, v in training["config"].items() if k in fields})
        path = run_dir / NOISE_FILE
        noise = json.loads(path.read_text()) if path.exists() else None
        if noise is None or noise["runs"][0]["eval_seed"] != cfg.eval_seed:
            noise = dict(run_dir=str(run_dir), runs=[dict(eval_seed=cfg.eval_seed, summary=summarize(info), seconds=None)])
        runs.append((run_dir, cfg, noise))
    text = {(c.lm_name, c.layer, c.profile, c.data_seed, c.heldout_fraction) for _, c, _ in runs}
    if len(text) > 1:
        raise Usage(f"the runs differ in model, layer, profile or text split: {sorted(text)}")
    device = torch.device("cpu")
    _, heldout, _ = data.text_split(runs[0][1])
    tl_model = None
    for seed in seeds:
        for run_dir, cfg, noise in runs:
            if seed == cfg.eval_seed:  # the run's own evaluation, in its final_info.json
                continue
            entry = next((r for r in noise["runs"] if r["eval_seed"] == seed), None)
            todo = [n for n in names if entry is None or n not in (entry.get("seconds") or {})]
            if not todo:
                continue
            if entry is None:
                entry = dict(eval_seed=seed, summary={}, seconds={})
                noise["runs"].append(entry)
            seeded = dataclasses.replace(cfg, eval_seed=seed)
            inputs = evals.EvalInputs(seeded, run_dir / f"eval_seed_{seed}", heldout, device)
            inputs.ctx = evals.eval_context(seeded, inputs.out, heldout, device)
            inputs.tl_model = tl_model = tl_model or evals.load_eval_model(seeded, inputs.ctx)
            sae = X.load_sae(run_dir / "sae", device)
            for name in todo:
                t0 = time.time()
                block = saebench[name].run(sae, inputs)
                entry["summary"] = merged(entry["summary"], summarize({saebench[name].block: block}))
                entry["seconds"][name] = round(time.time() - t0, 1)
                noise |= dict(evals=sorted({*noise.get("evals", []), name}), eval_seeds=[r["eval_seed"] for r in noise["runs"]])
                noise["metrics"] = noise_metrics(noise["runs"])
                write_json_atomic(run_dir / NOISE_FILE, noise)
                print(f"{run_dir} eval seed {seed}: {name} in {entry['seconds'][name]:.0f} s", flush=True)
    for run_dir, _, noise in runs:
        print(f"{run_dir}: std over eval seeds {noise.get('eval_seeds')}:")
        for metric, e in noise.get("metrics", {}).items():
            print(f"  {metric}: " + " / ".join(f"{v:.4g}" for v in e["values"]) + f"; std {e['std']:.2g}")


# ---------------------------------------------------------------- compare


def eval_seed_means(records: list[dict], noises: dict) -> tuple[list[int], list[str], dict, dict]:
    """(the eval seeds every run has, the metrics ok at all of them in every run, {run_dir: summary
    with those metrics' value (and se) replaced by the mean over those seeds}, {metric: the pooled
    sample std over those seeds: root mean of the runs' variances})."""
    from sae_harness.run.schema import combine_summaries

    seeds = sorted(set.intersection(*(set(r["eval_seed"] for r in noises[rec["run_dir"]]["runs"]) for rec in records)))
    if len(seeds) < 2:
        raise Usage(f"the runs share fewer than two eval seeds ({seeds}): evaluate them first")

    def at(noise, metric):
        entries = [next(r for r in noise["runs"] if r["eval_seed"] == s)["summary"].get(metric) or {} for s in seeds]
        return entries if all(e.get("status") == "ok" and e.get("value") is not None for e in entries) else None

    metrics = [m for m in records[0]["summary"] if all(at(noises[rec["run_dir"]], m) for rec in records)]
    summaries, variances = {}, {m: [] for m in metrics}
    for rec in records:
        runs = noises[rec["run_dir"]]["runs"]
        over_seeds = combine_summaries([next(r for r in runs if r["eval_seed"] == s)["summary"] for s in seeds])  # mean, se, std
        summary = json.loads(json.dumps(rec["summary"]))
        for metric in metrics:
            mean = over_seeds[metric]
            variances[metric].append(mean["std"] ** 2)
            summary[metric] |= dict(value=mean["value"], se=mean["se"], values=[mean["value"]])
        summaries[rec["run_dir"]] = summary
    return seeds, metrics, summaries, {m: math.sqrt(statistics.fmean(v)) for m, v in variances.items()}


def compare(result_path: Path, name: str | None, results: Path) -> dict:
    import plot
    from sae_harness.analysis.compare import welch
    from sae_harness.analysis.formatting import results_markdown
    from sae_harness.run.rundir import write_atomic, write_json_atomic
    from sae_harness.run.schema import combine_summaries

    sweep = json.loads(result_path.read_text())
    records = sweep["runs"]
    missing = [r["run_dir"] for r in records if not (ROOT / r["run_dir"] / NOISE_FILE).exists()]
    if missing:
        raise Usage(f"{len(missing)} runs have no {NOISE_FILE} (evaluate them first), e.g. {missing[0]}")
    noises = {r["run_dir"]: json.loads((ROOT / r["run_dir"] / NOISE_FILE).read_text()) for r in records}
    seeds, metrics, summaries, pooled = eval_seed_means(records, noises)
    baseline = sweep.get("baseline")
    arms = {}
    for arm, entry in sweep["arms"].items():
        runs = sorted((r for r in records if r["arm"] == arm), key=lambda r: r["seed"])
        if not runs:
            raise Usage(f"arm {arm!r} has no runs in {result_path} (a baseline from another sweep cannot be re-evaluated here)")
        arms[arm] = {k: v for k, v in entry.items() if k != "vs_baseline"} | dict(
            summary=combine_summaries([summaries[r["run_dir"]] for r in runs])
        )
    for arm, entry in arms.items():
        if baseline in arms and arm != baseline:
            entry["vs_baseline"] = welch(entry["summary"], arms[baseline]["summary"])
    name = name or f"{sweep['name']}_evalseeds"
    result = dict(
        name=name,
        written=time.strftime("%Y-%m-%d %H:%M:%S"),
        command="python benchmarks/eval_noise.py " + " ".join(sys.argv[1:]),
        source=str(result_path),
        profile=sweep.get("profile"),
        baseline=baseline,
        eval_seeds=seeds,
        eval_seed_mean=metrics,
        eval_seed_std=pooled,
        note=(
            "each run's eval_seed_mean metrics are its mean over eval_seeds (the others as in the source); "
            "eval_seed_std: per metric, the pooled sample std over eval seeds of one SAE (root mean variance over the runs)"
        ),
        interval=sweep.get("interval"),
        spread=sweep.get("spread"),
        directions=sweep.get("directions"),
        arms=arms,
        runs=[r | dict(summary=summaries[r["run_dir"]]) for r in records],
    )
    results.mkdir(parents=True, exist_ok=True)
    write_json_atomic(results / f"{name}.json", result)
    markdown = results_markdown(result) + "\n"
    write_atomic(results / f"{name}.md", lambda tmp: tmp.write_text(markdown))
    figure = plot.plot_summaries(
        [(arm, entry["summary"]) for arm, entry in arms.items()],
        arms[baseline]["summary"] if baseline in arms else None,
        results / f"{name}.png",
        f"{name}: {sweep['name']} with {', '.join(metrics)} averaged over eval seeds {seeds}; mean ± std over training seeds",
    )
    print(f"eval seeds {seeds}; averaged: {', '.join(metrics)}")
    for metric, std in pooled.items():
        print(f"  {metric}: std over eval seeds (pooled over {len(records)} SAEs) {std:.3g}")
    print(f"wrote {results / f'{name}.json'}, {name}.md and {figure}")
    return result


def main(argv=None) -> int:
    try:
        args = parse(argv)
        if args.compare:
            compare(args.compare, args.name, args.results)
        else:
            names = [n for n in args.evals.split(",") if n]
            try:
                seeds = [int(s) for s in args.eval_seeds.split(",") if s]
            except ValueError:
                raise Usage(f"--eval_seeds {args.eval_seeds!r}: a comma list of integers is expected") from None
            evaluate(args.run_dirs, seeds, names)
    except Usage as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
