"""Launching a sweep's runs: each run is `python experiment.py <argv>` in its own process, on a
cluster as a SLURM job array through submitit, on one machine forked from a process that imported
experiment.py once (workers.py). A job that SLURM times out or preempts stops its experiment with
SIGTERM (a checkpoint) and is requeued, resuming where it stopped; a local sweep stopped with Ctrl-C
stops its running experiments the same way.

On SLURM the sweep keeps <runs_dir>/<name>/submitit/jobs.json, the job of each run it submitted: the
same command while those jobs are pending or running waits for them instead of submitting them again
(squeue says which are; one owner per run directory holds across the scheduler too)."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import submitit

from sae_harness.run import cli, lock, workers
from sae_harness.run.rundir import Exit, Interrupted, RunDir, UsageError, describe_exit, write_json_atomic

ROOT = Path(__file__).resolve().parents[2]  # the repository: experiment.py and the jobs' working directory
PREEMPT_SIGNAL = getattr(signal, "SIG" + submitit.slurm.slurm.SlurmJobEnvironment.USR_SIG)  # SLURM's warning before the time limit
POLL_S = 2.0  # how often a sweep asks squeue about its jobs
GONE_GRACE_S = 30  # a job out of the queue with no result yet: a shared filesystem may show its result file late


class SweepInterrupted(Interrupted):
    """Ctrl-C or SIGTERM: one line saying what is kept, exit status 130."""


class SchedulerError(UsageError):
    """SLURM cannot be asked about the sweep's jobs: one line, exit status 2."""


_CHILD = {}  # the experiment.py process of the running job (so a requeue can stop it cleanly)


class ExperimentRun(submitit.helpers.Checkpointable):
    """One job: `python experiment.py <argv>` in the repository, its output in the job's log.
    Returns the exit status (0 done, 1 an eval failed, 2 bad input, 3 training failed, 130
    interrupted). On a SLURM timeout submitit calls checkpoint() on the warning signal: the experiment
    gets SIGTERM (it writes a checkpoint) and the job is requeued, resuming where it stopped. On a
    preemption or `scontrol requeue` SLURM sends SIGTERM to the experiment itself; that attempt then
    ends without a result, so that its exit status is not taken for the run's (the requeued attempt
    writes the run's; a job cancelled instead leaves the queue without one)."""

    def __init__(self, argv: list[str]):
        self.argv = argv

    def __call__(self) -> int:
        print("running: python experiment.py " + " ".join(self.argv), flush=True)
        _CHILD["process"] = subprocess.Popen(
            [sys.executable, str(ROOT / "experiment.py"), *self.argv],
            cwd=ROOT,
            # SLURM signals every process of the job before the time limit; that signal is submitit's
            # (checkpoint() below), and would kill the experiment without a checkpoint
            preexec_fn=lambda: signal.signal(PREEMPT_SIGNAL, signal.SIG_IGN),
        )
        code = _CHILD["process"].wait()
        if code in (Exit.INTERRUPTED, -signal.SIGTERM):  # -SIGTERM: stopped before it set its handler
            print(
                "the experiment stopped on the scheduler's SIGTERM; this attempt ends without a result (a requeued one writes it)",
                flush=True,
            )
            raise SystemExit(code)  # not an Exception, so submitit writes no result file and the sweep waits on
        return code

    def checkpoint(self, *args, **kwargs):
        self.stop_experiment()
        return super().checkpoint(*args, **kwargs)

    @staticmethod
    def stop_experiment() -> None:
        """SIGTERM to the running experiment: it finishes its step, writes a checkpoint and exits.
        Runs inside submitit's signal handler, which interrupts __call__'s Popen.wait() while that
        holds Popen's lock; so the child is reaped with waitpid here, not with a second Popen.wait()
        (which would spin on the lock until its timeout)."""
        process = _CHILD.get("process")
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                pid, status = os.waitpid(process.pid, os.WNOHANG)
            except ChildProcessError:  # reaped already
                return
            if pid:
                process.returncode = os.waitstatus_to_exitcode(status)
                return
            time.sleep(0.1)
        process.kill()


def on_slurm(args) -> bool:
    """--executor slurm, or auto where SLURM is at hand (submitit's own test: srun on the PATH)."""
    return args.executor == "slurm" or (args.executor == "auto" and submitit.SlurmExecutor.affinity() > 0)


def executor_for(args, folder: Path):
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    params = dict(timeout_min=args.timeout_min, name="sae-sweep", slurm_array_parallelism=max(1, args.parallel))
    params.update(
        {k: v for k, v in dict(gpus_per_node=args.gpus_per_node, cpus_per_task=args.cpus_per_task, mem_gb=args.mem_gb).items() if v}
    )
    # the warning signal (checkpoint, requeue) 90 s before the limit, or a quarter of a limit under 6 minutes
    params["slurm_signal_delay_s"] = min(90, 15 * args.timeout_min)
    if args.partition:
        params["slurm_partition"] = args.partition
    executor.update_parameters(**params)
    return executor


