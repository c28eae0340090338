"""Run an ablation: every arm (variant, optionally crossed with a grid of other options) at every
seed, each (arm, seed) as its own run directory and its own process: on one machine forked from a
process that imported experiment.py once, on a cluster a SLURM job array through submitit. Then results/<name>.json (every run's config,
seed and headline metrics; each arm's mean, std, n and per-seed values; each arm's difference
from `none` with Welch's t 95% interval) and results/<name>.png (the comparison figure).

    python sweep.py --variants none,static,static_matched,progressive --seeds 5
    python sweep.py --name lambda --variants progressive --grid ortho_lambda_max=0.015,0.05,0.15 --seeds 2
    python sweep.py --collect                     # only rebuild results/ablation.* from the runs

Any other option is an experiment.py option, passed to every run (--evals, --tokens, ...).
Resumable: a finished run is skipped (its recorded config must match), an interrupted one resumes
from its checkpoint and pending evals (experiment.py does that); rerun the same command.
A study run seed by seed (`--seed 44 --seeds 1`, one call per seed) accumulates in one results JSON:
a collect keeps the finished records results/<name>.json already holds for the sweep's arms, at the
seeds it did not plan and where a run's directory is not here (a new checkout, another machine).
Run directories: <runs_dir>/<name>/<arm>/seed_<s>/, each arm laid out as a multi-seed run of
experiment.py (its final_info.json aggregates the seeds), so plot.py reads an arm directory too.
"""

import contextlib
import dataclasses
import io
import itertools
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import simple_parsing

import experiment as E
from sae_harness.run import checks, cli
from sae_harness.run.checks import (
    ARM,
    EVAL,
    LOG,
    PLACE,
    SEED,
    SEED_MAX,
    BadValue,
    check_fields,
    creatable_dir,
    existing_path,
    fields_with,
    integer,
    seed_spec,
    word,
)
from sae_harness.run.launch import launch
from sae_harness.run.rundir import Exit, UsageError, describe_exit
from sae_harness.run.schema import arm_name

ROOT = Path(__file__).resolve().parent
SET_BY_SWEEP = ("out_dir", "seed", "seeds", "variant", "overwrite")


def arm_item(item: str) -> tuple[str, dict]:
    """(variant, {option: value}) of one --variants item: an arm of experiment.ARMS, optionally with
    options of its own after '+' (progressive+ortho_lambda_max=0.15). ValueError when it is neither."""
    variant, *options = item.split("+")
    pairs = [option.partition("=") for option in options]
    fields = {f.name for f in dataclasses.fields(E.Config)} - set(SET_BY_SWEEP)
    if variant not in E.ARMS or any(not eq or not value or name not in fields for name, eq, value in pairs):
        raise ValueError(item)
    return variant, {name: value for name, _, value in pairs}


def arm_list() -> dict:
    """A comma list of distinct arms, each an entry of experiment.ARMS (read when checked) with
    options of its own after '+' if any."""

    def ok(v) -> bool:
        items = checks.comma_list(v)
        try:
            [arm_item(item) for item in items]
        except ValueError:
            return False
        return bool(items) and len(set(items)) == len(items)

    reason = lambda v: f"must be a comma list of distinct arms from {', '.join(E.ARMS)}, each with options of its own after + if any"
    bad = (["sideways"], [""], ["none,none"], ["progressive+nope=1"], ["progressive+seed=1"])
    return checks.Check("a comma list of arms", ok, bad, reason=reason).metadata()


def grid_items() -> dict:
    """FIELD=V1,V2 items, FIELD an experiment option the sweep does not set itself."""

    def ok(items) -> bool:
        fields = {f.name for f in dataclasses.fields(E.Config)} - set(SET_BY_SWEEP)
        parts = [item.partition("=") for item in items]
        return all(option in fields and eq and checks.comma_list(values) for option, eq, values in parts)

    reason = lambda v: f"takes FIELD=V1,V2 with an experiment option other than {', '.join(SET_BY_SWEEP)}"
    return checks.Check("FIELD=V1,V2 items", ok, (["k"], ["k="], ["no_such_option=1,2"], ["seed=1,2"]), reason=reason).metadata()


