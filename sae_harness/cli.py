"""The command line, generated from experiment.Config by simple_parsing: every field is an option
(`--field value` or `--field=value`), its docstring is the help, Literal fields take only their
choices. Profiles fill the fields left at None; bad input is one line and exit status 2."""

import dataclasses
import re
import sys

import simple_parsing

from sae_harness.registry import EVAL_NAMES
from sae_harness.rundir import Interrupted, TrainingFailed, UsageError, recorded_config

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
    return apply_profile(cfg, profiles, cuda_available, verbose=True)


def apply_profile(cfg, profiles: dict, cuda_available: bool, verbose: bool = False):
    """cfg with profile 'auto' resolved and every None field taken from the profile table."""
    profile = cfg.profile
    cfg_was_auto = profile == "auto"
    if cfg_was_auto:
        profile = "gemma-2-2b" if cuda_available else "gemma-3-270m"
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
    """The config a run of this profile records when nothing is overridden."""
    return recorded_config(apply_profile(config_cls(profile=profile), profiles, cuda_available=False))


def resolve_device(cfg):
    """The torch device the run asks for (precision.device_of); --device cuda with no GPU visible
    is bad input."""
    import torch

    from sae_harness import precision

    device = precision.device_of(cfg)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            "--device cuda (the gemma-2-2b profile) needs a CUDA GPU; none is visible here (use --profile gemma-3-270m on CPU)"
        )
    return device


def eval_names(cfg) -> list[str]:
    names = [e.strip() for e in cfg.evals.split(",") if e.strip()]
    return [] if names == ["none"] else names


def seed_list(cfg) -> list[int]:
    """The seeds of a run from --seeds: a count N gives seed, seed+1, .., seed+N-1; a comma list
    (42,43 or 7,) gives those seeds."""
    spec = str(cfg.seeds).strip()
    try:
        if "," not in spec:
            count = int(spec)
            if count < 1:
                raise ValueError
            return list(range(cfg.seed, cfg.seed + count))
        seeds = [int(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--seeds takes a count (5) or a comma list of seeds (42,43), got {spec!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds lists no seed or a seed twice: {spec!r}")
    return seeds


def validate(cfg) -> None:
    """Reject impossible configs with one sentence, before anything heavy loads."""
    checks = [
        (not cfg.out_dir, "--out_dir is required, e.g. python experiment.py --out_dir=run_1"),
        (cfg.dict_size <= 0, f"dict_size must be positive, got {cfg.dict_size}"),
        (not 0 < cfg.k <= cfg.dict_size, f"k must be in 1..dict_size ({cfg.dict_size}), got {cfg.k}"),
        (cfg.lr < 0, f"lr must be positive (or 0 for auto), got {cfg.lr}"),
        (cfg.ortho_lambda_max < 0, f"ortho_lambda_max must be >= 0, got {cfg.ortho_lambda_max}"),
        (cfg.ortho_base_threshold <= 0, f"ortho_base_threshold must be > 0, got {cfg.ortho_base_threshold}"),
        (cfg.threshold_floor <= 0, f"threshold_floor must be > 0, got {cfg.threshold_floor}"),
        (cfg.decay_rate < 0, f"decay_rate must be >= 0, got {cfg.decay_rate}"),
        (cfg.auxk_alpha < 0, f"auxk_alpha must be >= 0, got {cfg.auxk_alpha}"),
        (cfg.batch_size <= 0, f"batch_size must be positive, got {cfg.batch_size}"),
        (
            cfg.tokens <= 0 or cfg.tokens // cfg.batch_size <= 0,
            f"tokens ({cfg.tokens}) must give at least one step of batch_size {cfg.batch_size}",
        ),
        (cfg.heldout_tokens <= 0, f"heldout_tokens must be positive, got {cfg.heldout_tokens}"),
        (cfg.epochs is not None and cfg.epochs <= 0, f"epochs must be positive, got {cfg.epochs}"),
        (cfg.context_length < 2, f"context_length must be >= 2, got {cfg.context_length}"),
        (not 0 < cfg.heldout_fraction < 1, f"heldout_fraction must be in (0, 1), got {cfg.heldout_fraction}"),
        (cfg.llm_batch_size <= 0, f"llm_batch_size must be positive, got {cfg.llm_batch_size}"),
        (cfg.checkpoint_every <= 0, f"checkpoint_every must be positive, got {cfg.checkpoint_every}"),
        (cfg.ortho_every <= 0, f"ortho_every must be positive, got {cfg.ortho_every}"),
        (cfg.log_every < 0, f"log_every must be >= 0, got {cfg.log_every}"),
        (not 0 <= cfg.lr_decay_start <= 1, f"lr_decay_start must be in [0, 1], got {cfg.lr_decay_start}"),
        (
            not all(0 < w < 1 for w in cfg.matryoshka_widths) or list(cfg.matryoshka_widths) != sorted(set(cfg.matryoshka_widths)),
            f"matryoshka_widths must be increasing fractions of dict_size in (0, 1), got {list(cfg.matryoshka_widths)}",
        ),
        (
            not 1 <= cfg.ortsae_chunks <= cfg.dict_size // 2,
            f"ortsae_chunks must be in [1, dict_size / 2] (blocks of two latents or more), got {cfg.ortsae_chunks}",
        ),
    ]
    n_layers = KNOWN_LAYERS.get(cfg.lm_name)
    if n_layers is not None:
        checks.append((not 0 <= cfg.layer < n_layers, f"layer {cfg.layer} is outside {cfg.lm_name} (layers 0..{n_layers - 1})"))
    else:
        checks.append((cfg.layer < 0, f"layer must be >= 0, got {cfg.layer}"))
    unknown = set(eval_names(cfg)) - set(EVAL_NAMES)
    checks.append((bool(unknown), f"unknown evals {sorted(unknown)}: choose from {', '.join(EVAL_NAMES)} or none"))
    synthetic = cfg.text_source == "synth"
    checks.append((synthetic and set(eval_names(cfg)) - {"synth"}, "the synth profile has no language model: --evals synth (or none)"))
    checks.append((not synthetic and "synth" in eval_names(cfg), "--evals synth needs synthetic data: --profile synth"))
    for bad, message in checks:
        if bad:
            raise UsageError(message)
    seed_list(cfg)


def run(main, argv: list[str]) -> int:
    """main(argv) with failures turned into one line on stderr and an exit status: 2 bad input,
    3 training failed, 130 interrupted (the message says what is kept and how to continue), 1 an
    eval failed (main's own return)."""
    try:
        return main(argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except Interrupted as e:
        print(str(e), file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted; nothing was lost that a rerun cannot rebuild. Run the same command again.", file=sys.stderr)
        return 130
