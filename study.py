"""A study from its spec: run it, read it, check that its committed verdict is what its records say.

    python study.py run studies/registered_variants.toml      # every sweep of the spec, seed by seed (resumable)
    python study.py run studies/lm_variants.toml --seed 44    # one seed of each sweep (a session at a time)
    python study.py read studies/registered_variants.toml     # results/<study>.verdict.json and .md, printed
    python study.py check                                      # every studies/*.toml: the committed verdicts are current
    python study.py table                                      # the registered studies' verdicts, one row per contrast

A spec (TOML, sae_harness/analysis/study.py says every key) names the study's sweeps (profile, arms,
worlds, seeds, eval seed, options) and its registered contrasts with the Holm family and the rule;
committing it before the runs is the registration. The verdict sentences are computed from the
rule, never typed. Bad input is one line and exit status 2.
"""

import argparse
import json
import sys
from pathlib import Path

from sae_harness.analysis import study as S
from sae_harness.run import cli
from sae_harness.run.rundir import UsageError, write_atomic, write_json_atomic

ROOT = Path(__file__).resolve().parent


def sweep_argv(sweep: S.Sweep, seed: int, results: Path, runs_dir: Path | None) -> list[str]:
    """sweep.py's command line for one seed of one of the study's sweeps."""
    argv = ["--name", sweep.name, "--profile", sweep.profile, "--variants", ",".join(sweep.arms)]
    argv += ["--seed", str(seed), "--seeds", "1", "--eval_seed", str(sweep.eval_seed), "--results", str(results)]
    argv += ["--grid", "data_seed=" + ",".join(map(str, sweep.worlds))] if sweep.worlds else []
    argv += ["--runs_dir", str(runs_dir)] if runs_dir else []
    for option, value in sweep.options.items():
        argv += [f"--{option}", str(value)]
    return argv


def run(spec: S.Study, seeds: list[int] | None, root: Path, runs_dir: Path | None, extra: list[str]) -> int:
    """Each sweep of the spec, seed by seed: each seed's arms in one call, so a session cut short leaves
    whole units on one machine; a sweep's results JSON accumulates its seeds (sweep.py)."""
    import sweep as sweep_py

    status = 0
    for sweep in spec.sweeps:
        for seed in [s for s in sweep.seeds if seeds is None or s in seeds]:
            argv = sweep_argv(sweep, seed, root / "results", runs_dir) + extra
            print(f"study {spec.name}: python sweep.py {' '.join(argv)}", flush=True)
            status = max(status, sweep_py.main(argv))
    return status


def verdict_paths(spec: S.Study, root: Path) -> tuple[Path, Path]:
    folder = root / "results"
    return folder / f"{spec.name}.verdict.json", folder / f"{spec.name}.verdict.md"


def read(spec: S.Study, root: Path, write: bool = True) -> tuple[dict, str]:
    result = S.read(spec, root)
    text = S.markdown(result, spec) + "\n"
    if write:
        json_path, md_path = verdict_paths(spec, root)
        write_json_atomic(json_path, result)
        write_atomic(md_path, lambda tmp: tmp.write_text(text))
    return result, text


def check(specs: list[Path], root: Path) -> int:
    """1 when a committed verdict differs from what its records give now (its text or its numbers)."""
    stale = []
    for path in specs:
        spec = S.load(path)
        result, text = read(spec, root, write=False)
        json_path, md_path = verdict_paths(spec, root)
        committed = json.loads(json_path.read_text()) if json_path.exists() else None
        if committed != json.loads(json.dumps(result)) or not md_path.exists() or md_path.read_text() != text:
            stale.append(spec.name)
    for name in stale:
        print(f"{name}: the committed verdict is not what its records give; run python study.py read studies/{name}.toml", file=sys.stderr)
    print(f"{len(specs) - len(stale)} of {len(specs)} studies current")
    return 1 if stale else 0


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        raise UsageError(f"{message} (see python study.py --help)")


def table(specs: list[Path], root: Path) -> str:
    """The registered contrasts of every spec, in the order their questions were registered: the
    table README.md and results/README.md quote (the tests hold them to it)."""
    studies = sorted((S.load(p) for p in specs), key=lambda spec: (spec.registered, spec.name))
    return S.summary_table([(spec, S.read(spec, root)) for spec in studies])


def main(argv: list[str]) -> int:
    parser = _Parser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("command", choices=("run", "read", "check", "table"))
    parser.add_argument("specs", nargs="*", type=Path, help="study spec files (check, table: every studies/*.toml when none)")
    parser.add_argument("--seed", type=int, action="append", help="run: only this seed of each sweep (repeatable)")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository whose results/ the study reads and writes")
    parser.add_argument("--runs_dir", type=Path, help="run: where the run directories go (sweep.py's default when not given)")
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "run":
        raise UsageError(f"unknown options {' '.join(extra)} (only run passes options on, to every sweep.py call)")
    every = args.specs or sorted((args.root / "studies").glob("*.toml"))
    if args.command == "check":
        return check(every, args.root)
    if args.command == "table":
        print(table(every, args.root))
        return 0
    if not args.specs:
        raise UsageError(f"study.py {args.command} needs a spec file, e.g. studies/registered_variants.toml")
    status = 0
    for path in args.specs:
        spec = S.load(path)
        if args.command == "run":
            status = max(status, run(spec, args.seed, args.root, args.runs_dir, extra))
        if args.command == "read" or status == 0:
            _, text = read(spec, args.root)
            print(text, end="")
    return status


if __name__ == "__main__":
    sys.exit(cli.run(main, sys.argv[1:], interrupted="interrupted; finished runs are kept: run the same command again to resume"))
