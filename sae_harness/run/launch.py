"""Launching a sweep's runs through submitit: each run is `python experiment.py <argv>` in its own
process (local processes on one machine, a SLURM job array on a cluster). A job that SLURM times out
or preempts stops its experiment with SIGTERM (a checkpoint) and is requeued, resuming where it
stopped; a local sweep stopped with Ctrl-C stops its running experiments the same way."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import submitit

from sae_harness.run.rundir import Interrupted, describe_exit

ROOT = Path(__file__).resolve().parents[2]  # the repository: experiment.py and the jobs' working directory


class SweepInterrupted(Interrupted):
    """Ctrl-C or SIGTERM: one line saying what is kept, exit status 130."""


_CHILD = {}  # the experiment.py process of the running job (so a requeue can stop it cleanly)


class ExperimentRun(submitit.helpers.Checkpointable):
    """One job: `python experiment.py <argv>` in the repository, its output in the job's log.
    Returns the exit status (0 done, 1 an eval failed, 2 bad input, 3 training failed, 130
    interrupted). On a SLURM timeout or preemption submitit calls checkpoint(): the experiment gets
    SIGTERM (it writes a checkpoint) and the job is requeued, resuming where it stopped."""

    def __init__(self, argv: list[str], threads: int = 0, pid_file: Path | None = None):
        self.argv = argv
        self.threads = threads
        self.pid_file = pid_file  # where the experiment's pid goes, so an interrupted sweep can stop it cleanly

    def __call__(self) -> int:
        env = dict(os.environ) | ({"OMP_NUM_THREADS": str(self.threads)} if self.threads else {})
        print("running: python experiment.py " + " ".join(self.argv), flush=True)
        _CHILD["process"] = subprocess.Popen([sys.executable, str(ROOT / "experiment.py"), *self.argv], cwd=ROOT, env=env)
        if self.pid_file is not None:
            self.pid_file.write_text(str(_CHILD["process"].pid))
        try:
            return _CHILD["process"].wait()
        finally:
            if self.pid_file is not None:
                self.pid_file.unlink(missing_ok=True)

    def checkpoint(self, *args, **kwargs):
        self.stop_experiment()
        return super().checkpoint(*args, **kwargs)

    @staticmethod
    def stop_experiment() -> None:
        """SIGTERM to the running experiment: it finishes its step, writes a checkpoint and exits."""
        process = _CHILD.get("process")
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()


def executor_for(args, folder: Path):
    cluster = None if args.executor == "auto" else args.executor
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    params = dict(timeout_min=args.timeout_min, name="sae-sweep", slurm_array_parallelism=max(1, args.parallel))
    params.update(
        {k: v for k, v in dict(gpus_per_node=args.gpus_per_node, cpus_per_task=args.cpus_per_task, mem_gb=args.mem_gb).items() if v}
    )
    if args.partition:
        params["slurm_partition"] = args.partition
    executor.update_parameters(**params)
    return executor


def launch(args, todo):
    """Submit the runs in todo. The first goes alone (it builds the shared activation caches that
    all runs read); the rest as one job array (SLURM) or in waves of --parallel processes (local)."""
    folder = Path(args.runs_dir) / args.name / "submitit"
    executor = executor_for(args, folder)
    local = executor.cluster in ("local", "debug")
    threads = max(1, (os.cpu_count() or 1) // args.parallel) if local and args.parallel > 1 else 0
    print(f"submitit: {executor.cluster} executor, {len(todo)} runs, {args.parallel} at a time; job logs in {folder}")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])  # the jobs import this file
    waves = [todo[:1]] + (
        [todo[i : i + args.parallel] for i in range(1, len(todo), args.parallel)] if local else ([todo[1:]] if todo[1:] else [])
    )
    codes, wave = {}, []
    pid_file = lambda run: folder / f"{run.arm}.seed_{run.seed}.pid"
    try:
        for wave in waves:
            with executor.batch():
                jobs = [executor.submit(ExperimentRun(run.argv, threads, pid_file(run) if local else None)) for run in wave]
            for run, job in zip(wave, jobs):
                try:
                    codes[run.out] = job.result()
                except Exception as e:  # the job itself failed (killed, node lost): its log says why
                    codes[run.out] = f"job failed: {str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}"
                print(f"  {run.arm} seed {run.seed}: {describe_exit(codes[run.out])} (log: {job.paths.stdout})")
    except KeyboardInterrupt:
        if not local:
            raise SweepInterrupted(
                "interrupted; the submitted jobs go on running on the cluster and the finished runs are kept. "
                "Rerun the same command once they have ended (squeue shows them) to collect and resume"
            ) from None
        for run in wave:  # stop the running experiments cleanly: on SIGTERM each writes a checkpoint and exits
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pid_file(run).read_text()), signal.SIGTERM)
        deadline = time.time() + 120
        while any(pid_file(run).exists() for run in wave) and time.time() < deadline:
            time.sleep(0.2)
        raise SweepInterrupted(
            "interrupted; finished runs are kept and the running ones wrote a checkpoint: run the same command again to resume"
        ) from None
    return codes
