"""TrainingSession: the books around experiment.train's loop (resume, log, checkpoints, a stop on
a signal), on a fake trainer and a small config, step by step."""

import json
import os
import signal
from dataclasses import dataclass, field

import pytest

from sae_harness.run import rundir
from sae_harness.run.checks import PLACE
from sae_harness.run.rundir import Interrupted, TrainingFailed, UsageError
from sae_harness.run.session import TrainingSession
from sae_harness.run.tracking import Tracker


@dataclass
class Cfg:
    out_dir: str = field(default="a", metadata=PLACE)
    seed: int = 0
    total_steps: int = 10
    log_every: int = 3
    ortho_every: int = 1
    checkpoint_every: int = 4
    layer: int = 1
    dict_size: int = 8
    resolved_lr: float = 1e-3
    batch_size: int = 2


class FakeTrainer:
    def __init__(self):
        self.state, self.loaded = 0, None

    def state_dict(self):
        return dict(state=self.state)

    def load_state_dict(self, state):
        self.loaded = state


def record(step, **extra):
    return dict(step=step, loss=1.0 / (step + 1), recon_loss=0.5, l0=3.0, dead_fraction=0.0, fvu=0.1, elapsed_s=float(step)) | extra


def run(tmp_path, cfg, trainer, until=None, on_step=None):
    """A loop as experiment.train writes it; returns the steps it ran and the session."""
    ran = []
    with TrainingSession(cfg, trainer, tmp_path, "cpu", Tracker("", "t", {}, tmp_path)) as session:
        for step in session.steps():
            trainer.state = step + 1
            ran.append(step)
            if on_step:
                on_step(step)
            if session.logs(step):
                session.log(record(step, ortho_scale=2.0, ortho_lambda=0.1, ortho_share=0.01, ortho_grad_share=0.02), ["recon"])
            if until is not None and step == until:
                break
    return ran, session


def test_a_fresh_run_logs_on_the_stride_and_the_last_step_and_checkpoints_between(tmp_path):
    saved = []
    ran, session = run(
        tmp_path, Cfg(), FakeTrainer(), on_step=lambda step: saved.append(rundir.load_checkpoint(tmp_path / "checkpoint.pt", "cpu"))
    )
    assert ran == list(range(10)) and not session.resumed
    logged = [json.loads(line)["step"] for line in (tmp_path / "training_log.jsonl").read_text().splitlines()]
    assert logged == [0, 3, 6, 9]
    # checkpoints after steps 3 and 7 (every 4 steps), none after the last: the run is done
    steps_saved = [c["step"] if c else None for c in saved]
    assert steps_saved == [None] * 4 + [4] * 4 + [8] * 2
    assert saved[-1]["trainer"] == dict(state=8) and saved[-1]["config"]["total_steps"] == 10
    final = session.final_info()
    assert final["final_loss"] == record(9)["loss"] and final["training_steps"] == 10 and final["tokens"] == 20
    assert final["ortho_lambda_mean"] == pytest.approx(0.1) and final["ortho_scale"] == 2.0


def test_a_resume_starts_at_the_checkpoint_and_keeps_only_the_log_before_it(tmp_path):
    cfg = Cfg()
    run(tmp_path, cfg, FakeTrainer(), until=5)  # stopped after step 5: the checkpoint is at step 4
    assert [json.loads(r)["step"] for r in (tmp_path / "training_log.jsonl").read_text().splitlines()] == [0, 3]
    rundir.rewrite_log(tmp_path / "training_log.jsonl", [record(0), record(3), record(6)])  # a record past the checkpoint
    trainer = FakeTrainer()
    ran, session = run(tmp_path, Cfg(out_dir="elsewhere"), trainer)  # where it is kept may change
    assert session.resumed and ran == list(range(4, 10)) and trainer.loaded == dict(state=4)
    logged = [json.loads(line)["step"] for line in (tmp_path / "training_log.jsonl").read_text().splitlines()]
    assert logged == [0, 3, 6, 9]


def test_a_checkpoint_of_another_config_is_refused(tmp_path):
    run(tmp_path, Cfg(), FakeTrainer(), until=5)
    with pytest.raises(UsageError, match="different config"):
        run(tmp_path, Cfg(dict_size=16), FakeTrainer())


def test_a_signal_waits_for_the_step_then_checkpoints_and_stops(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted, match="interrupted at step 7/10"):
        run(tmp_path, Cfg(), FakeTrainer(), on_step=lambda step: step == 6 and os.kill(os.getpid(), signal.SIGTERM))
    assert rundir.load_checkpoint(tmp_path / "checkpoint.pt", "cpu")["step"] == 7
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_failure_names_the_last_good_checkpoint_and_the_handlers_are_restored(tmp_path):
    before = signal.getsignal(signal.SIGINT)

    def fail(step):
        if step == 2:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        run(tmp_path, Cfg(), FakeTrainer(), on_step=fail)
    assert signal.getsignal(signal.SIGINT) is before  # the block left, the body raising
    session = TrainingSession(Cfg(), FakeTrainer(), tmp_path, "cpu", Tracker("", "t", {}, tmp_path))
    assert isinstance(session.failure("x"), TrainingFailed) and "no checkpoint was written yet" in str(session.failure("x"))
    run(tmp_path, Cfg(), FakeTrainer(), until=5)
    session = TrainingSession(Cfg(), FakeTrainer(), tmp_path, "cpu", Tracker("", "t", {}, tmp_path))
    assert f"the last good checkpoint is {tmp_path / 'checkpoint.pt'}" in str(session.failure("x"))


def test_a_run_stopped_after_its_last_step_resumes_to_its_final_record(tmp_path):
    with pytest.raises(Interrupted, match="interrupted at step 10/10"):
        run(tmp_path, Cfg(), FakeTrainer(), on_step=lambda step: step == 9 and os.kill(os.getpid(), signal.SIGINT))
    ran, session = run(tmp_path, Cfg(), FakeTrainer())
    assert ran == [] and session.resumed and session.final_info()["final_loss"] == record(9)["loss"]
