"""Faults that are not a signal, each followed by what the user does next: a second process on a
busy run directory (refused in one line, the first finishes), SIGKILL at every stage then the same
command (it ends where an uninterrupted run ends; the killed process's lock blocks nothing), a disk
that fills up (one line, nothing partial under a real name, the same command completes once space is
freed), damaged state files (named in one line, the way on taken, nothing finished lost) and a
checkpoint holding a pickled object (refused, never run).

The synth profile on a tiny world keeps each run to seconds; the language-model stages run on the
tiny Gemma 3 with stand-in evals, as tests/test_interrupts.py does. A process to be killed or to
run beside another is `child(...)` below in its own Python; a full disk is a small tmpfs mounted in
a user namespace (`unshare`), skipped with the reason where the platform does not allow one."""

import contextlib
import errno
import importlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_gemma3, tiny_args, tiny_tokenizer
from test_interrupts import leftovers, result_of, stand_in, synth_argv
from test_synth import TINY

import experiment as E
from sae_harness import evals
from sae_harness.evals import registry
from sae_harness.evals.eval_cache import EvalCache
from sae_harness.run import buffer, cli, data, lock, rundir, synth

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
LM_EVALS = [n for n in registry.EVAL_NAMES if not registry.by_name(n).synthetic]


# ----------------------------------------------------------------------------------------------
# The runs: the same setup in this process and in a child process
# ----------------------------------------------------------------------------------------------


def setup(mp, root: Path, lm: bool) -> list[str]:
    """Patch (mp: a pytest MonkeyPatch) as the tests run: the tiny world, or the tiny language model
    with a stand-in for each eval; returns the command line of the run in root."""
    if not lm:
        mp.setitem(synth.WORLDS, "tiny", TINY)
        mp.setattr(synth, "EVAL_SAMPLES", 3000)
        return synth_argv(root)
    model, tokenizer = make_tiny_gemma3(), tiny_tokenizer()
    mp.setattr(data, "load_language_model", lambda cfg, device: (model, tokenizer))
    mp.setattr(evals, "load_eval_model", lambda cfg, ctx: None)
    for name in LM_EVALS:
        module, _, function = registry.by_name(name).function.partition(":")
        mp.setattr(importlib.import_module(module), function, stand_in(name))
    return tiny_args(root, "run_1", "--evals", ",".join(LM_EVALS), "--sae_dtype", "float32", "--llm_dtype", "float32")


def kill_self(*_):
    os.kill(os.getpid(), signal.SIGKILL)


def kill_at(mp, stage: str) -> None:
    """SIGKILL this process inside stage: the world's or the samples' build, training (step 12,
    after the checkpoint of step 7), the synth eval, extraction (the model's third forward) or
    the language-model eval of that name."""
    if stage in ("world", "samples"):
        original, prefix = lock.new_folder, "synth-world-" if stage == "world" else "acts-synth-"

        @contextlib.contextmanager
        def building(path):
            with original(path) as tmp:
                if path.name.startswith(prefix):
                    (tmp / "partial").write_text("half")
                    kill_self()
                yield tmp

        mp.setattr(lock, "new_folder", building)
    elif stage == "training":
        update = E.TrainerTopK.update
        mp.setattr(E.TrainerTopK, "update", lambda self, x, step: (step == 12 and kill_self(), update(self, x, step))[1])
    elif stage == "synth eval":
        mp.setattr(synth, "evaluate", kill_self)
    elif stage == "extraction":
        model, _ = data.load_language_model(None, None)
        forward, calls = model.forward, []
        mp.setattr(model, "forward", lambda *a, **k: (calls.append(1), len(calls) == 3 and kill_self(), forward(*a, **k))[2])
    elif stage == "held in training":  # not a fault: a run that trains on only once root/go exists
        update, go = E.TrainerTopK.update, Path(os.environ["GO"])

        def held(self, x, step):
            while step == 12 and not go.exists():
                time.sleep(0.1)
            return update(self, x, step)

        mp.setattr(E.TrainerTopK, "update", held)
    else:
        module, _, function = registry.by_name(stage).function.partition(":")
        mp.setattr(importlib.import_module(module), function, kill_self)


