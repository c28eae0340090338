"""A run, start to finish, for each of its seeds: the text split, the activation cache, training
(the idea's own `train`, handed in by experiment.py), the SAE saved, the pending evals and the
report. A run that stopped anywhere resumes where it stopped; a finished one is left as it is. One
process at a time runs in a run directory (lock.run_dirs); a second is refused before it does anything.
The options are settled once (`settle`: checked, seeds and evals as lists, the run directories,
device and precision) into one record that everything below reads."""

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sae_harness import evals
from sae_harness.analysis.notes import report_run
from sae_harness.run import cli, data, lock, precision, rundir
from sae_harness.run.rundir import Exit, UsageError
from sae_harness.run.tracking import Tracker


@dataclass(frozen=True)
class Settled:
    """A run's config settled once, in `settle`, and read by everything below it instead of being
    derived from the options again: the config (profile applied), the seeds and the evals as lists,
    one run directory per seed, the device and the precision."""

    cfg: Any
    seeds: list[int]
    evals: list[str]
    runs: dict[int, Path]
    device: torch.device
    precision: precision.Precision

    @property
    def out(self) -> Path:
        return Path(self.cfg.out_dir)

    def seed(self, seed: int) -> "Settled":
        """The run of one of its seeds: its config carries that seed and that seed's directory."""
        cfg = dataclasses.replace(self.cfg, seed=seed, out_dir=str(self.runs[seed]))
        return dataclasses.replace(self, cfg=cfg, seeds=[seed], runs={seed: self.runs[seed]})


def settle(cfg) -> Settled:
    """Check cfg (one line for bad input) and settle it, before anything heavy loads or anything on
    disk changes: a finished run is refused unless --overwrite, then the device (a GPU asked for and
    missing is bad input), the model's availability and the precision are decided."""
    cli.validate(cfg)
    out, seeds, evals = Path(cfg.out_dir), cli.seed_list(cfg), cli.eval_names(cfg)
    runs = {seed: out if len(seeds) == 1 else out / f"seed_{seed}" for seed in seeds}
    if all(rundir.RunDir(run, cfg.layer).state(evals) == "finished" for run in runs.values()) and not cfg.overwrite:
        raise UsageError(f"{out} holds a finished run; pass --overwrite to replace it, or choose another --out_dir")
    device = cli.resolve_device(cfg)
    data.check_model_available(cfg.lm_name)
    return Settled(cfg, seeds, evals, runs, device, precision.resolve(cfg.llm_dtype, cfg.sae_dtype, device, cfg.profile))


def run(cfg, train, load_sae, defaults: dict) -> int:
    """experiment.py's main after its options are parsed: one SAE per seed (out_dir itself for one
    seed, out_dir/seed_<s> for several, with their aggregate); returns the exit code. defaults is
    the profile's recorded config, which the notes compare a run's config with."""
    settled = settle(cfg)
    with lock.run_dirs([settled.out, *settled.runs.values()]):  # each seed's too: a manual run on one seed's folder is refused as well
        return run_locked(settled, train, load_sae, defaults)


def run_locked(settled: Settled, train, load_sae, defaults: dict) -> int:
    """run's work, once its run directories are held by this process (and only then: before, the
    checks above change nothing on disk)."""
    cfg, out, seeds = settled.cfg, settled.out, settled.seeds
    print(settled.precision.line())
    for warning in settled.precision.warnings():
        print(warning, file=sys.stderr)
    for run in {out, *settled.runs.values()}:
        rundir.remove_leftovers(run)
        if cfg.overwrite:
            rundir.clear_run(run)
    failed = []
    for i, seed in enumerate(seeds):
        if len(seeds) > 1:
            print(f"seed {seed} ({i + 1} of {len(seeds)}): {settled.runs[seed]}")
        info, seed_failed = run_seed(settled.seed(seed), train, load_sae, defaults, notes=len(seeds) == 1)
        failed += [f"{name} (seed {seed})" for name in seed_failed]
        if len(seeds) > 1:  # the run's final_info after each seed: mean, std, n and per-seed values of each metric
            info = rundir.write_seeds_aggregate(out, settled.runs)
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


def run_seed(settled: Settled, train, load_sae, defaults: dict, notes: bool) -> tuple[dict, list[str]]:
    """Train (or resume) and evaluate the SAE of a settled run of one seed in its directory; returns
    its final_info and the failed evals. train(cfg, buffer, device, out, tracker) -> (sae, final) and
    load_sae(path, device) are the idea's; defaults is the profile's recorded config, which the
    report compares the run's with."""
    cfg, out, device, prec = settled.cfg, settled.out, settled.device, settled.precision
    run = rundir.RunDir(out, cfg.layer)
    if run.state(settled.evals) == "finished":
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
        failed = evals.run_pending(cfg, settled.evals, run, lambda: trained_sae(load_sae, out, run, device), heldout, device)
    run.write_summary()
    report_run(out, run.info, tracker, defaults, notes)
    return run.info, failed