def queued_jobs(folder: Path) -> dict[str, str]:
    """{job id: state} of the jobs in SLURM's queue whose logs go to folder (this sweep's): pending,
    running, requeued or completing; an array's tasks one by one (123_4)."""
    try:
        listed = subprocess.run(
            ["squeue", "-h", "-r", "-O", "JobArrayID:64,State:32,STDOUT:4096"], capture_output=True, text=True, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SchedulerError(f"cannot ask SLURM which of this sweep's jobs are queued (squeue: {e})") from None
    if listed.returncode != 0:
        raise SchedulerError(f"cannot ask SLURM which of this sweep's jobs are queued (squeue: {listed.stderr.strip()[-300:]})")
    prefix = str(folder) + os.sep
    jobs = {}
    for line in listed.stdout.splitlines():
        job_id, state, stdout = (line.split(None, 2) + ["", ""])[:3]
        if stdout.strip().startswith(prefix):
            jobs[job_id] = state
    return jobs


@contextlib.contextmanager
def ledger(folder: Path):
    """{run directory: SLURM job id} of every run this sweep submitted (folder/jobs.json), held
    under an exclusive lock while a sweep process decides what to submit, and written back after
    (also when interrupted: a job submitted is recorded)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "jobs.json"
    with lock.exclusive(folder / "jobs.lock"):
        jobs = json.loads(path.read_text()) if path.exists() else {}
        try:
            yield jobs
        finally:
            write_json_atomic(path, jobs)


def submit_slurm(executor, wave, folder: Path) -> dict:
    """{run directory: job} for the runs of wave: a run whose recorded job SLURM still queues is
    waited for, not submitted again (the same command run twice); a run another sweep process
    finished meanwhile is not submitted; the rest go as one job array, recorded before the lock goes."""
    jobs = {}
    with ledger(folder) as recorded:
        queued = queued_jobs(folder)
        fresh = []
        for run in wave:
            job_id = recorded.get(str(run.out.absolute()))
            if job_id in queued:
                print(f"  {run.arm} seed {run.seed}: already submitted as job {job_id} ({queued[job_id].lower()}); waiting for it")
                jobs[run.out] = submitit.SlurmJob(folder=folder, job_id=job_id)
            elif RunDir(run.out, run.cfg.layer).state(cli.eval_names(run.cfg)) == "finished":
                print(f"  {run.arm} seed {run.seed}: finished meanwhile")
                jobs[run.out] = None
            else:
                fresh.append(run)
        if fresh:
            with executor.batch():
                submitted = [executor.submit(ExperimentRun(run.argv)) for run in fresh]
            for run, job in zip(fresh, submitted):
                recorded[str(run.out.absolute())] = job.job_id
                jobs[run.out] = job
    return jobs


def wait_slurm(jobs: dict, folder: Path):
    """(run directory, job, exit status or why none) as each job of jobs ends: its result file is
    there, or SLURM no longer queues it (cancelled, node lost). squeue only: no accounting (sacct) needed."""
    waiting, gone = {out: job for out, job in jobs.items() if job is not None}, {}
    while waiting:
        queued = queued_jobs(folder)  # before looking for results: a job leaves the queue after writing its result
        for out, job in list(waiting.items()):
            if job.paths.result_pickle.exists():
                yield out, waiting.pop(out), outcome(job)
            elif job.job_id in queued:
                gone.pop(out, None)
            elif time.time() - gone.setdefault(out, time.time()) > GONE_GRACE_S:
                yield out, waiting.pop(out), "job failed: it left SLURM's queue without a result (cancelled?)"
        if waiting:
            time.sleep(POLL_S)


def outcome(job) -> int | str:
    """The job's exit status (rundir.Exit), or why it has none, in one line."""
    try:
        return job.result()
    except Exception as e:  # the job itself failed (killed, node lost): its log says why
        return f"job failed: {str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}"


def launch(args, todo, main):
    """Run the runs in todo. The first goes alone (it builds the shared activation caches that all
    runs read); the rest as one SLURM job array, or locally up to --parallel at a time, each in a
    process forked from one that imported experiment.py once (workers.py) and running main(argv)
    (experiment.py's main) there."""
    folder = (Path(args.runs_dir) / args.name / "submitit").absolute()
    if not on_slurm(args):
        return launch_local(args, todo, folder.with_name("logs"), main)
    executor = executor_for(args, folder)
    print(f"submitit: {executor.cluster} executor, {len(todo)} runs, {args.parallel} at a time; job logs in {folder}")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])  # the jobs import this file
    codes = {}
    try:
        for wave in [todo[:1], todo[1:]]:
            if not wave:
                continue
            runs = {run.out: run for run in wave}
            jobs = submit_slurm(executor, wave, folder)
            codes.update({out: Exit.DONE for out, job in jobs.items() if job is None})  # finished meanwhile
            for out, job, code in wait_slurm(jobs, folder):
                codes[out] = code
                report(runs[out], code, workers.Logs(job.paths.stdout, job.paths.stderr).last_error(), job.paths.stdout)
    except KeyboardInterrupt:
        raise SweepInterrupted(
            "interrupted; the submitted jobs go on running on the cluster and the finished runs are kept. "
            "Rerun the same command to wait for them and collect (it does not submit them again)"
        ) from None
    return codes


def launch_local(args, todo, folder: Path, main) -> dict:
    """{run directory: exit status} of the runs in todo, run on this machine (workers.Pool)."""
    threads = max(1, (os.cpu_count() or 1) // args.parallel) if args.parallel > 1 else 0
    print(
        f"local: {len(todo)} runs, {args.parallel} at a time, each forked from one process that imports experiment.py once; logs in {folder}"
    )
    pool, codes = workers.Pool(folder, args.parallel, threads, main), {}
    try:
        for run, logs, code in pool.run_all(todo):
            codes[run.out] = code
            report(run, code, logs.last_error(), logs.stdout)
    except KeyboardInterrupt:
        pool.stop()  # each running experiment writes a checkpoint and exits
        raise SweepInterrupted(
            "interrupted; finished runs are kept and the running ones wrote a checkpoint: run the same command again to resume"
        ) from None
    return codes


def report(run, code, error: str, log: Path) -> None:
    why = f" ({error})" if code != Exit.DONE and error else ""
    print(f"  {run.arm} seed {run.seed}: {describe_exit(code)}{why} (log: {log})", flush=True)