def child(root: str, lm: bool, stage: str | None = None, no_space_check: bool = False) -> int:
    """The run of setup(root, lm) as experiment.py runs it, in this process (a child of the test's),
    killed at stage."""
    with pytest.MonkeyPatch.context() as mp:
        argv = setup(mp, Path(root), lm)
        if stage:
            kill_at(mp, stage)
        if no_space_check:  # to reach the write that finds the disk full
            mp.setattr(rundir, "check_free_space", lambda *a: None)
        return cli.run(E.main, argv)


def child_command(root: Path, lm: bool, stage: str | None = None, **options) -> list[str]:
    call = f"test_faults.child({str(root)!r}, {lm!r}, {stage!r}, **{options!r})"
    return [sys.executable, "-c", f"import sys; sys.path[:0] = [{str(TESTS)!r}, {str(ROOT)!r}]; import test_faults; sys.exit({call})"]


def spawn(root: Path, lm: bool, stage: str | None = None, **options) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    command = child_command(root, lm, stage, **options)
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def one_line(err: str) -> str:
    """The one line a fault ends in (stderr may also hold a library's warnings): no traceback."""
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


def run_here(argv, capsys) -> tuple[int, list[str]]:
    code = cli.run(E.main, argv)
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.fixture(scope="module")
def synth_reference(tmp_path_factory):
    """The uninterrupted run on the tiny world."""
    root = tmp_path_factory.mktemp("synth_reference")
    with pytest.MonkeyPatch.context() as mp:
        assert cli.run(E.main, setup(mp, root, lm=False)) == 0
    return result_of(root)


@pytest.fixture(scope="module")
def lm_reference(tmp_path_factory):
    """The uninterrupted run on the tiny language model, with every stand-in eval."""
    root = tmp_path_factory.mktemp("lm_reference")
    with pytest.MonkeyPatch.context() as mp:
        assert cli.run(E.main, setup(mp, root, lm=True)) == 0
    return result_of(root)


# ----------------------------------------------------------------------------------------------
# One owner per run directory
# ----------------------------------------------------------------------------------------------


def test_a_busy_run_directory_refuses_a_second_process_in_one_line_touching_nothing(tmp_path, capsys, monkeypatch):
    argv = setup(monkeypatch, tmp_path, lm=False)
    out = tmp_path / "run_1"
    with lock.run_dirs([out]):  # this process is the first: it holds the directory
        before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
        code, err = run_here(argv, capsys)
        assert code == 2 and len(err) == 1, err
        assert f"in use by process {os.getpid()}" in err[0] and "--out_dir" in err[0]
        assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
        assert not (tmp_path / "cache").exists()  # no work started
    code, _ = run_here(argv, capsys)  # released on the way out of the block
    assert code == 0


def test_a_seed_folder_of_a_busy_multi_seed_run_is_refused_too(tmp_path, capsys, monkeypatch):
    argv = setup(monkeypatch, tmp_path, lm=False)
    with lock.run_dirs([tmp_path / "run_1" / "seed_43"]):  # a run in one seed's folder, started by hand
        code, err = run_here([*argv, "--seeds", "2"], capsys)
    assert code == 2 and len(err) == 1 and "seed_43 is in use by process" in err[0]


@pytest.mark.slow
def test_two_processes_on_one_out_dir_the_second_is_refused_and_the_first_finishes(tmp_path, synth_reference, monkeypatch):
    """The first trains on past step 12 only once the test says so, after the second has ended."""
    go = tmp_path / "go"
    monkeypatch.setenv("GO", str(go))
    first = spawn(tmp_path, lm=False, stage="held in training")
    log = tmp_path / "run_1" / "training_log.jsonl"
    deadline = time.time() + 300
    while not (log.exists() and log.read_text().count("\n") >= 3) and first.poll() is None and time.time() < deadline:
        time.sleep(0.1)  # steps 0, 5 and 10 logged: the first is at step 12, held
    assert first.poll() is None, first.communicate()[1][-3000:]
    second = spawn(tmp_path, lm=False)
    _, err = second.communicate(timeout=300)
    assert second.returncode == 2 and f"in use by process {first.pid}" in one_line(err)
    go.touch()
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-3000:]
    assert result_of(tmp_path) == synth_reference


# ----------------------------------------------------------------------------------------------
# SIGKILL at every stage, then the same command
# ----------------------------------------------------------------------------------------------


