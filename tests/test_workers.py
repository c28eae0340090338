"""A local sweep's worker processes (sae_harness/run/workers.py): each run in its own process forked
from a server that imported experiment.py and SAELens once. A run that crashes in native code ends
only itself; the others finish and report; output goes to the run's logs; a child starts with the
heavy modules already imported; stop() ends the running ones with SIGTERM."""

import os
import signal
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import experiment as E
from sae_harness.run import workers


def job(main, argv, threads, stdout, stderr):
    """A stand-in for experiment.py in the child: argv[0] says what to do."""
    workers.output_to(stdout, stderr)
    what = argv[0]
    print(f"preloaded: {'sae_lens.synthetic' in sys.modules and 'experiment' in sys.modules}", flush=True)
    if what == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)
    if what == "error":
        print("error: a one-line reason", file=sys.stderr, flush=True)
        sys.exit(2)
    if what == "sleep":
        time.sleep(60)
    Path(argv[1]).write_text("done")
    sys.exit(0)


def run(arm, argv):
    return SimpleNamespace(arm=arm, seed=42, argv=argv, out=Path(arm))


def test_a_crash_ends_only_its_own_run_and_children_start_with_the_imports_done(tmp_path):
    todo = [run("first", ["ok", str(tmp_path / "first")]), run("crash", ["segfault"]), run("bad", ["error"])]
    todo.append(run("after", ["ok", str(tmp_path / "after")]))
    pool = workers.Pool(tmp_path / "logs", parallel=2, threads=1, main=E.main, target=job)
    ended = {r.arm: (logs, code) for r, logs, code in pool.run_all(todo)}
    assert {arm: code for arm, (_, code) in ended.items()} == dict(first=0, crash=-signal.SIGSEGV, bad=2, after=0)
    assert (tmp_path / "first").read_text() == (tmp_path / "after").read_text() == "done"
    logs = ended["bad"][0]
    assert logs.last_error() == "error: a one-line reason" and ended["first"][0].last_error() == ""
    assert all(logs.stdout.read_text() == "preloaded: True\n" for logs, _ in ended.values())


def test_stop_sends_sigterm_to_the_running_runs(tmp_path):
    pool = workers.Pool(tmp_path / "logs", parallel=1, threads=1, main=E.main, target=job)
    pool.start(run("long", ["sleep"]))
    t0 = time.time()
    pool.stop()
    assert time.time() - t0 < 30 and not pool.running
