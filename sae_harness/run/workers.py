"""A local sweep's runs, each in a process of its own, forked from one server process that imported
experiment.py and its libraries once.

Starting Python and importing experiment.py with SAELens (the synth profile's worlds and metrics),
TransformerLens and transformers costs a run about 10 s on a 2-core CPU before it does any work of
its own, the same in every run (docs/performance.md, "Workers that import once"). multiprocessing's
fork server pays it once per sweep process: it imports PRELOAD, then forks a fresh child for each
run, which starts with those modules in memory and nothing else of any other run. A run that
crashes (even in native code) ends only its own process; its neighbours and the server go on.

A child runs exactly what `python experiment.py <argv>` runs (cli.run over experiment.main: the
same exit statuses, one-line errors, SIGTERM / Ctrl-C handling and checkpoints), its stdout and
stderr appended to <folder>/<arm>.seed_<seed>.{out,err}. SLURM jobs do not come here: each is a
process on its own node anyway (launch.py).
"""

import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sae_harness.run import threads as thread_policy

PRELOAD = ["__main__", "sae_lens.synthetic"]
"""What the server imports before it forks, besides the module of the runs' main (experiment.py:
torch and the harness): the sweep's own script (so the children need not import it again) and
SAELens (with TransformerLens and transformers: most of the import time). A module that fails to
import here is imported by the run that needs it, which then reports the error itself."""
STOP_WAIT_S = 120  # a stopped run finishes its step and writes its checkpoint within this


@dataclass(frozen=True)
class Logs:
    """Where a run's output went (both files are appended to by each attempt)."""

    stdout: Path
    stderr: Path

    def last_error(self) -> str:
        """The run's one-line error (cli.run prints `error: ...` on stderr), if it wrote one."""
        try:
            return next((line for line in reversed(self.stderr.read_text().splitlines()) if line.startswith("error: ")), "")
        except OSError:
            return ""


def output_to(stdout: str, stderr: str) -> None:
    """This process's stdout and stderr (the file descriptors, so native code's output too) appended
    to those files, a line at a time as a terminal would see them."""
    sys.stdout.flush()
    sys.stderr.flush()
    for fd, path in ((1, stdout), (2, stderr)):
        opened = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(opened, fd)
        os.close(opened)
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)


def _child(main, argv: list[str], threads: int, stdout: str, stderr: str) -> None:
    """In the forked process: what `python experiment.py <argv>` runs (cli.run over experiment.py's
    main, handed in by sweep.py), output to the run's logs."""
    output_to(stdout, stderr)
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} running: python experiment.py {' '.join(argv)}", flush=True)
    sys.argv = ["experiment.py", *argv]  # messages that quote the command quote this run's
    import torch

    from sae_harness.run import cli

    if threads:
        torch.set_num_threads(threads)
    sys.exit(cli.run(main, argv))


class Pool:
    """At most `parallel` runs at a time, each forked from the server; the server starts with the
    first run and lives as long as this sweep process."""

    _context = None

    def __init__(self, folder: Path, parallel: int, threads: int, main, target=_child):
        """main: the runs' entry point, main(argv) -> exit status (experiment.main)."""
        self.folder, self.parallel, self.threads, self.main, self.target = folder, max(1, parallel), threads, main, target
        self.running: dict[int, tuple] = {}  # sentinel -> (run, process, logs)
        folder.mkdir(parents=True, exist_ok=True)

    def context(self):
        """The fork server's context, one per process (the server starts with the first run)."""
        if Pool._context is None:
            os.environ.update(thread_policy.policy())  # the server's torch loads with the children's wait policy
            Pool._context = multiprocessing.get_context("forkserver")
            Pool._context.set_forkserver_preload([*PRELOAD, getattr(self.main, "__module__", "__main__")])
        return Pool._context

    def logs(self, run) -> Logs:
        stem = self.folder / f"{run.arm}.seed_{run.seed}"
        return Logs(stem.with_name(stem.name + ".out"), stem.with_name(stem.name + ".err"))

    def start(self, run) -> None:
        logs = self.logs(run)
        process = self.context().Process(
            target=self.target,
            args=(self.main, run.argv, self.threads, str(logs.stdout), str(logs.stderr)),
            name=f"{run.arm}.seed_{run.seed}",
        )
        process.start()
        self.running[process.sentinel] = (run, process, logs)

    def next_ended(self):
        """(run, logs, exit status) of the next run to end (an exit status below 0: killed by that signal)."""
        ready = multiprocessing.connection.wait(list(self.running))
        run, process, logs = self.running.pop(ready[0])
        process.join()
        return run, logs, process.exitcode

    def run_all(self, todo):
        """(run, logs, exit status) as each run of todo ends: the first alone (it builds the caches the
        others read), then up to `parallel` at a time."""
        first, rest = list(todo[:1]), list(todo[1:])
        for run in first:
            self.start(run)
            yield self.next_ended()
        while rest or self.running:
            while rest and len(self.running) < self.parallel:
                self.start(rest.pop(0))
            yield self.next_ended()

    def stop(self) -> None:
        """SIGTERM to every running run (each finishes its step, writes a checkpoint and exits), then
        wait for them (at most STOP_WAIT_S; one that has not ended by then is killed)."""
        for _, process, _ in self.running.values():
            if process.exitcode is None:
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.time() + STOP_WAIT_S
        for _, process, _ in self.running.values():
            process.join(max(0.0, deadline - time.time()))
            if process.exitcode is None:
                process.kill()
                process.join()
        self.running.clear()