def killed_then_rerun(root: Path, lm: bool, stage: str, monkeypatch, capsys) -> None:
    """The child killed at stage (SIGKILL: no handler runs, its lock and temporary files stay),
    then the same command here: done, and nothing temporary is left."""
    killed = spawn(root, lm, stage)
    _, err = killed.communicate(timeout=600)
    assert killed.returncode == -signal.SIGKILL, err[-3000:]
    code, err = run_here(setup(monkeypatch, root, lm), capsys)
    assert code == 0, err
    assert leftovers(root) == []


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["world", "samples", "training", "synth eval"])
def test_synth_run_killed_at_each_stage_then_the_same_command_ends_as_an_uninterrupted_run(
    stage, tmp_path, synth_reference, monkeypatch, capsys
):
    killed_then_rerun(tmp_path, False, stage, monkeypatch, capsys)
    assert result_of(tmp_path) == synth_reference


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["extraction", *LM_EVALS])
def test_language_model_run_killed_at_each_stage_then_the_same_command_ends_as_an_uninterrupted_run(
    stage, tmp_path, lm_reference, monkeypatch, capsys
):
    killed_then_rerun(tmp_path, True, stage, monkeypatch, capsys)
    assert result_of(tmp_path) == lm_reference


# ----------------------------------------------------------------------------------------------
# A disk that fills up: a small tmpfs in a user namespace
# ----------------------------------------------------------------------------------------------


def small_filesystems() -> str | None:
    """None where a tmpfs can be mounted in a user namespace here, else why not."""
    if not shutil.which("unshare"):
        return "no unshare command"
    probe = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
        capture_output=True,
        text=True,
    )
    return None if probe.returncode == 0 else f"cannot mount a tmpfs in a user namespace: {probe.stderr.strip()[:200]}"


