"""A sweep's runs before and after they run: its arms (--variants crossed with --grid), each (arm,
seed) planned with its experiment command line and config, its state, one precision pinned for all
of them, and the record of each finished run for the reading (analysis/sweeps.py).

What the idea is comes in as `idea`, the experiment module (experiment.py): its Config, ARMS and
parse_args. The package never imports experiment.py; sweep.py hands it in."""

import contextlib
import dataclasses
import io
import itertools
import os
from dataclasses import dataclass
from pathlib import Path

from sae_harness.run import checks, cli
from sae_harness.run.rundir import UsageError

SET_BY_SWEEP = ("out_dir", "seed", "seeds", "variant", "overwrite")
"""Experiment options the sweep sets for each run itself."""
PINNED = ("llm_dtype", "sae_dtype")
"""Options every run of a sweep gets the same value of (pinned_precision)."""


class SweepError(UsageError):
    """Bad input or an unusable run directory: one line, exit status 2."""


@dataclass
class PlannedRun:
    """One (arm, seed) of the sweep: its run directory, its experiment.py command line and config."""

    arm: str
    variant: str
    overrides: dict
    seed: int
    out: Path
    argv: list[str]
    cfg: object


def swept_fields(idea) -> set[str]:
    """The experiment options an arm or a grid may set: all but those the sweep sets itself."""
    return {f.name for f in dataclasses.fields(idea.Config)} - set(SET_BY_SWEEP)


def arm_item(idea, item: str) -> tuple[str, dict]:
    """(variant, {option: value}) of one --variants item: an arm of idea.ARMS, optionally with
    options of its own after '+' (progressive+ortho_lambda_max=0.15). ValueError when it is neither."""
    variant, *options = item.split("+")
    pairs = [option.partition("=") for option in options]
    if variant not in idea.ARMS or any(not eq or not value or name not in swept_fields(idea) for name, eq, value in pairs):
        raise ValueError(item)
    return variant, {name: value for name, _, value in pairs}


# The checks of the sweep's own options (metadata of sweep.SweepOptions' fields; checks.py).


def arm_list(idea) -> dict:
    """A comma list of distinct arms, each an entry of idea().ARMS with options of its own after '+'
    if any. idea: a function returning the experiment module, called when a value is checked."""

    def ok(v) -> bool:
        items = checks.comma_list(v)
        try:
            [arm_item(idea(), item) for item in items]
        except ValueError:
            return False
        return bool(items) and len(set(items)) == len(items)

    reason = lambda v: f"must be a comma list of distinct arms from {', '.join(idea().ARMS)}, each with options of its own after + if any"
    bad = (["sideways"], [""], ["none,none"], ["progressive+nope=1"], ["progressive+seed=1"])
    return checks.Check("a comma list of arms", ok, bad, reason=reason).metadata()


def grid_items(idea) -> dict:
    """FIELD=V1,V2 items, FIELD an option of idea() (as arm_list) that the sweep does not set itself."""

    def ok(items) -> bool:
        parts = [item.partition("=") for item in items]
        return all(option in swept_fields(idea()) and eq and checks.comma_list(values) for option, eq, values in parts)

    reason = lambda v: f"takes FIELD=V1,V2 with an experiment option other than {', '.join(SET_BY_SWEEP)}"
    return checks.Check("FIELD=V1,V2 items", ok, (["k"], ["k="], ["no_such_option=1,2"], ["seed=1,2"]), reason=reason).metadata()


def arm_names() -> dict:
    ok = lambda v: v == "" or all(item and not set(item) & set("/ \t") for item in v.split(","))
    return checks.Check("a comma list of the sweep's arm names", ok, ([","], ["a,,b"], ["a b"])).metadata()


def run_name() -> dict:
    ok = lambda v: bool(v.strip()) and v not in (".", "..") and "/" not in v and os.sep not in v
    return checks.Check("a name for a folder (no '/')", ok, ([""], ["a/b"], [".."])).metadata()


# Planning


def arms_of(idea, args) -> list[tuple[str, str, dict]]:
    """(arm name, variant, {option: value}) for every --variants item x grid combination; an item's
    own options (after '+') come first in its name and its overrides."""
    from sae_harness.run.schema import arm_name

    axes = []
    for item in args.grid:
        option, _, values = item.partition("=")
        axes.append([(option, v.strip()) for v in values.split(",") if v.strip()])
    arms = []
    for item, combo in itertools.product(checks.comma_list(args.variants), itertools.product(*axes)):
        variant, own = arm_item(idea, item)
        overrides = own | dict(combo)
        arms.append((arm_name(variant, overrides), variant, overrides))
    return arms


