"""sae_harness.run.threads: the OpenMP wait policy each process gets unless it chose one, in its
environment before torch loads (libgomp reads it only then)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sae_harness.run import threads

ROOT = Path(__file__).resolve().parents[1]


def test_the_policy_applies_unless_a_wait_policy_was_chosen():
    assert threads.policy({}) == threads.POLICY == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert threads.policy({"PATH": "/bin", "OMP_NUM_THREADS": "1"}) == threads.POLICY  # a thread count is not a wait policy
    for knob in threads.KNOBS:
        assert threads.policy({knob: "ACTIVE"}) == {}, knob
    assert threads.policy({}) is not threads.POLICY  # a copy: a caller's edit cannot change the next process's


# What torch sees: the environment at the moment `import torch` first runs, as experiment.py is imported.
SPY = """
import os, sys
seen = []
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.append({k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")})
sys.meta_path.insert(0, Spy())
import experiment
print(seen[0])
"""


@pytest.mark.slow
@pytest.mark.parametrize("chosen", [{}, {"GOMP_SPINCOUNT": "1000"}], ids=["unset", "chosen"])
def test_experiment_sets_the_policy_before_torch_loads(chosen):
    env = {k: v for k, v in os.environ.items() if k not in threads.KNOBS} | chosen
    done = subprocess.run([sys.executable, "-c", SPY], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    expected = {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None} | (chosen or threads.POLICY)
    assert done.stdout.strip().splitlines()[-1] == str(expected)
