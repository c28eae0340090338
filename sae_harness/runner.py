"""One seed of a run, start to finish: the text split, the activation cache, training (the idea's
own `train`, handed in by experiment.py), the SAE saved, the pending evals and the report. A run
that stopped anywhere resumes where it stopped; a finished one is left as it is."""

import dataclasses
from pathlib import Path

import torch

from sae_harness import cli, data, evals, rundir
from sae_harness.notes import report_run
from sae_harness.tracking import Tracker


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
        sae, final = train(cfg, buffer, device, out, tracker)
        rundir.save_sae(rundir.to_saelens(sae, buffer.scale), out)
        final.update(activation_scale=buffer.scale, activation_cache=str(buffer.path), precision=prec.record())
        extra = dict(activation_dim=buffer.d_model, trainer_class="TrainerTopK", dict_class="AutoEncoderTopK")
        run.record_training(rundir.recorded_config(cfg, **extra), final)
        (out / "checkpoint.pt").unlink(missing_ok=True)
        print(
            f"trained: final loss {final['final_loss']:.4g}, L0 {final['l0']:.1f}, dead {final['dead_fraction']:.3f}, "
            f"{final['seconds']:.0f} s; SAE saved to {out / 'sae'}"
        )
    else:
        print(f"{out}: training already finished; running the pending evals")
    with rundir.stage("running the evals", f"the trained SAE ({out / 'sae'}) and every finished eval in {run.info_path} are kept"):
        failed = evals.run_pending(cfg, cli.eval_names(cfg), run, lambda: load_sae(out / "sae", device), heldout, device)
    run.write_summary()
    report_run(out, run.info, tracker, defaults, notes)
    return run.info, failed
