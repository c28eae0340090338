"""How long a bad command line waits for its refusal, against `python -c "import torch"` on the
same machine: the README promises an answer in about the time torch takes to import (target: at
most 1.5x). Each command runs `--repeats` times, alternating, and the medians are compared.

    python benchmarks/refusal.py              # prints a table and one JSON line
    python benchmarks/refusal.py --repeats 9

Run it on an idle machine: with 2 cores, a busy neighbour doubles import times.
"""

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
COMMANDS = {
    "import torch": [PY, "-c", "import torch"],
    "experiment.py --no_such_flag": [PY, "experiment.py", "--out_dir", "/tmp/refusal_run", "--no_such_flag"],
    "experiment.py --variant sideways": [PY, "experiment.py", "--out_dir", "/tmp/refusal_run", "--variant", "sideways"],
    "experiment.py --batch_size 0": [PY, "experiment.py", "--out_dir", "/tmp/refusal_run", "--batch_size", "0"],
    "experiment.py --out_dir /proc/nope/run": [PY, "experiment.py", "--out_dir", "/proc/nope/run"],
    "sweep.py --variants sideways": [PY, "sweep.py", "--variants", "sideways"],
    "sweep.py --parallel 0": [PY, "sweep.py", "--parallel", "0"],
    "plot.py no_such_run": [PY, "plot.py", "no_such_run"],
}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="runs of each command (alternating); medians compared")
    args = parser.parse_args(argv)
    seconds = {name: [] for name in COMMANDS}
    codes = {}
    for _ in range(args.repeats):
        for name, command in COMMANDS.items():
            t0 = time.perf_counter()
            codes[name] = subprocess.run(command, cwd=ROOT, capture_output=True, text=True).returncode
            seconds[name].append(time.perf_counter() - t0)
    base = statistics.median(seconds["import torch"])
    print(f"{cpu_name()}, {args.repeats} runs each, medians (target: a refusal within 1.5x of import torch)")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"  {name:42s} {median:6.2f} s  {median / base:5.2f}x  exit {codes[name]}")
    result = dict(
        cpu=cpu_name(),
        repeats=args.repeats,
        median_s={k: statistics.median(v) for k, v in seconds.items()},
        ratio={k: statistics.median(v) / base for k, v in seconds.items()},
        exit_codes=codes,
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