def arm_names() -> dict:
    ok = lambda v: v == "" or all(item and not set(item) & set("/ \t") for item in v.split(","))
    return checks.Check("a comma list of the sweep's arm names", ok, ([","], ["a,,b"], ["a b"])).metadata()


def run_name() -> dict:
    ok = lambda v: bool(v.strip()) and v not in (".", "..") and "/" not in v and os.sep not in v
    return checks.Check("a name for a folder (no '/')", ok, ([""], ["a/b"], [".."])).metadata()


@dataclass
class SweepOptions:
    """sweep.py's own options; every other option goes to experiment.py (see python experiment.py --help)."""

    variants: str = field(default="none,static,static_matched,progressive", metadata=arm_list())
    """comma list of the arms to run (experiment.ARMS), each optionally with options of its own after + (progressive+ortho_lambda_max=0.15); the default is the term against its controls"""
    seeds: str = field(default="5", metadata=seed_spec())
    """seeds per arm: a count N (seed .. seed+N-1) or a comma list"""
    seed: int = field(default=42, metadata=integer(0, SEED_MAX))
    """first seed when --seeds is a count"""
    grid: list[str] = simple_parsing.field(default_factory=list, metadata=grid_items(), action="extend", nargs="+", required=False)
    """FIELD=V1,V2 (repeatable, or several after one --grid): also cross every arm with these values of an experiment option, all combinations"""
    name: str = field(default="ablation", metadata=run_name())
    """the sweep's name: <runs_dir>/<name>/ and <results>/<name>.json, .md, .png"""
    runs_dir: str = field(default=str(ROOT / "sweeps"), metadata=creatable_dir("--runs_dir=sweeps"))
    """where the run directories go"""
    results: str = field(default=str(ROOT / "results"), metadata=creatable_dir("--results=results"))
    """where <name>.json, .md and .png go"""
    executor: Literal["auto", "local", "slurm"] = "auto"
    """where the runs go: slurm (a job array through submitit) when srun is on PATH, else local (processes on this machine, forked from one that imported experiment.py once) (auto)"""
    parallel: int = field(default=1, metadata=integer(1))
    """runs at once: local processes, or the SLURM array's parallelism. With N > 1 locally each run gets cores/N torch threads (two synth runs at once on 2 cores: 1.9x one alone, docs/performance.md)"""
    timeout_min: int = field(default=240, metadata=integer(1))
    """minutes per job (SLURM requeues a timed-out job, which resumes)"""
    partition: str = field(default="", metadata=word())
    """SLURM partition"""
    gpus_per_node: int = field(default=0, metadata=integer(0))
    """GPUs per job (SLURM; the gemma-2-2b profile wants 1)"""
    cpus_per_task: int = field(default=0, metadata=integer(0))
    """CPUs per job (SLURM; 0 = the cluster's default)"""
    mem_gb: int = field(default=0, metadata=integer(0))
    """memory per job in GB (SLURM; 0 = the cluster's default)"""
    baseline: str = field(default="", metadata=existing_path(allow_fragment=True))
    """when this sweep has no plain none arm, compare with this baseline: an arm directory of another sweep (e.g. sweeps/ablation/none), or another sweep's results JSON with its per-run records (results/ablation_e4.json, its own baseline arm; results/x.json#arm for another arm)"""
    against: str = field(default="", metadata=arm_names())
    """comma list of this sweep's arms: every other arm is also compared with each, paired by seed (results JSON `against`, one more table each in <name>.md), e.g. matryoshka_progressive against matryoshka"""
    collect: bool = False
    """submit nothing: rebuild the results from the run directories (and results/<name>.json's records of runs whose directories are not here)"""
    dry_run: bool = False
    """print the runs and their state, submit nothing"""
    from_json: bool = False
    """with --collect: rebuild the comparisons (Welch and paired) from results/<name>.json's own per-run records, for a sweep whose run directories are gone; the figure is left as it is"""


