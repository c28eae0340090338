"""How torch's CPU threads wait between parallel regions: chosen so that two heavy processes on
one small CPU (a run beside the tests, two runs a user started) share it instead of fighting.

torch here runs its CPU work (ATen's parallel loops, MKL's and oneDNN's kernels) on one GNU
OpenMP pool (libgomp) of one thread per core. Between parallel regions libgomp's threads spin
(about 300,000 polls, a few milliseconds) before they sleep, so a process keeps every core busy
even while it waits. Alone, the spinning saves a wake-up; beside another torch process, one
process's spinning threads hold the cores that the other's working threads need, and each
waits out the other's spins at every barrier: two at once on 2 cores each ran 6-10x slower than
alone. With the passive wait policy a thread that waits sleeps at once (a futex), so two
processes cost each other about their share of the cores. docs/performance.md ("Sharing the
CPU") has the measurement and `python benchmarks/fast_loop.py sharing` repeats it.

libgomp reads its policy once, when torch loads it: policy() must reach os.environ before the
first `import torch` of the process (experiment.py and tests/conftest.py do so first thing);
processes started from there inherit it. This module imports nothing heavy for that reason.
"""

import os

POLICY = {"OMP_WAIT_POLICY": "PASSIVE"}
"""What a process gets unless it chose a wait policy of its own."""
KNOBS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
"""The variables that set how OpenMP threads wait (the standard one, libgomp's spin count, and
Intel OpenMP's block time): one of them set by the user means a policy chosen, and it stands."""


def policy(environ=os.environ) -> dict:
    """The variables to add to environ: POLICY, or nothing where the user set one of KNOBS."""
    return {} if any(knob in environ for knob in KNOBS) else dict(POLICY)
