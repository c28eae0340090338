"""A run, start to finish, for each of its seeds: the text split, the activation cache, training
(the idea's own `train`, handed in by experiment.py), the SAE saved, the pending evals and the
report. A run that stopped anywhere resumes where it stopped; a finished one is left as it is. One
process at a time runs in a run directory (lock.run_dirs); a second is refused before it does anything."""

import dataclasses
import sys
from pathlib import Path

import torch

from sae_harness import evals
from sae_harness.analysis.notes import report_run
from sae_harness.run import cli, data, lock, precision, rundir
from sae_harness.run.rundir import Exit, UsageError
from sae_harness.run.tracking import Tracker


def run(cfg, train, load_sae, defaults: dict) -> int:
    """experiment.py's main after its options are parsed: one SAE per seed (out_dir itself for one
    seed, out_dir/seed_<s> for several, with their aggregate); returns the exit code. defaults is
    the profile's recorded config, which the notes compare a run's config with."""
    cli.validate(cfg)
    out, seeds = Path(cfg.out_dir), cli.seed_list(cfg)
    runs = {seed: out if len(seeds) == 1 else out / f"seed_{seed}" for seed in seeds}
    states = [rundir.RunDir(run, cfg.layer).state(cli.eval_names(cfg)) for run in runs.values()]
    if all(state == "finished" for state in states) and not cfg.overwrite:
        raise UsageError(f"{out} holds a finished run; pass --overwrite to replace it, or choose another --out_dir")
    device = cli.resolve_device(cfg)
    data.check_model_available(cfg.lm_name)
    prec = precision.resolve(cfg.llm_dtype, cfg.sae_dtype, device, cfg.profile)
    with lock.run_dirs([out, *runs.values()]):  # each seed's too: a manual run on one seed's folder is refused as well
        return run_locked(cfg, out, seeds, runs, device, prec, train, load_sae, defaults)


def run_locked(cfg, out: Path, seeds: list[int], runs: dict, device, prec, train, load_sae, defaults: dict) -> int:
    """run's work, once its run directories are held by this process (and only then: before, the
    checks above change nothing on disk)."""
    print(prec.line())
    for warning in prec.warnings():
        print(warning, file=sys.stderr)
    for run in {out, *runs.values()}:
        rundir.remove_leftovers(run)
        if cfg.overwrite:
            rundir.clear_run(run)
    failed = []
    for i, (seed, run) in enumerate(runs.items()):
        if len(seeds) > 1:
            print(f"seed {seed} ({i + 1} of {len(seeds)}): {run}")
        seed_cfg = dataclasses.replace(cfg, seed=seed, out_dir=str(run))
        info, seed_failed = run_seed(seed_cfg, run, device, prec, train, load_sae, defaults, notes=len(seeds) == 1)
        failed += [f"{name} (seed {seed})" for name in seed_failed]
        if len(seeds) > 1:  # the run's final_info after each seed: mean, std, n and per-seed values of each metric
            info = rundir.write_seeds_aggregate(out, runs)
    if len(seeds) > 1:
        report_run(out, info, None, defaults)
    if failed:
        print(
            f"error: evals failed: {', '.join(failed)} (details in final_info.json); rerun the same command to retry them", file=sys.stderr
        )
        return Exit.EVAL_FAILED
    return Exit.DONE


def trained_sae(load_sae, out: Path, run: rundir.RunDir, device):
    """The saved SAE, or one line (UsageError) when it cannot be read: the pending evals cannot run,
    and the finished ones stay in final_info.json."""
    try:
        return load_sae(out / "sae", device)
    except Exception as e:  # missing or damaged (cfg.json, the safetensors)
        lines = str(e).strip().splitlines()
        raise UsageError(
            f"the trained SAE in {out / 'sae'} cannot be read ({type(e).__name__}: {lines[0] if lines else ''}), so the pending evals "
            f"cannot run; the finished evals in {run.info_path} are kept. Train it again with --overwrite (the evals run again too), "
            "or in another --out_dir"
        ) from None


def run_seed(cfg, out: Path, device: torch.device, prec, train, load_sae, defaults: dict, notes: bool) -> tuple[dict, list[str]]:
    """Train (or resume) and evaluate one SAE in out; returns its final_info and the failed evals.
    train(cfg, buffer, device, out, tracker) -> (sae, final) and load_sae(path, device) are the
    idea's; defaults is the profile's recorded config, which the report compares the run's with."""
    run = rundir.RunDir(out, cfg.layer)
    if run.state(cli.eval_names(cfg)) == "finished":
        print(f"{out}: finished already")
        return run.info, []
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    train_texts, heldout, split = data.text_split(cfg)
    rundir.write_json_atomic(out / "split.json", split)
    tracker = Tracker(cfg.wandb_project, out.resolve().name, dataclasses.asdict(cfg), out)

    if not run.trained:
        with rundir.stage("extracting activations", "nothing was trained yet and the partial cache is discarded"):
            buffer = data.activation_buffer(cfg, device, train_texts)
        checkpoint = out / rundir.CHECKPOINT
        kept = lambda: f"the last checkpoint, {checkpoint}, is kept" if checkpoint.exists() else "no checkpoint was written yet"
        with rundir.stage("training", kept):
            sae, final = train(cfg, buffer, device, out, tracker)
            rundir.save_sae(rundir.to_saelens(sae, buffer.scale), out)
            final.update(activation_scale=buffer.scale, activation_cache=str(buffer.path), precision=prec.record())
            extra = dict(activation_dim=buffer.d_model, trainer_class="TrainerTopK", dict_class="AutoEncoderTopK")
            run.record_training(rundir.recorded_config(cfg, **extra), final)
        for name in (rundir.CHECKPOINT, rundir.PREVIOUS_CHECKPOINT):
            (out / name).unlink(missing_ok=True)
        print(
            f"trained: final loss {final['final_loss']:.4g}, L0 {final['l0']:.1f}, dead {final['dead_fraction']:.3f}, "
            f"{final['seconds']:.0f} s; SAE saved to {out / 'sae'}"
        )
    else:
        print(f"{out}: training already finished; running the pending evals")
    with rundir.stage("running the evals", f"the trained SAE ({out / 'sae'}) and every finished eval in {run.info_path} are kept"):
        failed = evals.run_pending(cfg, cli.eval_names(cfg), run, lambda: trained_sae(load_sae, out, run, device), heldout, device)
    run.write_summary()
    report_run(out, run.info, tracker, defaults, notes)
    return run.info, failed
