"""What a config field may hold, declared once beside the field as its metadata:

    k: int | None = field(default=None, metadata=integer(1))
    lr_decay_start: float = field(default=0.8, metadata=real(0, 1))

`check_fields` refuses a value outside its field's declaration in one sentence that names the
field; it runs on the parsed command line before the profile's work, the precision probe or any
heavy import. Literal and bool fields need no declaration: the parser refuses what their type does
not allow. Each check also lists values it must refuse (`bad`), which tests/test_bad_input.py feeds
to every field: the enumeration comes from the config, not from a hand-kept list.

Only the standard library here: nothing heavy is imported."""

import dataclasses
import math
import os
import tempfile
import types
import typing
from collections.abc import Callable
from pathlib import Path

INT_MAX = 2**31 - 1  # sizes and counts beyond int32 are typos, and torch indexes tensors with them
SEED_MAX = 2**32 - 1  # numpy's and torch's seeds


# What a field is to a run, declared beside what it may hold (metadata=integer(1) | ARM). A run's
# identity is its config less its PLACE fields; a comparison with a baseline run apart also sets
# aside the SEED, EVAL, LOG and ARM fields. A field without a role is a training option.
PLACE = {"role": "place"}  # where the run is kept and how it is watched: never changes a number
SEED = {"role": "seed"}  # which replicate
EVAL = {"role": "eval"}  # what is measured after training
LOG = {"role": "log"}  # what the training log records (and the dose summary read from it)
ARM = {"role": "arm"}  # the arm and its own options (a plain TopK baseline ignores them)


def fields_with(config, *roles: dict) -> list[str]:
    """The names of config's fields (a dataclass or its class) that have one of these roles."""
    wanted = {role["role"] for role in roles}
    return [f.name for f in dataclasses.fields(config) if f.metadata.get("role") in wanted]


class BadValue(ValueError):
    """A field's value outside its declaration: one sentence naming the field (the CLI's bad input)."""


@dataclasses.dataclass(frozen=True)
class Check:
    describe: str  # what the field takes, as the error message says it: "an integer >= 1"
    ok: Callable[[object], bool]
    bad: tuple = ()  # command-line values (each a list of tokens) that must be refused
    required: bool = False  # an empty string is "missing", said as such
    reason: Callable[[object], str] | None = None  # the message's end for a refused value, where "must be <describe>" says too little

    def metadata(self) -> dict:
        return {"check": self}


def integer(lo: int, hi: int = INT_MAX) -> dict:
    """An integer in [lo, hi]."""
    describe = f"an integer >= {lo}" if hi == INT_MAX else f"an integer in [{lo}, {hi}]"
    ok = lambda v: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi
    return Check(describe, ok, ([str(lo - 1)], [str(hi + 1)])).metadata()


def real(lo: float, hi: float = math.inf, lo_open: bool = False, hi_open: bool = False) -> dict:
    """A finite number in the interval from lo to hi (either end open)."""
    left, right = "(" if lo_open else "[", ")" if hi_open or hi == math.inf else "]"
    describe = f"a finite number in {left}{lo}, {'inf' if hi == math.inf else hi}{right}"

    def ok(v) -> bool:
        if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
            return False
        return (v > lo if lo_open else v >= lo) and (hi == math.inf or (v < hi if hi_open else v <= hi))

    bad = [[str(lo if lo_open else lo - 1)], ["nan"], ["inf"], ["-inf"]]
    bad += [[str(hi if hi_open else hi + 1)]] if hi != math.inf else []
    return Check(describe, ok, tuple(bad)).metadata()


def text(required: bool = True) -> dict:
    """A string; non-empty when required."""
    return Check(
        "a non-empty string" if required else "a string",
        lambda v: isinstance(v, str) and (bool(v.strip()) or not required),
        ([""],) if required else (),
    ).metadata()


def word(max_len: int = 128, forbidden: str = "/\\#?%:, \t") -> dict:
    """A name without the characters a service refuses (wandb projects, SLURM partitions); may be empty."""
    ok = lambda v: isinstance(v, str) and len(v) <= max_len and not set(v) & set(forbidden)
    return Check(
        f"a name of at most {max_len} characters without {forbidden.strip()!r} or spaces", ok, (["a/b"], ["x" * (max_len + 1)], ["a b"])
    ).metadata()


def existing_path(allow_fragment: bool = False) -> dict:
    """Empty, or a path that exists (with allow_fragment, PATH#name: the path part exists)."""
    ok = lambda v: isinstance(v, str) and (not v or os.path.exists(v.partition("#")[0] if allow_fragment else v))
    return Check("a path that exists" + (" (PATH or PATH#arm)" if allow_fragment else ""), ok, (["/no/such/path"],)).metadata()


