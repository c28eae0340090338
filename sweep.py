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

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import simple_parsing

import experiment as E
from sae_harness.run import cli, planning
from sae_harness.run.checks import SEED_MAX, BadValue, check_fields, creatable_dir, existing_path, integer, seed_spec, word
from sae_harness.run.launch import launch
from sae_harness.run.planning import SweepError, arm_names, run_name
from sae_harness.run.rundir import Exit, describe_exit

ROOT = Path(__file__).resolve().parent


@dataclass
class SweepOptions:
    """sweep.py's own options; every other option goes to experiment.py (see python experiment.py --help)."""

    variants: str = field(default="none,static,static_matched,progressive", metadata=planning.arm_list(lambda: E))
    """comma list of the arms to run (experiment.ARMS), each optionally with options of its own after + (progressive+ortho_lambda_max=0.15); the default is the term against its controls"""
    seeds: str = field(default="5", metadata=seed_spec())
    """seeds per arm: a count N (seed .. seed+N-1) or a comma list"""
    seed: int = field(default=42, metadata=integer(0, SEED_MAX))
    """first seed when --seeds is a count"""
    grid: list[str] = simple_parsing.field(
        default_factory=list, metadata=planning.grid_items(lambda: E), action="extend", nargs="+", required=False
    )
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
    """runs at once: local processes, or the SLURM array's parallelism. With N > 1 locally each run gets cores/N torch threads, so its numbers differ from a lone run's in the last bits (its precision record says how many); on 2 cores, 2 gave 1.15x (synth) and 1.41x (synth-narrow) the runs an hour of 1 (docs/performance.md)"""
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


def plan(args, passthrough) -> list[planning.PlannedRun]:
    """Every (arm, seed) of the sweep, with its experiment config parsed and checked."""
    return planning.plan(E, args, passthrough)


def worlds_comparisons(records: list[dict]) -> dict:
    """Each arm over worlds against plain TopK at its grid point, and the schedule contrasts."""
    from sae_harness.analysis.sweeps import design_of, over_worlds

    return over_worlds(records, design_of(E))


def collect(args, runs, kept):
    """Aggregate each arm's seeds into <arm>/final_info.json, then write <results>/<name>.json, .md and
    .png. runs and kept: what planning.recorded returns (the runs to read, the results JSON's finished records)."""
    from sae_harness.analysis import sweeps
    from sae_harness.analysis.records import ResultsError
    from sae_harness.analysis.report import summaries_table
    from sae_harness.run.checks import ARM, EVAL, LOG, PLACE, SEED, fields_with
    from sae_harness.run.rundir import write_json_atomic
    from sae_harness.run.schema import aggregate

    records, arms, here, standing_in = planning.run_records(runs, kept, ROOT)
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
        result = sweeps.reading(args.name, records, arms, sweeps.design_of(E), args.baseline, against, ignore, command)
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
    everything, kept = planning.recorded(E, args, runs)  # the runs a collect reads: these and the JSON's other seeds
    states = {run.out: planning.run_status(run.out, run.cfg) for run in runs}
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