def on_small_filesystem(folder: Path, size_kb: int, then_kb: int, root: Path, **options) -> dict:
    """The run of setup(root) (child(..., **options)) with folder a tmpfs of size_kb; then, the disk
    grown to then_kb (the space freed), the same command again. Both run in one process in a user
    namespace of their own, which alone sees the tmpfs; returns each run's exit, stderr and the
    temporary files left, and the finished run's result."""
    report = root / f"{folder.name}.report.json"
    folder.mkdir(parents=True, exist_ok=True)
    call = f"test_faults.in_namespace({str(folder)!r}, {size_kb}, {then_kb}, {str(root)!r}, {str(report)!r}, {options!r})"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore", PYTHONPATH=os.pathsep.join([str(TESTS), str(ROOT)]))
    namespace = ["unshare", "--user", "--map-root-user", "--mount"]
    done = subprocess.run(
        [*namespace, sys.executable, "-c", f"import test_faults; {call}"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(report.read_text())


def in_namespace(folder: str, size_kb: int, then_kb: int, root: str, report: str, options: dict) -> None:
    """on_small_filesystem's side inside the namespace."""
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", folder], check=True)
    runs = []
    for attempt in (options, {}):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = child(root, False, **attempt)
        runs.append(dict(code=code, err=err.getvalue(), leftovers=leftovers(Path(root))))
        subprocess.run(["mount", "-o", f"remount,size={then_kb}k", "tmpfs", folder], check=True)
    result = result_of(Path(root)) if runs[-1]["code"] == 0 else None
    Path(report).write_text(json.dumps(dict(runs=runs, result=result)))


needs_small_fs = pytest.mark.skipif(bool(small_filesystems()), reason=str(small_filesystems()))


def out_of_space_then_completed(report: dict, reference: dict) -> str:
    """on_small_filesystem's report: the first run ended with exit 4 leaving no temporary file, the
    same command on the grown disk ended as the uninterrupted run; returns the first run's one line."""
    full, again = report["runs"]
    assert full["code"] == rundir.Exit.NO_SPACE, full["err"][-3000:]
    assert full["leftovers"] == []
    assert again["code"] == 0, again["err"][-3000:]
    assert report["result"] == reference
    return one_line(full["err"])


@pytest.mark.slow
@needs_small_fs
def test_a_full_disk_while_training_ends_in_one_line_and_the_same_command_completes(tmp_path, synth_reference):
    """The run directory on a 256 KiB disk: the split, the log and the first checkpoint (124 KB)
    fit, the second does not (it is written beside the first before replacing it)."""
    line = out_of_space_then_completed(on_small_filesystem(tmp_path / "run_1", 256, 8192, tmp_path), synth_reference)
    assert (
        "out of disk space while training" in line
        and f"(writing {tmp_path / 'run_1' / 'checkpoint.pt'})" in line
        and "is kept" in line
        and "same command" in line
    )


@pytest.mark.slow
@needs_small_fs
def test_a_cache_without_room_is_refused_before_it_is_built_naming_both_sizes(tmp_path, synth_reference):
    """The synthetic samples need 512 KiB (4096 x 64 bfloat16); the cache disk has 256 KiB."""
    line = out_of_space_then_completed(on_small_filesystem(tmp_path / "cache", 256, 8192, tmp_path), synth_reference)
    assert "the synthetic samples (4096 x 64 bfloat16) needs 512 KiB" in line and "KiB is free there" in line


@pytest.mark.slow
@needs_small_fs
def test_a_cache_write_that_finds_the_disk_full_leaves_no_partial_cache(tmp_path, synth_reference):
    """The free-space check passed over (as when another process fills the disk meanwhile): the
    write fails with ENOSPC, said in one line, and the partial cache is removed."""
    report = on_small_filesystem(tmp_path / "cache", 256, 8192, tmp_path, no_space_check=True)
    line = out_of_space_then_completed(report, synth_reference)
    assert "out of disk space while extracting activations" in line and "acts.npy" in line and "partial cache is discarded" in line


@pytest.mark.slow
def test_a_full_disk_when_an_eval_records_its_result_keeps_final_info_as_it_was(tmp_path, synth_reference, monkeypatch, capsys):
    argv = setup(monkeypatch, tmp_path, lm=False)
    info = tmp_path / "run_1" / "final_info.json"
    write = rundir.write_json_atomic

    def partially(tmp):
        tmp.write_text("{")
        raise OSError(errno.ENOSPC, "No space left on device")

    def full_disk(path, obj):  # the synth eval's result finds the disk full
        rundir.write_atomic(path, partially) if "synthetic evaluation results" in obj else write(path, obj)

    monkeypatch.setattr(rundir, "write_json_atomic", full_disk)
    code, err = run_here(argv, capsys)
    assert code == rundir.Exit.NO_SPACE and len(err) == 1, err
    assert "out of disk space while running the evals" in err[0] and str(info) in err[0] and "are kept" in err[0]
    kept = json.loads(info.read_text())  # the training block, whole
    assert "final_info" in kept["training results for layer 0"] and "synthetic evaluation results" not in kept
    assert leftovers(tmp_path) == []
    monkeypatch.setattr(rundir, "write_json_atomic", write)
    assert run_here(argv, capsys)[0] == 0
    assert result_of(tmp_path) == synth_reference


# ----------------------------------------------------------------------------------------------
# Damaged state
# ----------------------------------------------------------------------------------------------


def stopped_in_training(root: Path, monkeypatch, capsys) -> list[str]:
    """A run stopped (SIGINT) at step 13: checkpoint.pt at step 13, checkpoint.prev.pt at step 7."""
    argv = setup(monkeypatch, root, lm=False)
    update = E.TrainerTopK.update
    with monkeypatch.context() as mp:
        mp.setattr(
            E.TrainerTopK, "update", lambda self, x, step: (step == 12 and os.kill(os.getpid(), signal.SIGINT), update(self, x, step))[1]
        )
        assert run_here(argv, capsys)[0] == 130
    return argv


def damage(path: Path, how: str) -> None:
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(b"\x00garbage\xff" * 100)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_a_damaged_checkpoint_is_named_and_the_previous_one_is_used(how, tmp_path, synth_reference, monkeypatch, capsys):
    argv = stopped_in_training(tmp_path, monkeypatch, capsys)
    ckpt = tmp_path / "run_1" / "checkpoint.pt"
    damage(ckpt, how)
    code = cli.run(E.main, argv)
    out, err = capsys.readouterr()
    assert code == 0 and "Traceback" not in err
    assert f"checkpoint {ckpt} is damaged" in err and "resuming from the previous checkpoint" in err
    assert f"resuming from {ckpt.with_name('checkpoint.prev.pt')} at step 7/" in out
    assert result_of(tmp_path) == synth_reference


def test_both_checkpoints_damaged_train_again_from_the_start(tmp_path, monkeypatch):
    run = tmp_path / "run_1"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"garbage")
    (run / "checkpoint.prev.pt").write_bytes(b"")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert rundir.load_checkpoint(run / "checkpoint.pt", "cpu") is None
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 2 and "resuming from the previous checkpoint" in lines[0] and "starts again from step 0" in lines[1]


class Planted:
    """What a crafted checkpoint unpickles into: importing it runs code."""

    def __reduce__(self):
        return (Path.touch, (Path(os.environ["PLANTED"]),))


def test_a_checkpoint_holding_a_pickled_object_is_refused_not_run(tmp_path, monkeypatch, capsys):
    argv = setup(monkeypatch, tmp_path, lm=False)
    ckpt, marker = tmp_path / "run_1" / "checkpoint.pt", tmp_path / "code_ran"
    monkeypatch.setenv("PLANTED", str(marker))
    ckpt.parent.mkdir()
    torch.save(dict(trainer={}, step=7, elapsed_s=0.0, config={}, extra=Planted()), ckpt)
    code, err = run_here(argv, capsys)
    assert code == 2 and len(err) == 1 and str(ckpt) in err[0] and "not loaded" in err[0] and "data, not code" in err[0]
    assert not marker.exists() and ckpt.exists()


def test_checkpoints_hold_tensors_and_plain_values_only(tmp_path, monkeypatch, capsys):
    stopped_in_training(tmp_path, monkeypatch, capsys)
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        state = torch.load(tmp_path / "run_1" / name, weights_only=True)
        assert state["step"] in (7, 13) and "sae" in state["trainer"]


@pytest.mark.slow
def test_a_training_log_damaged_before_the_checkpoint_trains_again_from_the_start(tmp_path, synth_reference, monkeypatch, capsys):
    argv = stopped_in_training(tmp_path, monkeypatch, capsys)
    log = tmp_path / "run_1" / "training_log.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join([lines[0], '{"step": 5, "lo', *lines[2:]]) + "\n")
    code = cli.run(E.main, argv)
    out, err = capsys.readouterr()
    assert code == 0 and "Traceback" not in err
    assert f"{log} is damaged" in err and "starts again from step 0" in err and "resuming from" not in out
    assert result_of(tmp_path) == synth_reference


@pytest.mark.slow
def test_a_training_log_cut_off_after_the_checkpoint_resumes_from_it(tmp_path, synth_reference, monkeypatch, capsys):
    argv = stopped_in_training(tmp_path, monkeypatch, capsys)
    log = tmp_path / "run_1" / "training_log.jsonl"
    with log.open("a") as f:
        f.write('{"step": 15, "loss": 0.')  # the line a full disk cut off
    code = cli.run(E.main, argv)
    out, err = capsys.readouterr()
    assert code == 0 and "damaged" not in err and "at step 13/" in out
    assert result_of(tmp_path) == synth_reference


def test_a_truncated_final_info_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    argv = setup(monkeypatch, tmp_path, lm=False)
    info = tmp_path / "run_1" / "final_info.json"
    info.parent.mkdir()
    info.write_text('{"training results for layer 0": {"config": ')
    code, err = run_here(argv, capsys)
    assert code == 2 and len(err) == 1 and f"{info} is not valid JSON" in err[0]
    assert info.read_text() == '{"training results for layer 0": {"config": '


def test_an_unreadable_sae_keeps_the_finished_evals_and_says_how_to_go_on(tmp_path, monkeypatch, capsys):
    argv = setup(monkeypatch, tmp_path, lm=False)
    assert run_here([*argv, "--evals", "none"], capsys)[0] == 0
    run = tmp_path / "run_1"
    before = (run / "final_info.json").read_text()
    damage(run / "sae" / "sae_weights.safetensors", "truncated")
    code, err = run_here(argv, capsys)  # the synth eval is pending and needs the SAE
    assert code == 2 and len(err) == 1 and "the trained SAE in" in err[0] and "finished evals" in err[0] and "--overwrite" in err[0]
    assert (run / "final_info.json").read_text() == before


@pytest.mark.parametrize("how", ["truncated", "garbage"])
@pytest.mark.parametrize("part", ["meta.json", "acts.npy"])
def test_a_damaged_sample_cache_is_named_and_built_again(part, how, tmp_path, capsys):
    path, key = synth.training_cache(TINY, 0, 2048, 1, tmp_path)
    whole = (path / "acts.npy").read_bytes()
    damage(path / part, how)
    assert synth.training_cache(TINY, 0, 2048, 1, tmp_path) == (path, key)
    assert "is incomplete or damaged" in capsys.readouterr().out
    assert (path / "acts.npy").read_bytes() == whole and buffer.read_cache(path, key) is not None


@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_a_damaged_world_is_named_and_built_again(how, tmp_path, capsys):
    whole = synth.world(TINY, 0, tmp_path).feature_dict.feature_vectors.clone()  # a copy: the loaded world maps the file
    (folder,) = tmp_path.glob("synth-world-*[0-9a-f]")
    (weights,) = folder.glob("*.safetensors")
    damage(weights, how)
    again = synth.world(TINY, 0, tmp_path)
    assert "incomplete or damaged" in capsys.readouterr().out
    assert torch.equal(whole, again.feature_dict.feature_vectors)


@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_a_damaged_eval_cache_entry_is_named_and_built_again(how, tmp_path, capsys):
    cache, builds = EvalCache(tmp_path / "evals", tmp_path), []

    def build(tmp):
        builds.append(1)
        (tmp / "acts").mkdir()
        (tmp / "acts" / "layer.pt").write_bytes(bytes(range(256)) * 40)

    key = {"model": "m", "layer": 1}
    path, hit = cache.entry("x", key, build)
    damage(path / "acts" / "layer.pt", how)
    assert cache.entry("x", key, build) == (path, False) and len(builds) == 2
    assert f"eval cache: {path} is damaged" in capsys.readouterr().out
    assert (path / "acts" / "layer.pt").read_bytes() == bytes(range(256)) * 40
    (path / "added_later.pt").write_bytes(b"x")  # as absorption adds its prompt activations to its entry
    assert cache.entry("x", key, build) == (path, True) and len(builds) == 2


def test_a_cache_being_built_makes_a_second_builder_wait_then_reuse_it(tmp_path, capsys):
    """The lock on a cache being built: the second process waits (one line says so) and reuses
    what the first built; a builder killed mid-way leaves its lock to nobody."""
    cache, key, got = EvalCache(tmp_path / "evals", tmp_path), {"model": "m"}, []
    path = cache.path("x", key)
    holder = subprocess.Popen(  # builds the entry as EvalCache does, once told to (a line on its stdin)
        [sys.executable, "-c", "import sys; sys.path[:0] = [sys.argv[1]]; from sae_harness.evals.eval_cache import EvalCache\n"
         "cache = EvalCache(sys.argv[2], sys.argv[2])\n"
         "cache.entry('x', {'model': 'm'}, lambda tmp: (print('held', flush=True), sys.stdin.readline(), (tmp / 'f').write_text('built')))",
         str(ROOT), str(tmp_path / "evals")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    second = threading.Thread(target=lambda: got.append(cache.entry("x", key, lambda tmp: (tmp / "f").write_text("again"))))
    second.start()
    said = ""
    while "waiting" not in said and second.is_alive():
        said += capsys.readouterr().out
        time.sleep(0.05)
    assert f"process {holder.pid} is building it; waiting" in said
    holder.stdin.write("go\n")
    holder.stdin.close()
    second.join(timeout=60)
    assert holder.wait(timeout=60) == 0 and got == [(path, True)] and (path / "f").read_text() == "built"
    killed = subprocess.Popen(
        [sys.executable, "-c", "import os, sys; sys.path[:0] = [sys.argv[1]]; from sae_harness.run import lock\n"
         "with lock.building(__import__('pathlib').Path(sys.argv[2])):\n    os.kill(os.getpid(), 9)",
         str(ROOT), str(tmp_path / "other")],
    )  # fmt: skip
    assert killed.wait(timeout=60) == -signal.SIGKILL
    with lock.building(tmp_path / "other"):  # at once: the kernel freed the killed builder's lock
        pass
