"""benchmarks/bench.py's step sampling for --arms --arm_steps: which steps of a schedule it times."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from bench import sampled_steps  # noqa: E402


def test_sampled_steps_spans_the_schedule_in_whole_blocks():
    steps = sampled_steps(2340, 200)
    assert len(steps) == len(set(steps)) == 200 and steps == sorted(steps)
    assert steps[0] == 0 and steps[-1] == 2339  # the first and the last step are both timed
    starts = steps[::20]
    assert all(steps[i : i + 20] == list(range(s, s + 20)) for i, s in zip(range(0, 200, 20), starts))
    gaps = {b - a for a, b in zip(starts, starts[1:])}
    assert max(gaps) - min(gaps) <= 1  # evenly spread
    # a term computed every 5th step runs on exactly a fifth of the timed steps, as in a whole run
    assert sum(s % 5 == 0 for s in steps) == 40


def test_sampled_steps_whole_run_when_not_asked_or_too_many():
    assert sampled_steps(100, 0) == list(range(100))
    assert sampled_steps(100, 500) == list(range(100))
    assert sampled_steps(100, 5) == list(range(20))  # fewer than a block: one block from the start
    assert sampled_steps(10, 5) == list(range(10))  # a schedule shorter than a block: no step past its end
