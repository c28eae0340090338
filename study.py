"""A study from its spec: run it, read it, check that its committed verdict is what its records say.

    python study.py run studies/registered_variants.toml      # every sweep of the spec, seed by seed (resumable)
    python study.py run studies/lm_variants.toml --seed 44    # one seed of each sweep (a session at a time)
    python study.py read studies/registered_variants.toml     # results/<study>.verdict.json and .md, printed
    python study.py check                                      # every studies/*.toml: the committed verdicts are current
    python study.py table                                      # the registered studies' verdicts, one row per contrast
    python study.py frontier --curves C.json --arms A.json --out results/A_frontier    # each arm raw and at plain TopK's x, over worlds
    python study.py matched --curves C.json --arms A.json --out results/A_matched      # the same per seed
    python study.py mechanism --results A.json --arms none,progressive --out results/A_mechanism

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
from sae_harness.analysis.records import ResultsError, read_results
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


# ---------------------------------------------------------------- readings over several sweeps


def frontier(argv: list[str]) -> int:
    """python study.py frontier: each arm of sweeps over worlds raw and at plain TopK's x (sae_harness/analysis/frontier.py)."""
    import plot
    from sae_harness.analysis import frontier as F

    parser = _Parser(prog="study.py frontier", description=F.__doc__.split("\n\n")[0])
    parser.add_argument(
        "--curves", required=True, nargs="+", help="results JSON(s) of plain TopK over training lengths, gridded over data_seed"
    )
    parser.add_argument(
        "--arms", required=True, nargs="+", help="results JSON(s) of sweeps over the same worlds (sweep.py --grid data_seed=...)"
    )
    parser.add_argument("--x", default=F.X)
    parser.add_argument("--ys", default=",".join(F.YS), help="comma list of y metrics")
    parser.add_argument(
        "--against", default="", help="comma list of arms to contrast every other arm with (e.g. progressive, for a screen of its variants)"
    )
    parser.add_argument("--out", required=True, help="writes <out>.json, <out>.md and <out>.png")
    args = parser.parse_args(argv)
    try:
        curve_runs = [run for path in args.curves for run in read_results(path)["runs"]]
        sweeps = [read_results(path) for path in args.arms]
        arm_runs = F.merged_runs(sweeps)
        ys = [y for y in args.ys.split(",") if y]
        unknown = [m for m in (args.x, *ys) if m not in F.DIRECTION]
        if unknown:
            raise ValueError(f"unknown metric {unknown[0]!r}")
        if any("world" not in run for run in curve_runs):
            raise ValueError("a curve run without a world: these are not sweeps over data_seed")
        against = [a for a in args.against.split(",") if a]
        result = F.reading(curve_runs, arm_runs, args.x, ys, against) | dict(curves_file=args.curves, arms_file=args.arms)
    except (ResultsError, ValueError, KeyError) as e:
        print(f"frontier: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(F.markdown(result) + "\n")
    plot.plot_frontier(result, out.with_suffix(".png"), f"{' + '.join(str(s.get('name')) for s in sweeps)}: {sweeps[0].get('profile')}")
    print(F.markdown(result))
    print(f"wrote {out.with_suffix('.json')}, .md and .png")
    return 0


def matched(argv: list[str]) -> int:
    """python study.py matched: each arm per seed at plain TopK's y for its x (sae_harness/analysis/matched.py)."""
    import plot
    from sae_harness.analysis import matched as M

    parser = _Parser(prog="study.py matched", description=M.__doc__.split("\n\n")[0])
    parser.add_argument(
        "--curves",
        required=True,
        nargs="+",
        help="results JSON of plain TopK over training lengths (one sweep or several, merged; file.json#arm: that arm only)",
    )
    parser.add_argument("--arms", required=True, help="results JSON of the arms (a sweep with a none arm at the default length)")
    parser.add_argument("--x", default="synth_explained_variance")
    parser.add_argument("--y", default="synth_absorption")
    parser.add_argument("--out", required=True, help="writes <out>.json and <out>.png")
    args = parser.parse_args(argv)
    runs = []  # the curve sweeps' runs, merged
    try:
        for spec in args.curves:
            path, _, only = spec.partition("#")
            chosen = [run for run in read_results(path)["runs"] if not only or run["arm"] == only]
            if not chosen:
                raise ValueError(f"{spec}: no runs{f' of arm {only!r}' if only else ''}")
            runs += chosen
        arms_result = read_results(args.arms)
    except (ResultsError, ValueError, KeyError) as e:
        print(f"matched: {e}", file=sys.stderr)
        return 2
    result = M.reading(dict(runs=runs), arms_result, args.x, args.y) | dict(curves_file=args.curves, arms_file=args.arms)
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    plot.plot_matched(result, out.with_suffix(".png"))
    for arm, entry in result["arms"].items():
        print(
            M.arm_label(arm, entry["paired"]) + (f"; outside the curve: seeds {entry['outside_curve']}" if entry["outside_curve"] else "")
        )
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return 0


def mechanism(argv: list[str]) -> int:
    """python study.py mechanism: where the term acts against the true hierarchy, over a sweep's runs (sae_harness/analysis/mechanism.py)."""
    import plot
    from sae_harness.analysis import mechanism as K

    parser = _Parser(prog="study.py mechanism", description=K.__doc__.split("\n\n")[0])
    parser.add_argument("--results", required=True, help="results JSON of a sweep over worlds on a synth profile")
    parser.add_argument("--arms", default="none,progressive", help="comma list of arm names without the world (none first)")
    parser.add_argument("--out", required=True, help="writes <out>.json, <out>.md and <out>.png")
    args = parser.parse_args(argv)
    try:
        path = Path(args.results)
        result = read_results(path)
        arms = [a for a in args.arms.split(",") if a]
        by_arm = K.runs_of(result, arms, path.resolve().parent.parent)
        missing = [a for a in arms if a not in by_arm]
        if missing:
            raise ValueError(f"no training logs for arm {missing[0]!r} (its runs' directories are under the sweep's runs_dir)")
        by_arm = {a: by_arm[a] for a in arms}
        if not any(row.get(K.MECHANISM[0][0]) is not None for runs in by_arm.values() for _, _, log in runs for row in log):
            raise ValueError("the training logs carry no mechanism: not a synth profile")
    except (ResultsError, ValueError, KeyError) as e:
        print(f"mechanism: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    read = K.reading(by_arm) | dict(results_file=args.results, kind="mechanism")
    out.with_suffix(".json").write_text(json.dumps(read, indent=1))
    out.with_suffix(".md").write_text(K.markdown(read) + "\n")
    title = f"{result.get('name')} ({result.get('profile')}): where the term acts, against the true hierarchy"
    plot.plot_mechanism_runs(by_arm, out.with_suffix(".png"), title)
    print(K.markdown(read))
    print(f"wrote {out.with_suffix('.json')}, .md and .png")
    return 0


READINGS = {"frontier": frontier, "matched": matched, "mechanism": mechanism}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        raise UsageError(f"{message} (see python study.py --help)")


def table(specs: list[Path], root: Path) -> str:
    """The registered contrasts of every spec, in the order their questions were registered: the
    table README.md and results/README.md quote (the tests hold them to it)."""
    studies = sorted((spec for p in specs if (spec := S.load(p)).rule.kind == "interval"), key=lambda spec: (spec.registered, spec.name))
    return S.summary_table([(spec, S.read(spec, root)) for spec in studies])


def main(argv: list[str]) -> int:
    if argv and argv[0] in READINGS:
        return READINGS[argv[0]](argv[1:])
    parser = _Parser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("command", choices=("run", "read", "check", "table", *READINGS))
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
