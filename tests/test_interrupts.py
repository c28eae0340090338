"""An interruption at every stage, by Ctrl-C (SIGINT) and by a scheduler's stop (SIGTERM), then the
same command again: exit status 130 and one line saying what is kept, no temporary file left behind,
and the finished run identical to an uninterrupted one (final_info.json and the training log, less
times). The synth profile on a tiny world keeps each case to seconds; the language-model stages run
on the tiny Gemma 3; every eval of the registry is interrupted through a stand-in (the stopping and
keeping is the harness's, not the eval's); a sweep is interrupted as a process, as a person would."""

import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_args
from test_pinned import normalised
from test_synth import TINY

import experiment as E
from sae_harness import evals
from sae_harness.evals import registry
from sae_harness.run import cli, lock, synth

pytestmark = pytest.mark.slow  # every case is a whole run (or sweep) interrupted and run again: the slow tier (pytest -m slow)

ROOT = Path(__file__).resolve().parents[1]
SIGNALS = [signal.SIGINT, signal.SIGTERM]


def synth_argv(root: Path) -> list[str]:
    argv = ["--out_dir", str(root / "run_1"), "--cache_dir", str(root / "cache"), "--profile", "synth", "--lm_name", "synth:tiny"]
    argv += ["--tokens", "4096", "--epochs", "2", "--dict_size", "64", "--k", "4", "--batch_size", "256", "--checkpoint_every", "7"]
    return argv + ["--sae_dtype", "float32", "--llm_dtype", "float32", "--log_every", "5"]


def result_of(root: Path, run: str = "run_1") -> dict:
    out = root / run
    record = dict(
        final_info=json.loads((out / "final_info.json").read_text()),
        training_log=[json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()],
    )
    return normalised(json.loads(json.dumps(record)), str(root))


def leftovers(root: Path) -> list[str]:
    """Temporary files and folders of atomic writes and cache builds still on disk."""
    return [str(p) for p in root.rglob("*") if ".tmp" in p.name or p.name.startswith(".write-check-")]


def send(sig):
    os.kill(os.getpid(), sig)  # handled in this thread before the next bytecode: the stage is interrupted here


