"""Every option refuses its bad values, found by enumerating the config rather than by a list: for
each field of experiment.Config (and of sweep.SweepOptions), the bad values of its type (a word for a
number, NaN, infinities, a huge integer, a choice that is not one) and the values its own declaration
says it must refuse (sae_harness/run/checks.py: 0 and negatives for counts, values outside an interval,
an uncreatable path, a file where a directory is expected). Each must give exit status 2, one line on
stderr naming the option, no traceback, and nothing written to disk."""

import dataclasses
import math
import types
import typing
from pathlib import Path

import pytest

import experiment as E
import sweep
from sae_harness.run import checks, cli


def type_of(f: dataclasses.Field, hints: dict):
    """The field's type without its `| None`."""
    hint = hints[f.name]
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    return next(a for a in typing.get_args(hint) if a is not type(None)) if union else hint


def bad_values(f: dataclasses.Field, hints: dict, a_file: Path) -> list[list[str]]:
    """Command-line values (each a list of tokens) that option f must refuse."""
    kind, check = type_of(f, hints), checks.check_of(f)
    values = []
    if typing.get_origin(kind) is typing.Literal:
        values += [["sideways"]]
    elif kind is bool:
        values += [["maybe"]]
    elif kind is int:
        values += [["abc"], ["1.5"], [str(2**63)]]
    elif kind is float:
        values += [["abc"], ["nan"], ["inf"], ["-inf"], ["1e999"]]
    elif typing.get_origin(kind) is list:
        values += [["abc"], ["nan"]]
    if check is not None:
        values += [list(v) for v in check.bad]
        if "directory" in check.describe:
            values += [[str(a_file)], [str(a_file / "run")]]  # a file where a directory is expected, and on its way
    return values


def cases(config_cls):
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        yield pytest.param(f, hints, id=f.name)


def snapshot(root: Path) -> set:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def argv_for(name: str, value: list[str]) -> list[str]:
    return [f"--{name}={value[0]}"] if len(value) == 1 else [f"--{name}", *value]


def assert_refused(code, err: str, name: str, value) -> None:
    lines = err.strip().splitlines()
    assert code == 2, (name, value, code, err)
    assert len(lines) == 1 and "Traceback" not in err, (name, value, err)
    assert f"--{name}" in lines[0], (name, value, lines[0])


def refuses_every_bad_value(f, hints, tmp_path, capsys, monkeypatch, run, base: dict, extra=()) -> None:
    """Each bad value of field f, given with the valid options base, through run (a CLI's main):
    exit 2, one line naming the option, no traceback, nothing written."""
    monkeypatch.chdir(tmp_path)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    values = bad_values(f, hints, a_file)
    assert values, (
        f"{f.name} has no declared check and no type the parser refuses: declare one beside the field (sae_harness/run/checks.py)"
    )
    before = snapshot(tmp_path)
    for value in values:
        argv = [x for name, v in base.items() if name != f.name for x in (f"--{name}", v)] + argv_for(f.name, value) + list(extra)
        code = run(argv)
        assert_refused(code, capsys.readouterr().err, f.name, value)
        assert snapshot(tmp_path) == before, (f.name, value, snapshot(tmp_path) - before)


@pytest.mark.parametrize("f,hints", list(cases(E.Config)))
def test_every_config_field_refuses_its_bad_values(f, hints, tmp_path, capsys, monkeypatch):
    assert checks.check_of(f) or checks.typed_by_parser(f, hints), f"{f.name} has no check: declare one beside the field"
    base = {"out_dir": str(tmp_path / "run_1"), "cache_dir": str(tmp_path / "cache")}
    refuses_every_bad_value(f, hints, tmp_path, capsys, monkeypatch, lambda argv: cli.run(E.main, argv), base)


def test_the_issues_three_escapes_are_refused(tmp_path, capsys):
    """batch_size 0 (was a ZeroDivisionError), a NaN float (was accepted), an uncreatable out_dir (was
    three tracebacks after the precision probe)."""
    for argv in (
        ["--out_dir", str(tmp_path / "r"), "--batch_size", "0"],
        ["--out_dir", str(tmp_path / "r"), "--ortho_lambda_max", "nan"],
        ["--out_dir", "/proc/nope/run"],
    ):
        code = cli.run(E.main, argv)
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "r").exists()


def test_derived_constraints_name_both_fields(tmp_path, capsys):
    for extra, message in [
        (["--k", "10", "--dict_size", "8"], "--k (10) must be at most --dict_size (8)"),
        (["--tokens", "10", "--batch_size", "20"], "--tokens (10) must give at least one step of --batch_size 20"),
        (["--seed", str(checks.SEED_MAX), "--seeds", "2"], "runs past the largest seed"),
    ]:
        code = cli.run(E.main, ["--out_dir", str(tmp_path / "r"), *extra])
        err = capsys.readouterr().err
        assert code == 2 and message in err, err


def test_checks_accept_the_defaults_and_every_profile():
    for profile in E.PROFILES:
        cfg = cli.apply_profile(E.Config(out_dir="run_x", profile=profile), E.PROFILES, cuda_available=False)
        checks.check_fields(cfg)


def test_interval_checks_refuse_their_edges():
    assert not checks.real(0, 1, lo_open=True)["check"].ok(0.0) and checks.real(0, 1, lo_open=True)["check"].ok(1.0)
    assert not checks.real(0)["check"].ok(math.nan) and not checks.real(0)["check"].ok(math.inf)
    assert checks.integer(1)["check"].ok(checks.INT_MAX) and not checks.integer(1)["check"].ok(True)


@pytest.mark.parametrize("f,hints", list(cases(sweep.SweepOptions)))
def test_every_sweep_option_refuses_its_bad_values(f, hints, tmp_path, capsys, monkeypatch):
    base = {"runs_dir": str(tmp_path / "sweeps"), "results": str(tmp_path / "results")}
    refuses_every_bad_value(f, hints, tmp_path, capsys, monkeypatch, sweep.cli_main, base, extra=["--dry_run"])