def custom(describe: str, ok: Callable[[object], bool], *bad: list[str]) -> dict:
    return Check(describe, ok, bad).metadata()


def creatable_dir(example: str) -> dict:
    """A directory that exists or can be created, and can be written: tried, not inferred from
    permission bits (root ignores them, and /proc refuses a mkdir whatever they say)."""
    describe = f"a directory that can be created and written (e.g. {example})"
    bad = ([""], ["/proc/no-such-dir/run"], ["/dev/null/run"], ["/dev/null"])
    ok = lambda v: isinstance(v, str) and bool(v.strip()) and _why_not_creatable(v) is None
    return Check(describe, ok, bad, required=True, reason=lambda v: f"must be {describe}: {_why_not_creatable(v)}").metadata()


def _why_not_creatable(path: str) -> str | None:
    target = Path(path).absolute()
    existing = next(p for p in [target, *target.parents] if os.path.lexists(p))
    if not existing.is_dir():
        return "it is a file, not a directory" if existing == target else f"{existing} on its way is a file"
    try:  # the nearest existing folder takes a new folder: make one and remove it, leaving nothing
        tempfile.TemporaryDirectory(dir=existing, prefix=".write-check-").cleanup()
    except OSError as e:
        return f"{existing} takes no new folder ({e.strerror or type(e).__name__})"
    return None


def check_of(f: dataclasses.Field) -> Check | None:
    return f.metadata.get("check")


def typed_by_parser(f: dataclasses.Field, hints: dict) -> bool:
    """A Literal or bool field (optionally | None): the parser alone decides what it takes."""
    hint = hints[f.name]
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    kinds = [a for a in typing.get_args(hint) if a is not type(None)] if union else [hint]
    return all(a is bool or typing.get_origin(a) is typing.Literal for a in kinds)


def check_fields(cfg) -> None:
    """Refuse the first field whose value (None = left to the profile) is outside its declaration."""
    for f in dataclasses.fields(cfg):
        value, check = getattr(cfg, f.name), check_of(f)
        if value is None or check is None:
            continue
        if check.required and isinstance(value, str) and not value.strip():
            raise BadValue(f"--{f.name} is required: {check.describe}")
        if not check.ok(value):
            raise BadValue(f"--{f.name} {check.reason(value) if check.reason else 'must be ' + check.describe}, got {_shown(value)}")


def _shown(value) -> str:
    return " ".join(map(repr, value)) if isinstance(value, list) else repr(value)


def comma_list(spec: str) -> list[str]:
    """The items of a comma list, blanks dropped."""
    return [e.strip() for e in spec.split(",") if e.strip()]


def names_in(spec: str) -> list[str]:
    """The eval names of a comma list; 'none' alone is the empty list."""
    names = comma_list(spec)
    return [] if names == ["none"] else names


def eval_list() -> dict:
    """A comma list of evals from the registry (read when checked), or none."""
    import sae_harness.evals.registry as registry

    ok = lambda v: isinstance(v, str) and set(names_in(v)) <= set(registry.EVAL_NAMES)
    reason = lambda v: f"must be a comma list of {', '.join(registry.EVAL_NAMES)}, or none"
    return Check("a comma list of evals, or none", ok, (["nonsense"], ["core,,nonsense"]), reason=reason).metadata()


def seeds_from(spec: str, first: int) -> list[int]:
    """A count N gives first .. first+N-1; a comma list (42,43 or 7,) gives those seeds, each once.
    ValueError otherwise."""
    spec = str(spec).strip()
    if "," not in spec:
        count = int(spec)
        if not 1 <= count <= 10_000:
            raise ValueError(spec)
        return list(range(first, first + count))
    seeds = [int(part) for part in spec.split(",") if part.strip()]
    if not seeds or len(set(seeds)) != len(seeds) or not all(0 <= s <= SEED_MAX for s in seeds):
        raise ValueError(spec)
    return seeds


def _parses(parse: Callable, *args) -> bool:
    try:
        parse(*args)
    except (ValueError, TypeError):
        return False
    return True


def seed_spec() -> dict:
    describe = "a count N in [1, 10000] (seeds seed .. seed+N-1) or a comma list of distinct seeds (42,43)"
    return custom(describe, lambda v: isinstance(v, str) and _parses(seeds_from, v, 0), ["0"], ["abc"], ["42,42"], [","], ["-1,3"])


def increasing_fractions() -> dict:
    describe = "increasing fractions in (0, 1), at least one (e.g. 0.125 0.25 0.5)"
    ok = lambda v: isinstance(v, list) and len(v) > 0 and all(isinstance(w, float | int) and 0 < w < 1 for w in v) and v == sorted(set(v))
    return custom(describe, ok, ["0"], ["0.5", "0.25"], ["1.5"], ["nan"], ["0.25", "0.25"])