def parsed(idea, argv: list[str], quiet: bool = True):
    """idea.parse_args(argv), the profile's line silenced unless not quiet."""
    with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
        return idea.parse_args(argv)


def plan(idea, args, passthrough) -> list[PlannedRun]:
    """Every (arm, seed) of the sweep, with its experiment config parsed and checked."""
    for option in passthrough:
        name = option.lstrip("-").split("=")[0].replace("-", "_")
        if option.startswith("--") and name in SET_BY_SWEEP:
            raise SweepError(f"--{name} is set by the sweep for each run; use --variants / --seeds / --seed / --name instead")
    try:
        seeds = cli.seed_list(idea.Config(seeds=args.seeds, seed=args.seed))
    except UsageError as e:
        raise SweepError(str(e)) from None
    passthrough = passthrough + pinned_precision(idea, args, passthrough)
    runs = []
    for arm, variant, overrides in arms_of(idea, args):
        for seed in seeds:
            out = Path(args.runs_dir) / args.name / arm / f"seed_{seed}"
            argv = ["--out_dir", str(out), "--variant", variant, "--seed", str(seed), "--seeds", "1"]
            argv += [x for field, value in overrides.items() for x in (f"--{field}", value)] + passthrough
            try:
                cfg = parsed(idea, argv, quiet=bool(runs))  # the profile line once
                cli.validate(cfg)
            except UsageError as e:
                raise SweepError(f"experiment options: {e}") from None
            runs.append(PlannedRun(arm, variant, overrides, seed, out, argv, cfg))
    return runs


def pinned_precision(idea, args, passthrough) -> list[str]:
    """--llm_dtype / --sae_dtype for every job of the sweep, so that all its arms and seeds compute
    in one precision: `auto` rests on a speed probe, and under load it flips (a synth sweep got
    bfloat16 for some seeds and float32 for another). The value is what the sweep's finished runs
    recorded (in their directories, else in results/<name>.json), else auto resolved once, here. An
    option given, or gridded, is left alone."""
    from sae_harness.analysis.records import ResultsError, read_results, runs_of
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
    if not recorded:  # no run directory here: the finished runs results/<name>.json records
        with contextlib.suppress(ResultsError):
            config = next((r.config for r in runs_of(read_results(Path(args.results) / f"{args.name}.json")) if r.state == "finished"), {})
            recorded = {option: config[option] for option in PINNED if option in config}
    pinned = []
    for option in PINNED:
        if option in given:
            continue
        if option not in recorded:
            cfg = parsed(idea, ["--out_dir", "pinned", *passthrough])
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


def shown(path, root: Path) -> str:
    """A run directory as results/*.json records it: relative to the repository (root) when inside it."""
    path = Path(path)
    try:
        return str(path.relative_to(root)) if path.is_absolute() else str(path)
    except ValueError:
        return str(path)


# After the runs


def recorded(idea, args, runs) -> tuple[list[PlannedRun], dict]:
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
        extra.append(dataclasses.replace(run, seed=seed, out=out, argv=argv, cfg=parsed(idea, argv)))
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


def run_records(runs, kept: dict, root: Path) -> tuple[list[dict], dict, dict, list[str]]:
    """(records, arms, here, standing_in) of a collect: each run's record (analysis/records.RunRecord,
    as JSON) read from its directory, or the results JSON's record where the directory is not here;
    {arm: its variant, overrides and directory}; {arm: {seed: final_info}} of the runs whose
    directories are here; the runs whose records stood in."""
    from sae_harness.analysis.records import RunRecord
    from sae_harness.run.rundir import comparable_config, read_info
    from sae_harness.run.schema import summarize, training_key

    arms, records, standing_in, here = {}, [], [], {}
    for run in runs:
        arms.setdefault(run.arm, dict(variant=run.variant, overrides=run.overrides, run_dir=shown(run.out.parent, root)))
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
            run_dir=shown(run.out, root),
            state=run_status(run.out, run.cfg) if run.out.exists() else "new",
            config=block.get("config") or comparable_config(run.cfg),
            summary=summarize(info),
            dose={k: v for k, v in trained.items() if k.startswith("ortho_") and k != "ortho_impl"},
            seconds=trained.get("seconds"),  # training only: the cost, on
            cpu=(trained.get("precision") or {}).get("cpu_model"),  # this machine
        )
        records.append(record.to_json())
    return records, arms, here, standing_in
