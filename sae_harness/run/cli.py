"""The command line, generated from experiment.Config by simple_parsing: every field is an option
(`--field value` or `--field=value`), its docstring is the help, Literal fields take only their
choices. Profiles fill the fields left at None; bad input is one line and exit status 2."""

import contextlib
import dataclasses
import re
import signal
import sys

import simple_parsing

from sae_harness.run.checks import SEED_MAX, BadValue, check_fields, names_in, seeds_from
from sae_harness.run.profiles import AUTO, EMBEDDED, GEMMA2
from sae_harness.run.rundir import Exit, Interrupted, OutOfSpace, TrainingFailed, UsageError, comparable_config, disk_full

KNOWN_LAYERS = {"google/gemma-3-270m": 18, "google/gemma-2-2b": 26}


class _Parser(simple_parsing.ArgumentParser):
    def error(self, message):  # argparse prints usage and exits; we want one line
        literal = re.search(r"invalid typing.Literal\[(.*)\] value: ('.*')", message)
        if literal:  # an Optional[Literal] field: say it as argparse says choices
            message = f"{message.split(':')[0]}: invalid choice: {literal.group(2)} (choose from {literal.group(1)})"
        raise UsageError(f"{message} (see python experiment.py --help)")


def parse_config(config_cls, profiles: dict, argv: list[str], cuda_available: bool, doc: str = ""):
    """Config from argv, then the profile's values for every field still None. Prints the profile
    and the values it set."""
    parser = _Parser(
        description=doc,
        formatter_class=simple_parsing.SimpleHelpFormatter,
        add_option_string_dash_variants=simple_parsing.DashVariant.UNDERSCORE,
        add_config_path_arg=False,
    )
    parser.add_arguments(config_cls, dest="cfg")
    cfg = parser.parse_args(argv).cfg
    refuse_bad_fields(cfg)  # what was given, before the profile says anything
    return apply_profile(cfg, profiles, cuda_available, verbose=True)


def apply_profile(cfg, profiles: dict, cuda_available: bool, verbose: bool = False):
    """cfg with profile 'auto' resolved and every None field taken from the profile table."""
    profile = cfg.profile
    cfg_was_auto = profile == AUTO
    if cfg_was_auto:
        profile = GEMMA2 if cuda_available else EMBEDDED
    if profile not in profiles:
        raise UsageError(f"unknown profile {profile!r}: choose auto, {', '.join(profiles)}")
    table = profiles[profile]
    set_by_profile = {name: value for name, value in table.items() if getattr(cfg, name) is None}
    cfg = dataclasses.replace(cfg, profile=profile, **set_by_profile)
    missing = [f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) is None]
    if missing:
        raise UsageError(f"profile {profile} sets no value for {', '.join(missing)}: add it to PROFILES or pass --{missing[0]}")
    if verbose:
        why = f" (auto: CUDA {'found' if cuda_available else 'not found'})" if cfg_was_auto else ""
        shown = ", ".join(f"{k}={v}" for k, v in set_by_profile.items()) or "nothing (every field was given)"
        print(f"profile: {profile}{why}; it set {shown}")
    return cfg


def profile_defaults(config_cls, profiles: dict, profile: str) -> dict:
    """The config a run of this profile records when nothing is overridden, less where it is kept
    (the PLACE fields): what a run's notes entry lists its differences from."""
    return comparable_config(apply_profile(config_cls(profile=profile), profiles, cuda_available=False))


def resolve_device(cfg):
    """The torch device the run asks for (precision.device_of); --device cuda with no GPU visible
    is bad input."""
    import torch

    from sae_harness.run import precision

    device = precision.device_of(cfg)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            "--device cuda (the gemma-2-2b profile) needs a CUDA GPU; none is visible here (use --profile gemma-3-270m on CPU)"
        )
    return device


def refuse_bad_fields(cfg) -> None:
    try:
        check_fields(cfg)
    except BadValue as e:
        raise UsageError(str(e)) from None


def eval_names(cfg) -> list[str]:
    return names_in(cfg.evals)


def seed_list(cfg) -> list[int]:
    """The seeds of a run from --seeds: a count N gives seed, seed+1, .., seed+N-1; a comma list
    (42,43 or 7,) gives those seeds."""
    try:
        return seeds_from(cfg.seeds, cfg.seed)
    except ValueError:
        raise UsageError(f"--seeds takes a count (5) or a comma list of distinct seeds (42,43), got {cfg.seeds!r}") from None


def validate(cfg) -> None:
    """Reject an impossible config with one sentence, before anything heavy loads: each field
    against its own declaration (checks.py, beside the field in Config), then the constraints
    between fields, here and nowhere else."""
    refuse_bad_fields(cfg)
    n_layers = KNOWN_LAYERS.get(cfg.lm_name)
    evals, synthetic = set(eval_names(cfg)), cfg.text_source == "synth"
    checks = [
        (cfg.k > cfg.dict_size, f"--k ({cfg.k}) must be at most --dict_size ({cfg.dict_size})"),
        (cfg.tokens < cfg.batch_size, f"--tokens ({cfg.tokens}) must give at least one step of --batch_size {cfg.batch_size}"),
        (
            cfg.ortsae_chunks > cfg.dict_size // 2,
            f"--ortsae_chunks must be at most dict_size / 2 (blocks of two latents or more), got {cfg.ortsae_chunks}",
        ),
        (n_layers is not None and cfg.layer >= n_layers, f"--layer {cfg.layer} is outside {cfg.lm_name} (layers 0..{(n_layers or 0) - 1})"),
        (synthetic and bool(evals - {"synth"}), "the synth profile has no language model: --evals synth (or none)"),
        (not synthetic and "synth" in evals, "--evals synth needs synthetic data: --profile synth"),
        (max(seed_list(cfg)) > SEED_MAX, f"--seed {cfg.seed} with --seeds {cfg.seeds} runs past the largest seed, {SEED_MAX}"),
    ]
    for bad, message in checks:
        if bad:
            raise UsageError(message)


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM (a scheduler's stop, `kill`) raises KeyboardInterrupt, as Ctrl-C does, so every stage
    stops the same way: temporary files removed, finished work kept, one line saying how to go on.
    Training installs its own handler for both (rundir.stop_requests: finish the step, checkpoint)."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


RERUN = "interrupted; nothing was lost that a rerun cannot rebuild. Run the same command again."


def run(main, argv: list[str], interrupted: str = RERUN) -> int:
    """main(argv) with failures turned into one line on stderr and an exit status (rundir.Exit):
    bad input, training failed, out of disk space, interrupted by Ctrl-C or SIGTERM (the message
    says what is kept and how to continue; `interrupted` where no stage said it); an eval failed is
    main's own return."""
    try:
        with sigterm_as_interrupt():
            return main(argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return Exit.BAD_INPUT
    except TrainingFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return Exit.TRAINING_FAILED
    except OutOfSpace as e:
        print(f"error: {e}", file=sys.stderr)
        return Exit.NO_SPACE
    except Interrupted as e:
        print(str(e), file=sys.stderr)
        return Exit.INTERRUPTED
    except KeyboardInterrupt:  # outside every stage that says more
        print(interrupted, file=sys.stderr)
        return Exit.INTERRUPTED
    except Exception as e:  # a full disk outside every stage that says more; anything else is a bug and shows its traceback
        if (full := disk_full(e)) is None:
            raise
        print(
            f"error: out of disk space (writing {full.filename or 'a file'}); finished work is kept and no partial file was left. "
            "Free some space and run the same command again",
            file=sys.stderr,
        )
        return Exit.NO_SPACE