class _Parser(simple_parsing.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        raise SweepError(f"{message} (see python sweep.py --help)")


def parse(argv) -> tuple[SweepOptions, list[str]]:
    """(the sweep's options, the experiment options to pass on to every run)."""
    parser = _Parser(
        description=__doc__,
        formatter_class=simple_parsing.SimpleHelpFormatter,
        add_option_string_dash_variants=simple_parsing.DashVariant.UNDERSCORE,
        add_config_path_arg=False,
        epilog="Every other option goes to experiment.py (see python experiment.py --help).",
    )
    parser.add_arguments(SweepOptions, dest="opts")
    parsed, passthrough = parser.parse_known_args(argv)
    try:
        check_fields(parsed.opts)
    except BadValue as e:
        raise SweepError(str(e)) from None
    return parsed.opts, passthrough


@dataclass
class PlannedRun:
    """One (arm, seed) of the sweep: its run directory, its experiment.py command line and config."""

    arm: str
    variant: str
    overrides: dict
    seed: int
    out: Path
    argv: list[str]
    cfg: "E.Config"


class SweepError(UsageError):
    """Bad input or an unusable run directory: one line, exit status 2."""


def arms_of(args) -> list[tuple[str, str, dict]]:
    """(arm name, variant, {option: value}) for every --variants item x grid combination; an item's
    own options (after '+') come first in its name and its overrides."""
    axes = []
    for item in args.grid:
        option, _, values = item.partition("=")
        axes.append([(option, v.strip()) for v in values.split(",") if v.strip()])
    arms = []
    for item, combo in itertools.product(checks.comma_list(args.variants), itertools.product(*axes)):
        variant, own = arm_item(item)
        overrides = own | dict(combo)
        arms.append((arm_name(variant, overrides), variant, overrides))
    return arms


def plan(args, passthrough) -> list[PlannedRun]:
    """Every (arm, seed) of the sweep, with its experiment config parsed and checked."""

    for option in passthrough:
        name = option.lstrip("-").split("=")[0].replace("-", "_")
        if option.startswith("--") and name in SET_BY_SWEEP:
            raise SweepError(f"--{name} is set by the sweep for each run; use --variants / --seeds / --seed / --name instead")
    try:
        seeds = cli.seed_list(E.Config(seeds=args.seeds, seed=args.seed))
    except UsageError as e:
        raise SweepError(str(e)) from None
    passthrough = passthrough + pinned_precision(args, passthrough)
    runs = []
    for arm, variant, overrides in arms_of(args):
        for seed in seeds:
            out = Path(args.runs_dir) / args.name / arm / f"seed_{seed}"
            argv = ["--out_dir", str(out), "--variant", variant, "--seed", str(seed), "--seeds", "1"]
            argv += [x for field, value in overrides.items() for x in (f"--{field}", value)] + passthrough
            try:
                with contextlib.redirect_stdout(io.StringIO()) if runs else contextlib.nullcontext():  # the profile line once
                    cfg = E.parse_args(argv)
                cli.validate(cfg)
            except UsageError as e:
                raise SweepError(f"experiment options: {e}") from None
            runs.append(PlannedRun(arm, variant, overrides, seed, out, argv, cfg))
    return runs


PINNED = ("llm_dtype", "sae_dtype")


def pinned_precision(args, passthrough) -> list[str]:
    """--llm_dtype / --sae_dtype for every job of the sweep, so that all its arms and seeds compute
    in one precision: `auto` rests on a speed probe, and under load it flips (a synth sweep got
    bfloat16 for some seeds and float32 for another). The value is what the sweep's finished runs
    recorded (in their directories, else in results/<name>.json), else auto resolved once, here. An option given, or gridded, is left alone."""
    from sae_harness.run import precision
    from sae_harness.run.rundir import read_info
    from sae_harness.run.schema import run_identity

    given = {o.lstrip("-").split("=")[0].replace("-", "_") for o in passthrough if o.startswith("--")}
    given |= {item.partition("=")[0] for item in args.grid}
    recorded = {}
    for path in sorted((Path(args.runs_dir) / args.name).glob("*/seed_*/final_info.json")):
        with contextlib.suppress(ValueError, OSError):
            config = run_identity(read_info(path.parent))["config"]
            recorded = {option: config[option] for option in PINNED if option in config}
            if recorded:
                break
    if not recorded:  # no run directory here: the finished runs results/<name>.json records (see recorded())
        from sae_harness.analysis.records import ResultsError, read_results, runs_of

        with contextlib.suppress(ResultsError):
            config = next((r.config for r in runs_of(read_results(Path(args.results) / f"{args.name}.json")) if r.state == "finished"), {})
            recorded = {option: config[option] for option in PINNED if option in config}
    pinned = []
    for option in PINNED:
        if option in given:
            continue
        if option not in recorded:
            with contextlib.redirect_stdout(io.StringIO()):
                cfg = E.parse_args(["--out_dir", "pinned", *passthrough])
            recorded[option] = precision.name(precision.choose(getattr(cfg, option), precision.device_of(cfg)))
        pinned += [f"--{option}", str(recorded[option])]
    if pinned:
        print("precision for every run of this sweep: " + " ".join(pinned))
    return pinned


def run_status(out: Path, cfg) -> str:
    """'new', 'resume' or 'finished'; a finished run recorded with other options is refused."""
    from sae_harness.run.rundir import RunDir

    run = RunDir(out, cfg.layer)
    try:
        state = run.state(cli.eval_names(cfg))
    except UsageError as e:
        raise SweepError(str(e)) from None
    if state == "finished" and (differ := run.config_differences(cfg)):
        raise SweepError(f"{out} holds a run with other options ({', '.join(differ[:3])}); use another --name, or move that directory away")
    return state


def shown(path) -> str:
    """A run directory as results/*.json records it: relative to the repository when inside it."""
    path = Path(path)
    try:
        return str(path.relative_to(ROOT)) if path.is_absolute() else str(path)
    except ValueError:
        return str(path)


def schedule_contrasts(variants) -> list[tuple[str, str]]:
    """(A, B) for every two arms of ARMS among variants that differ only in their schedules, A the
    one on the idea's schedules (weight and threshold over p): does the progression itself help, at
    the same term and dose? For the ARMS table: progressive - static_matched, progressive - static."""
    arms = {v: E.ARMS[v] for v in variants if v in E.ARMS and E.ARMS[v].term is not None}
    scheduled = [v for v, a in arms.items() if (a.weight, a.threshold) == ("schedule", "schedule")]
    return [
        (a, b)
        for a in scheduled
        for b, arm in arms.items()
        if b != a and dataclasses.replace(arm, weight="schedule", threshold="schedule") == arms[a]
    ]


def design():
    """What experiment.py says about the arms that the reading needs (analysis.sweeps.Design)."""
    from sae_harness.analysis.sweeps import Design

    return Design(schedule_contrasts=schedule_contrasts(E.ARMS), arm_options=frozenset(fields_with(E.Config, ARM)))


def worlds_comparisons(records: list[dict]) -> dict:
    """Each arm over worlds against plain TopK at its grid point, and the schedule contrasts."""
    from sae_harness.analysis.sweeps import over_worlds

    return over_worlds(records, design())


def recorded(args, runs) -> tuple[list[PlannedRun], dict]:
    """The runs a collect reads, and {(arm, seed): record} of the finished runs results/<name>.json
    holds already: the planned runs, plus the planned arms at every further seed that JSON records
    (a study run seed by seed, one call per seed, accumulates). A record of a run whose directory is
    not here stands for it; one recorded with other options than this sweep's is refused."""
    from sae_harness.analysis.records import ResultsError, read_results, runs_of
    from sae_harness.run.rundir import differing_options

    path = Path(args.results) / f"{args.name}.json"
    try:
        previous = runs_of(read_results(path)) if path.exists() else []
    except ResultsError as e:
        raise SweepError(f"{e}; move it away or use another --name") from None
    kept = {(r.arm, r.seed): r.to_json() for r in previous if r.state == "finished"}
    first = {}
    for run in runs:
        first.setdefault(run.arm, run)
    planned = {(run.arm, run.seed) for run in runs}
    extra = []
    for arm, seed in sorted(k for k in kept if k[0] in first and k not in planned):
        run = first[arm]
        out = run.out.parent / f"seed_{seed}"
        argv = [*run.argv]
        argv[argv.index("--out_dir") + 1], argv[argv.index("--seed") + 1] = str(out), str(seed)
        with contextlib.redirect_stdout(io.StringIO()):
            extra.append(dataclasses.replace(run, seed=seed, out=out, argv=argv, cfg=E.parse_args(argv)))
    order = list(first)
    runs = sorted([*runs, *extra], key=lambda run: (order.index(run.arm), run.seed))
    for run in runs:
        if (record := kept.get((run.arm, run.seed))) and not (run.out / "final_info.json").exists():
            if differ := differing_options(record["config"], run.cfg):
                raise SweepError(
                    f"{path} records {run.arm} seed {run.seed} with other options ({', '.join(differ[:3])}); "
                    "use another --name, or move that file away"
                )
    return runs, kept


def collect(args, runs, kept):
    """Aggregate each arm's seeds into <arm>/final_info.json, then write <results>/<name>.json, .md and
    .png. runs and kept: what recorded() returns (the runs to read, the results JSON's finished records)."""
    from sae_harness.analysis import sweeps
    from sae_harness.analysis.records import ResultsError, RunRecord
    from sae_harness.analysis.report import summaries_table
    from sae_harness.run.rundir import comparable_config, read_info, write_json_atomic
    from sae_harness.run.schema import aggregate, summarize, training_key

    arms, records, standing_in, here = {}, [], [], {}
    for run in runs:
        arms.setdefault(run.arm, dict(variant=run.variant, overrides=run.overrides, run_dir=shown(run.out.parent)))
        if not (run.out / "final_info.json").exists() and (run.arm, run.seed) in kept:  # its directory is not here: its record stands in
            records.append(kept[run.arm, run.seed])
            standing_in.append(f"{run.arm} seed {run.seed}")
            continue
        info = read_info(run.out) if (run.out / "final_info.json").exists() else {}
        here.setdefault(run.arm, {})[run.seed] = info
        block = info.get(training_key(run.cfg.layer), {})
        trained = block.get("final_info") or {}
        record = RunRecord(
            arm=run.arm,
            variant=run.variant,
            overrides=run.overrides,
            world=run.cfg.data_seed,
            seed=run.seed,
            run_dir=shown(run.out),
            state=run_status(run.out, run.cfg) if run.out.exists() else "new",
            config=block.get("config") or comparable_config(run.cfg),
            summary=summarize(info),
            dose={k: v for k, v in trained.items() if k.startswith("ortho_") and k != "ortho_impl"},
            seconds=trained.get("seconds"),  # training only: the cost, on
            cpu=(trained.get("precision") or {}).get("cpu_model"),  # this machine
        )
        records.append(record.to_json())
    if standing_in:
        print(
            f"{len(standing_in)} runs read from {Path(args.results) / f'{args.name}.json'} (their directories are not here): {', '.join(standing_in)}"
        )
    for arm, infos in here.items():  # the runs whose directories are here: the arm's own final_info.json
        if (ROOT / arms[arm]["run_dir"]).is_dir():
            write_json_atomic(ROOT / arms[arm]["run_dir"] / "final_info.json", aggregate(infos, {s: f"seed_{s}" for s in infos}))
    command = "python sweep.py " + " ".join(a for a in sys.argv[1:] if a != "--collect") if sys.argv[0].endswith("sweep.py") else None
    ignore = fields_with(E.Config, PLACE, SEED, EVAL, LOG, ARM)
    against = [a for a in args.against.split(",") if a]
    try:
        result = sweeps.reading(args.name, records, arms, design(), args.baseline, against, ignore, command)
    except ResultsError as e:
        raise SweepError(str(e)) from None
    if result.get("baseline_config_differences"):
        print(f"note: the baseline's training config differs from this sweep's in {', '.join(result['baseline_config_differences'])}")
    path = sweeps.write(Path(args.results), result)
    sys.stdout.flush()
    drawn = subprocess.run([sys.executable, str(ROOT / "plot.py"), str(path)], capture_output=True, text=True)
    figure = path.with_suffix(".png") if drawn.returncode == 0 else f"no figure ({drawn.stderr.strip().splitlines()[-1:]})"
    print(f"wrote {path}, {args.name}.md (its Markdown table) and {figure}")
    print(summaries_table([(arm, entry["summary"]) for arm, entry in result["arms"].items()], result["baseline"]))
    return result


def recompare_from_json(args) -> dict:
    """--collect --from_json: each arm's comparisons with the baseline rebuilt inside results/<name>.json
    from its own per-run records, and its table."""
    from sae_harness.analysis import sweeps
    from sae_harness.analysis.records import ResultsError, read_results

    path = Path(args.results) / f"{args.name}.json"
    try:
        result = sweeps.recompare(read_results(path))
    except ResultsError as e:
        raise SweepError(f"--from_json: {e}") from None
    sweeps.write(path.parent, result, args.name)
    print(f"rebuilt the comparisons in {path} and {path.with_suffix('.md')} from its per-run records")
    return result


def main(argv) -> int:
    args, passthrough = parse(argv)
    if args.from_json:
        if not args.collect:
            raise SweepError("--from_json goes with --collect")
        recompare_from_json(args)
        return 0
    runs = plan(args, passthrough)
    everything, kept = recorded(args, runs)  # the runs a collect reads: these and the JSON's other seeds
    states = {run.out: run_status(run.out, run.cfg) for run in runs}
    for run in runs:  # finished in a checkout or on a machine whose run directories are not here
        if states[run.out] == "new" and (run.arm, run.seed) in kept:
            states[run.out] = f"finished, read from {Path(args.results) / f'{args.name}.json'} (its directory is not here)"
    todo = [run for run in runs if not states[run.out].startswith("finished")]
    print(f"sweep {args.name}: {len(runs)} runs, {len(runs) - len(todo)} finished, {len(todo)} to run")
    for run in runs:
        print(f"  {run.arm} seed {run.seed}: {states[run.out]} ({run.out})")
    if args.dry_run:
        return 0
    codes = launch(args, todo, E.main) if todo and not args.collect else {}
    collect(args, everything, kept)
    failed = [f"{out} ({describe_exit(code)})" for out, code in codes.items() if code != Exit.DONE]
    if failed:
        print(f"error: {len(failed)} runs did not finish: {'; '.join(failed)}. Rerun the same command to resume them.", file=sys.stderr)
        return Exit.EVAL_FAILED
    return Exit.DONE


def cli_main(argv) -> int:
    """main(argv) with bad input as one line on stderr and exit status 2, an interrupt as 130."""
    return cli.run(main, argv, interrupted="interrupted; finished runs are kept and running ones resume: run the same command again")


if __name__ == "__main__":
    sys.exit(cli_main(sys.argv[1:]))
