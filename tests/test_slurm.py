"""sweep.py's cluster path through a real scheduler: a single-node SLURM on this machine
(scripts/slurm_single_node.sh, started here unless it runs already, as in CI). Tiny synth sweeps as
job arrays; a job requeued while it trains (`scontrol requeue`, as a preemption does) and a job
given SLURM's warning before its time limit (submitit's timeout path: checkpoint, requeue) each end
with the results of the uninterrupted local sweep (every run's training log, training record and
results record); a job that fails is reported in one line and only it runs again; the same command
while the jobs are queued submits nothing twice. Where the scheduler cannot be started (not root,
no apt-get) the tests skip, saying why."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_pinned import normalised
from test_synth import TINY

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "slurm_single_node.sh"
CONF = Path(os.environ.get("SAE_SLURM_DIR", "/tmp/sae-harness-slurm")) / "slurm.conf"
TIMEOUT = 600  # seconds for one sweep command; a run here takes tens of seconds
ARRAY = "none,progressive,static"  # the first run alone, then a job array of two


@pytest.fixture(scope="module")
def cluster():
    """The environment for SLURM's commands; the cluster is stopped after the module when it was
    started here (CI starts and stops it around the whole suite)."""
    env = dict(os.environ, SLURM_CONF=str(CONF), HF_HUB_OFFLINE="1")
    if subprocess.run([str(SCRIPT), "status"], capture_output=True).returncode == 0:
        yield env
        return
    started = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True, timeout=600)
    if started.returncode == 3:  # SLURM cannot be had here: not root, no package manager, the install failed
        pytest.skip(started.stderr.strip())
    assert started.returncode == 0, started.stdout + started.stderr  # a fault of the script or the cluster
    try:
        yield env
    finally:
        subprocess.run([str(SCRIPT), "stop"], capture_output=True, timeout=300)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    path = tmp_path_factory.mktemp("world") / "tiny.json"
    path.write_text(json.dumps(TINY))
    return path


def sweep_command(root: Path, world: Path, *extra, variants: str = "none,progressive") -> list[str]:
    """A sweep of 96-step synth runs (long enough to be stopped while training) at seed 42; float32
    so that every run computes alike wherever it runs."""
    command = [sys.executable, "sweep.py", "--name", "s", "--variants", variants, "--seeds", "1"]
    command += ["--runs_dir", str(root / "sweeps"), "--results", str(root / "results"), "--cache_dir", str(root / "cache")]
    command += ["--profile", "synth", "--lm_name", f"synth:{world}", "--tokens", "8192", "--epochs", "3", "--dict_size", "64"]
    command += ["--k", "4", "--batch_size", "256", "--sae_dtype", "float32", "--llm_dtype", "float32", "--evals", "none"]
    return command + ["--checkpoint_every", "10", *extra]


def results_of(root: Path) -> dict:
    """{(arm, seed): what the run ended with}: its record in results/s.json (summary, dose, config),
    its training record and its training log, less times and the test's folder."""
    result = json.loads((root / "results" / "s.json").read_text())
    runs = {}
    for record in result["runs"]:
        out = Path(record["run_dir"])
        info = json.loads((out / "final_info.json").read_text())
        log = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
        kept = dict(summary=record["summary"], dose=record["dose"], config=record["config"], training=info["training results for layer 0"])
        runs[record["arm"], record["seed"]] = normalised(json.loads(json.dumps(kept | dict(log=log))), str(root))
    return runs


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory):
    """The uninterrupted sweep, run locally: the arms of every test here."""
    root = tmp_path_factory.mktemp("local")
    command = sweep_command(root, world, "--executor", "local", variants=ARRAY)
    done = subprocess.run(command, cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1"), capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return results_of(root)


def folder_of(root: Path) -> Path:
    return root / "sweeps" / "s" / "submitit"


def ledger(root: Path) -> dict:
    """{run directory: SLURM job id} the sweep records (launch.ledger)."""
    path = folder_of(root) / "jobs.json"
    return json.loads(path.read_text()) if path.exists() else {}


def wait_for(condition, what: str, process=None, limit=TIMEOUT):
    deadline = time.time() + limit
    while not condition():
        assert time.time() < deadline, f"no {what} within {limit} s"
        assert process is None or process.poll() is None, f"the sweep ended before {what}: {process.communicate()}"
        time.sleep(0.2)


def training_steps(out: Path) -> int:
    log = out / "training_log.jsonl"
    return log.read_text().count("\n") if log.exists() else 0


def scheduler(env, *command) -> str:
    done = subprocess.run(list(command), env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(command)}: {done.stderr}"
    return done.stdout.strip()


def job_log(root: Path, job_id: str, stream: str = "out") -> str:
    return (folder_of(root) / f"{job_id}_0_log.{stream}").read_text()


def test_a_job_array_equals_the_local_sweep_and_the_same_command_again_submits_nothing(cluster, world, reference, tmp_path):
    """Three arms: the first run alone, then the other two as one job array. A second sweep.py with
    the same command, started while the jobs are queued, waits for them instead of submitting them
    again; both end with the local sweep's results."""
    command = sweep_command(tmp_path, world, "--executor", "slurm", variants=ARRAY)
    first = subprocess.Popen(command, cwd=ROOT, env=cluster, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: ledger(tmp_path), "first submission", first)
    second = subprocess.run(command, cwd=ROOT, env=cluster, capture_output=True, text=True, timeout=TIMEOUT)
    out, err = first.communicate(timeout=TIMEOUT)
    assert first.returncode == 0, out[-2000:] + err[-2000:]
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    assert "submitit: slurm executor" in out and "already submitted as job" in second.stdout
    jobs = ledger(tmp_path)
    assert len(jobs) == 3 and len(set(jobs.values())) == 3
    assert sum("_" in job_id for job_id in jobs.values()) == 2  # the array's tasks: <array>_<index>
    assert len(list(folder_of(tmp_path).glob("*_result.pkl"))) == 3  # one job per run: nothing ran twice
    assert results_of(tmp_path) == reference


def test_a_requeued_and_a_timed_out_job_resume_to_the_uninterrupted_results(cluster, world, reference, tmp_path):
    """The first run's job is requeued while it trains (`scontrol requeue`: SIGTERM to the job, as a
    preemption); the second's gets SLURM's warning before its time limit (the signal --signal=USR2@
    sends; sent here at a chosen step, as the scheduler's own timing is coarse: 15-45 s into a
    1-minute limit). Each writes a checkpoint, is requeued, resumes, and ends as if never stopped."""
    command = sweep_command(tmp_path, world, "--executor", "slurm", "--timeout_min", "5")
    sweep = subprocess.Popen(command, cwd=ROOT, env=cluster, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs = tmp_path / "sweeps" / "s"
    wait_for(lambda: training_steps(runs / "none" / "seed_42") >= 3, "training of the first run", sweep)
    requeued = ledger(tmp_path)[str(runs / "none" / "seed_42")]
    scheduler(cluster, "scontrol", "requeue", requeued)
    wait_for(lambda: training_steps(runs / "progressive" / "seed_42") >= 3, "training of the second run", sweep)
    timed_out = ledger(tmp_path)[str(runs / "progressive" / "seed_42")]
    scheduler(cluster, "scancel", "--signal=USR2", timed_out)
    out, err = sweep.communicate(timeout=TIMEOUT)
    assert sweep.returncode == 0, out[-2000:] + err[-2000:]
    for job_id in (requeued, timed_out):
        assert "resuming from" in job_log(tmp_path, job_id), job_log(tmp_path, job_id)[-2000:]  # not trained again from step 0
    assert "this job is timed-out" in job_log(tmp_path, timed_out, "err")  # submitit's timeout path: checkpoint(), requeue
    assert results_of(tmp_path) == {key: value for key, value in reference.items() if key[0] != "static"}


def test_a_failed_job_is_reported_in_one_line_and_the_same_command_after_the_fix_runs_only_it(cluster, world, reference, tmp_path):
    """The second run's directory holds a checkpoint written with other options (left by an earlier
    sweep): its job fails with bad input, the sweep says which run in one line and keeps the other;
    with that checkpoint moved away the same command runs only the failed run, to the local results."""
    import torch

    stale = tmp_path / "sweeps" / "s" / "progressive" / "seed_42"
    stale.mkdir(parents=True)
    torch.save(dict(config=dict(k=99), step=5, trainer={}, elapsed_s=0.0), stale / "checkpoint.pt")  # a whole checkpoint, of another config
    command = sweep_command(tmp_path, world, "--executor", "slurm")
    failed = subprocess.run(command, cwd=ROOT, env=cluster, capture_output=True, text=True, timeout=TIMEOUT)
    assert failed.returncode == 1 and failed.stderr.count("\n") == 1 and "Traceback" not in failed.stderr, failed.stderr[-2000:]
    assert "1 runs did not finish" in failed.stderr and str(stale) in failed.stderr and "bad input" in failed.stderr
    assert "different config" in failed.stdout  # the job's own error, in the sweep's line for that run
    assert (tmp_path / "sweeps" / "s" / "none" / "seed_42" / "final_info.json").exists()  # the other run is kept
    (stale / "checkpoint.pt").rename(tmp_path / "moved_away.pt")
    fixed = subprocess.run(command, cwd=ROOT, env=cluster, capture_output=True, text=True, timeout=TIMEOUT)
    assert fixed.returncode == 0, fixed.stdout[-2000:] + fixed.stderr[-2000:]
    assert "2 runs, 1 finished, 1 to run" in fixed.stdout and "progressive seed 42: new" in fixed.stdout
    assert len(list(folder_of(tmp_path).glob("*_result.pkl"))) == 3  # the first run's job, the failed one, its rerun
    assert results_of(tmp_path) == {key: value for key, value in reference.items() if key[0] != "static"}