def interrupted_then_resumed(argv, capsys) -> str:
    """The stderr line of the interrupted run; then the same command runs to the end."""
    code = cli.run(E.main, argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 130 and len(err) == 1, (code, err)
    assert "Traceback" not in err[0] and ("same command" in err[0] or "Run the same command" in err[0]), err[0]
    return err[0]


@pytest.fixture(scope="module")
def synth_reference(tmp_path_factory):
    """The uninterrupted tiny synth run."""
    root = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(synth.WORLDS, "tiny", TINY)
        mp.setattr(synth, "EVAL_SAMPLES", 3000)
        assert E.main(synth_argv(root)) == 0
    return result_of(root)


def building_that_stops(prefix: str, sig):
    """lock.new_folder that is interrupted once, inside the build of a folder named prefix*."""
    original, fired = lock.new_folder, []

    @contextlib.contextmanager
    def building(path):
        with original(path) as tmp:
            if path.name.startswith(prefix) and not fired:
                fired.append(1)
                send(sig)
            yield tmp

    return building


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
@pytest.mark.parametrize("stage", ["world", "samples", "training", "synth eval", "eval samples"])
def test_synth_run_interrupted_at_each_stage_resumes_to_the_same_result(stage, sig, synth_reference, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(synth.WORLDS, "tiny", TINY)
    monkeypatch.setattr(synth, "EVAL_SAMPLES", 3000)
    with monkeypatch.context() as mp:
        if stage == "world":
            mp.setattr(lock, "new_folder", building_that_stops("synth-world-", sig))
        elif stage == "samples":
            mp.setattr(lock, "new_folder", building_that_stops("acts-synth-", sig))
        elif stage == "eval samples":
            mp.setattr(lock, "new_folder", building_that_stops("synth-eval-", sig))
        elif stage == "training":
            update = E.TrainerTopK.update
            mp.setattr(E.TrainerTopK, "update", lambda self, x, step: (step == 12 and send(sig), update(self, x, step))[1])
        else:
            evaluate = synth.evaluate
            mp.setattr(synth, "evaluate", lambda sae, inputs: (send(sig), evaluate(sae, inputs))[1])
        line = interrupted_then_resumed(synth_argv(tmp_path), capsys)
    if stage == "training":
        assert "checkpoint saved" in line
    if stage in ("synth eval", "eval samples"):
        assert "are kept" in line and (tmp_path / "run_1" / "sae").is_dir()
    assert leftovers(tmp_path) == []
    assert cli.run(E.main, synth_argv(tmp_path)) == 0
    assert result_of(tmp_path) == synth_reference


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_language_model_extraction_interrupted_leaves_no_partial_cache(sig, tmp_path, tiny_lm, capsys, monkeypatch):
    """Stopped inside the model's forward during extraction: the partial cache is discarded, and the
    same command builds it whole and trains as an uninterrupted run does."""
    model, _ = tiny_lm
    forward, calls = model.forward, []

    def stopping(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            send(sig)
        return forward(*args, **kwargs)

    args = tiny_args(tmp_path, "run_1", "--sae_dtype", "float32", "--llm_dtype", "float32")
    monkeypatch.setattr(model, "forward", stopping)
    line = interrupted_then_resumed(args, capsys)
    assert "extracting activations" in line and "partial cache is discarded" in line
    assert leftovers(tmp_path) == [] and not (tmp_path / "run_1" / "final_info.json").exists()
    monkeypatch.setattr(model, "forward", forward)
    assert cli.run(E.main, args) == 0
    assert cli.run(E.main, tiny_args(tmp_path, "run_2", "--sae_dtype", "float32", "--llm_dtype", "float32")) == 0
    a, b = result_of(tmp_path, "run_1"), result_of(tmp_path, "run_2")
    assert a["training_log"] == [dict(r) for r in b["training_log"]]


def stand_in(name: str):
    """A stand-in for eval `name`: a number from the SAE, in the eval's own calling form."""
    entry = registry.by_name(name)
    value = lambda sae: {"score": float(sae.W_dec.double().abs().sum())}
    return (lambda sae, tl_model, ctx: value(sae)) if entry.needs_eval_model else (lambda sae, inputs: value(sae))


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
@pytest.mark.parametrize("name", [n for n in registry.EVAL_NAMES if not registry.by_name(n).synthetic])
def test_each_eval_interrupted_keeps_the_sae_and_the_other_evals(name, sig, tmp_path, tiny_lm, capsys, monkeypatch):
    """Every language-model eval of the registry, the others run beside it: stopped inside it, the
    trained SAE and the evals already finished are kept, and the same command runs only what is
    pending, to the same final_info as a run that was never stopped."""
    names = [n for n in registry.EVAL_NAMES if not registry.by_name(n).synthetic]
    monkeypatch.setattr(evals, "load_eval_model", lambda cfg, ctx: None)
    for other in names:
        module, _, function = registry.by_name(other).function.partition(":")
        monkeypatch.setattr(importlib.import_module(module), function, stand_in(other))
    args = lambda run: tiny_args(tmp_path, run, "--evals", ",".join(names), "--sae_dtype", "float32", "--llm_dtype", "float32")
    assert cli.run(E.main, args("run_2")) == 0
    module, _, function = registry.by_name(name).function.partition(":")
    calm = getattr(importlib.import_module(module), function)
    monkeypatch.setattr(importlib.import_module(module), function, lambda *a: (send(sig), calm(*a))[1])
    line = interrupted_then_resumed(args("run_1"), capsys)
    assert "running the evals" in line and "are kept" in line
    done = json.loads((tmp_path / "run_1" / "final_info.json").read_text())
    order = [e.name for e in registry.run_order(names)]
    for before in order[: order.index(name)]:  # what ran before the stop is on disk
        assert "score" in done[registry.by_name(before).block], before
    monkeypatch.setattr(importlib.import_module(module), function, calm)
    assert cli.run(E.main, args("run_1")) == 0
    a, b = result_of(tmp_path, "run_1"), result_of(tmp_path, "run_2")
    for block in (registry.by_name(n).block for n in names):
        assert a["final_info"][block]["score"] == b["final_info"][block]["score"], block
    assert a["final_info"]["summary"] == {k: v for k, v in b["final_info"]["summary"].items()} or _same_summary(a, b)


def _same_summary(a, b) -> bool:
    strip = lambda s: {k: {f: v for f, v in e.items() if f != "value" or not isinstance(v, float)} for k, e in s.items()}
    return strip(a["final_info"]["summary"]) == strip(b["final_info"]["summary"])


def sweep_command(root: Path, world: Path) -> list[str]:
    command = [sys.executable, "sweep.py", "--variants", "none,progressive", "--seeds", "1", "--executor", "local", "--name", "s"]
    command += ["--runs_dir", str(root / "sweeps"), "--results", str(root / "results"), "--cache_dir", str(root / "cache")]
    command += ["--profile", "synth", "--lm_name", f"synth:{world}", "--tokens", "8192", "--epochs", "12", "--dict_size", "64", "--k", "4"]
    return command + [
        "--batch_size",
        "256",
        "--sae_dtype",
        "float32",
        "--llm_dtype",
        "float32",
        "--evals",
        "none",
        "--checkpoint_every",
        "20",
    ]


def sweep_runs(root: Path) -> dict:
    result = json.loads((root / "results" / "s.json").read_text())
    return {(r["arm"], r["seed"]): normalised(r["summary"], str(root)) for r in result["runs"]}


@pytest.fixture(scope="module")
def world_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("world") / "tiny.json"
    path.write_text(json.dumps(TINY))
    return path


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_sweep_interrupted_while_a_run_trains_resumes_to_the_same_results(sig, world_file, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    whole = subprocess.run(sweep_command(tmp_path / "whole", world_file), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-2000:]
    root = tmp_path / "stopped"
    process = subprocess.Popen(
        sweep_command(root, world_file), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    log = root / "sweeps" / "s" / "progressive" / "seed_42" / "training_log.jsonl"  # the second run, training
    deadline = time.time() + 300
    while not (log.exists() and log.read_text().count("\n") >= 2) and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(sig)
    _, err = process.communicate(timeout=300)
    lines = err.strip().splitlines()
    assert process.returncode == 130 and len(lines) == 1 and "run the same command again" in lines[0], err[-2000:]
    deadline = time.time() + 60  # the stopped experiment writes its checkpoint and exits on its own
    while not (log.parent / "checkpoint.pt").exists() and not (log.parent / "final_info.json").exists() and time.time() < deadline:
        time.sleep(0.1)
    again = subprocess.run(sweep_command(root, world_file), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "progressive seed 42: resume" in again.stdout or "progressive seed 42: new" in again.stdout
    assert sweep_runs(root) == sweep_runs(tmp_path / "whole")
