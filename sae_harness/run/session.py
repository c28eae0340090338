"""The books kept around experiment.train's loop, so that the loop itself reads as the idea:

    with TrainingSession(cfg, trainer, out, device, tracker) as session:   # resumes from out/checkpoint.pt
        for step in session.steps():        # a checkpoint every cfg.checkpoint_every steps and on SIGINT / SIGTERM
            ...one step...
            if session.logs(step):
                session.log(record, terms)  # a training_log.jsonl line, wandb, the progress bar or line
    final = session.final_info()            # the run's training record

and batch_diagnostics, the part of a record that is the harness's, not the idea's (sparsity, dead
latents, FVU, the separation diagnostics).

A resumed run refuses a checkpoint written with another config (only where things are kept may
differ), keeps the log's records of the steps before the checkpoint, and goes on from there.
"""

import contextlib
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

from sae_harness.run import ortho_fast, rundir, synth
from sae_harness.run.checks import PLACE, fields_with
from sae_harness.run.progress import Progress, record_fields
from sae_harness.run.rundir import Interrupted, TrainingFailed, UsageError


class TrainingSession:
    """trainer needs state_dict() / load_state_dict(state) and lr_at(step); a record handed to
    log() needs step, loss, recon_loss, l0, dead_fraction, fvu, elapsed_s (and the term's
    ortho_* fields where it is on, for the dose summary)."""

    def __init__(self, cfg, trainer, out: Path, device, tracker):
        self.cfg, self.trainer, self.tracker = cfg, trainer, tracker
        self.ckpt_path, self.log_path = out / rundir.CHECKPOINT, out / "training_log.jsonl"
        self.start, self.elapsed_before, self.resumed = 0, 0.0, False
        self.every = cfg.log_every or cfg.ortho_every * math.ceil(
            cfg.total_steps / (100 * cfg.ortho_every)
        )  # <= 100 records, on the stride
        kept = []
        if found := rundir.readable_checkpoint(self.ckpt_path, device):  # this one, or the one before it if this is damaged
            path, ckpt = found
            place = fields_with(cfg, PLACE)  # where it is kept may change; what it computes may not
            if {k: v for k, v in ckpt["config"].items() if k not in place} != {
                k: v for k, v in dataclasses.asdict(cfg).items() if k not in place
            }:
                raise UsageError(f"{path} was written with a different config; rerun with the same options or pass --overwrite")
            kept = self.logged_before(ckpt["step"])
            if kept is None:  # a resume would leave a gap in the log and in the run's record of it
                print(
                    f"warning: {self.log_path} is damaged: the records of the steps before the checkpoint's step {ckpt['step']} "
                    "cannot be read back; training starts again from step 0, so that the log and the run's record are whole",
                    file=sys.stderr,
                )
                kept = []
            else:
                trainer.load_state_dict(ckpt["trainer"])
                self.start, self.elapsed_before, self.resumed = ckpt["step"], ckpt["elapsed_s"], True
                print(f"resuming from {path} at step {self.start}/{cfg.total_steps}")
        rundir.rewrite_log(self.log_path, kept)
        self.dose = [r for r in kept if r.get("ortho_scale")]  # the logged steps with the term on
        self.record: dict | None = kept[-1] if kept else None  # the last logged step's (a run stopped after its last step has it)
        self.t0 = time.time()

    def __enter__(self):
        """Within the block SIGINT / SIGTERM wait for the step to finish (steps() then stops), and the
        log is open for appending."""
        self.stack = contextlib.ExitStack()
        self.stop = self.stack.enter_context(rundir.stop_requests())
        self.log_file = self.stack.enter_context(open(self.log_path, "a"))
        return self

    def __exit__(self, *exc) -> None:
        self.stack.close()

    def elapsed(self) -> float:
        """Training seconds so far, the run's earlier sessions included."""
        return self.elapsed_before + time.time() - self.t0

    def steps(self):
        """The steps left to train. After each step's body: the bar moves, a checkpoint is written
        every cfg.checkpoint_every steps, and a SIGINT / SIGTERM (which waits for the step to finish)
        writes one and stops with Interrupted."""
        total, self.t0 = self.cfg.total_steps, time.time()
        self.bar = Progress("training step", total, initial=self.start)  # a bar on a terminal, else a line per logged step
        for step in range(self.start, total):
            yield step
            self.bar.update(step + 1)
            last = step == total - 1
            if "signal" in self.stop or (not last and (step + 1) % self.cfg.checkpoint_every == 0):
                self.checkpoint(step + 1)
            if "signal" in self.stop:
                self.bar.close()
                raise Interrupted(
                    f"interrupted at step {step + 1}/{total}; checkpoint saved to {self.ckpt_path}. "
                    f"Resume with the same command: {rundir.resume_hint()}"
                )
        self.bar.close()

    def checkpoint(self, step: int) -> None:
        state = dict(trainer=self.trainer.state_dict(), step=step, elapsed_s=self.elapsed(), config=dataclasses.asdict(self.cfg))
        rundir.save_checkpoint(self.ckpt_path, state)

    def logged_before(self, step: int) -> list[dict] | None:
        """The log's records of the steps before step, or None when the log is damaged: a record
        cannot be read, or one of the steps logs() logs is missing."""
        kept = rundir.read_log(self.log_path, step)
        if kept is None or [r["step"] for r in kept] != [s for s in range(step) if self.logs(s)]:
            return None
        return kept

    def logs(self, step: int) -> bool:
        """Whether step is logged: every cfg.log_every steps (default: at most 100 records, on the
        term's stride) and the last."""
        return step % self.every == 0 or step == self.cfg.total_steps - 1

    def log(self, record: dict, terms) -> None:
        """record as a training_log.jsonl line (flushed), to the tracker and the progress bar
        (terms: the step's loss terms by name, shown where they are on)."""
        self.record = record
        self.dose += [record] if record.get("ortho_scale") else []
        try:
            self.log_file.write(json.dumps(record) + "\n")
            self.log_file.flush()
        except OSError as e:  # a full disk names the log (a cut-off last line is dropped on resume)
            rundir.raise_named(e, self.log_path)
        self.tracker.log(record)
        self.bar.update(record["step"] + 1, **record_fields(record, terms))

    def failure(self, why: str) -> TrainingFailed:
        """The error that stops a run whose training cannot go on, naming its last good checkpoint."""
        last_good = f"the last good checkpoint is {self.ckpt_path}" if self.ckpt_path.exists() else "no checkpoint was written yet"
        return TrainingFailed(f"{why}; {last_good}")

    def final_info(self, **extra) -> dict:
        """The run's training record, from the last step's log record, then extra (what only the
        trainer knows), then the term's dose."""
        cfg, record = self.cfg, self.record
        return dict(
            training_steps=cfg.total_steps,
            final_loss=record["loss"],
            final_recon_loss=record["recon_loss"],
            layer=cfg.layer,
            dict_size=cfg.dict_size,
            learning_rate=cfg.resolved_lr,
            tokens=cfg.total_steps * cfg.batch_size,
            seconds=record["elapsed_s"],
            l0=record["l0"],
            dead_fraction=record["dead_fraction"],
            fvu=record["fvu"],
            **extra,
        ) | rundir.dose_summary(self.dose)


def batch_diagnostics(cfg, W_dec_FD, out, x_BD, dtype, step: int, cofiring=None) -> dict:
    """The training batch's diagnostics in a training-log record, after the loss terms: l0, the
    fraction of dead latents, the FVU of the reconstruction (the log() above needs these three); on
    synth (cofiring: experiment.cofiring of the batch) the true parent / child latent pairs against
    all others (synth.mechanism); then the sep_* keys of ortho_fast.feature_separation (decoder
    |cos| of the pairs that co-fire in the batch: what the term itself minimises, so a diagnostic,
    not evidence of separation). out: experiment.StepOutput of the step."""
    recon = out.terms["recon"].value.item()
    record = dict(
        l0=out.active_BF.sum(-1).float().mean().item(),
        dead_fraction=out.dead_F.float().mean().item(),
        fvu=recon / (x_BD - x_BD.mean(0)).pow(2).sum(-1).mean().item(),
    )
    if cofiring is not None:
        record |= synth.mechanism_record(cfg, W_dec_FD, cofiring)
    return record | ortho_fast.feature_separation(W_dec_FD, out.active_BF, out.threshold, dtype, seed=step)
