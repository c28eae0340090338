"""experiment.main end to end on a tiny model: the run directory, the SAELens SAE, resume after an
interrupt, same-seed reproducibility, profiles, wandb, interrupts during the evals."""

import dataclasses
import json
import os
import signal

import pytest
import torch
from conftest import tiny_args

import experiment as E
from sae_harness import evals
from sae_harness.run import cli, rundir
from sae_harness.run.rundir import Interrupted


def read_log(run):
    return [json.loads(line) for line in (run / "training_log.jsonl").read_text().splitlines()]


def test_main_end_to_end_writes_results_log_and_saelens_sae(tmp_path, tiny_lm):
    assert E.main(tiny_args(tmp_path)) == 0
    run = tmp_path / "run_1"
    info = json.loads((run / "final_info.json").read_text())
    block = info["training results for layer 1"]
    for key in (
        "dict_size",
        "k",
        "lr",
        "steps",
        "seed",
        "layer",
        "lm_name",
        "profile",
        "variant",
        "ortho_lambda_max",
        "ortho_base_threshold",
        "weight_schedule",
        "threshold_schedule",
        "decay_rate",
    ):
        assert key in block["config"], key
    final = block["final_info"]
    assert final["training_steps"] == 30 and final["tokens"] == 3000 and final["seconds"] > 0
    assert block["config"]["profile"] == "gemma-3-270m" and block["config"]["variant"] == "progressive"
    log = read_log(run)
    assert [r["step"] for r in log] == list(range(0, 30, 5)) + [29]  # on the ortho_every stride (5), and the last step
    for key in (
        "step",
        "progress",
        "tokens",
        "loss",
        "recon_loss",
        "auxk_loss",
        "ortho_penalty",
        "ortho_lambda",
        "threshold",
        "l0",
        "dead_fraction",
        "sep_cos_mean",
        "sep_cos_p95",
        "sep_frac_above_thr",
        "sep_pairs_penalized",
        "ortho_share",
    ):
        assert key in log[0], key
    assert log[0]["ortho_penalty"] > 0 and log[0]["ortho_share"] > 0
    assert log[0]["l0"] <= 8
    assert final["final_loss"] == pytest.approx(log[-1]["loss"])

    from sae_lens import SAE, TopKSAE

    lens = SAE.load_from_disk(str(run / "sae"))
    assert isinstance(lens, TopKSAE) and lens.cfg.k == 8 and lens.cfg.d_sae == 128
    sae = E.load_sae(run / "sae")
    x = torch.randn(20, 64) * 30
    torch.testing.assert_close(lens(x), sae(x), rtol=1e-4, atol=1e-3)
    from sae_bench.sae_bench_utils.general_utils import check_decoder_norms

    assert check_decoder_norms(sae.W_dec.data)  # what SAEBench checks before its evals
    assert not (run / "checkpoint.pt").exists()


def test_saved_sae_works_on_raw_activations(tmp_path):
    sae = E.AutoEncoderTopK(16, 64, 4, "m", 0, device="cpu", seed=0)
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_()
    x = torch.randn(10, 16)
    scale = 7.5
    lens = rundir.to_saelens(sae, scale)
    torch.testing.assert_close(lens(x * scale), sae(x) * scale, rtol=1e-5, atol=1e-4)


@pytest.mark.slow
def test_interrupt_then_resume_matches_uninterrupted_run(tmp_path, tiny_lm, monkeypatch):
    assert E.main(tiny_args(tmp_path, "run_11")) == 0
    original = E.TrainerTopK.update

    def interrupting(self, x, step):
        if step == 12:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, x, step)

    monkeypatch.setattr(E.TrainerTopK, "update", interrupting)
    with pytest.raises(Interrupted, match="Resume with the same command"):
        E.main(tiny_args(tmp_path, "run_12"))
    assert (tmp_path / "run_12" / "checkpoint.pt").exists()
    assert torch.load(tmp_path / "run_12" / "checkpoint.pt", weights_only=True)["step"] == 13
    monkeypatch.setattr(E.TrainerTopK, "update", original)
    assert E.main(tiny_args(tmp_path, "run_12")) == 0
    a, b = E.load_sae(tmp_path / "run_11" / "sae"), E.load_sae(tmp_path / "run_12" / "sae")
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-5, atol=1e-6)
    log_a, log_b = read_log(tmp_path / "run_11"), read_log(tmp_path / "run_12")
    assert [r["step"] for r in log_a] == [r["step"] for r in log_b]
    assert log_a[-1]["loss"] == pytest.approx(log_b[-1]["loss"], rel=1e-5)


@pytest.mark.slow
def test_same_seed_same_final_loss(tmp_path, tiny_lm):
    E.main(tiny_args(tmp_path, "run_11"))
    E.main(tiny_args(tmp_path, "run_12"))
    loss = [
        json.loads((tmp_path / r / "final_info.json").read_text())["training results for layer 1"]["final_info"]["final_loss"]
        for r in ("run_11", "run_12")
    ]
    assert loss[0] == loss[1]


def test_profile_fills_only_the_fields_left_at_none(capsys):
    cfg = E.parse_args(["--out_dir", "x", "--profile", "gemma-3-270m", "--layer", "3"])
    out = capsys.readouterr().out
    assert cfg.layer == 3 and cfg.dict_size == E.PROFILES["gemma-3-270m"]["dict_size"]
    assert "profile: gemma-3-270m; it set " in out and "dict_size=4096" in out and "layer=" not in out
    edited = cli.apply_profile(E.Config(out_dir="x", profile="gemma-2-2b", k=7), E.PROFILES, cuda_available=False)
    assert edited.k == 7 and edited.dict_size == 16384  # a value set in Config (an edited default) is never overridden


@pytest.mark.slow
def test_ortho_impl_reference_runs_end_to_end(tmp_path, tiny_lm):
    assert E.main(tiny_args(tmp_path, "run_1", "--ortho_impl", "reference")) == 0
    assert E.main(tiny_args(tmp_path, "run_2")) == 0
    a, b = (read_log(tmp_path / r) for r in ("run_1", "run_2"))
    assert a[0]["ortho_penalty"] == pytest.approx(b[0]["ortho_penalty"], rel=1e-4)  # the same term, two implementations
    info = json.loads((tmp_path / "run_1" / "final_info.json").read_text())
    assert info["training results for layer 1"]["final_info"]["ortho_impl"] == "reference"


@pytest.mark.slow
def test_wandb_offline_writes_a_run(tmp_path, tiny_lm, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert E.main(tiny_args(tmp_path, "run_1", "--wandb_project", "sae-test")) == 0
    runs = list((tmp_path / "run_1" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_wandb_unreachable_is_one_warning_and_the_run_goes_on(tmp_path):
    """No API key and no network: wandb refuses; the tracker warns once and every call is a no-op."""
    import subprocess
    import sys

    code = (
        "from sae_harness.run.tracking import Tracker\n"
        f"t = Tracker('sae-test', 'run_1', {{}}, {str(tmp_path)!r})\n"
        "t.log({'step': 0, 'loss': 1.0}); t.summary({'m': {'value': 1.0}}); t.images([]); t.finish()\n"
        "print('run went on')\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")} | {"WANDB_MODE": "online"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env, cwd=E.HERE)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and lines[-1] == "run went on"
    assert sum(line.startswith("warning: wandb is off for this run") for line in lines) == 1


@pytest.mark.slow
def test_interrupt_during_evals_says_what_is_kept_and_the_same_command_continues(tmp_path, tiny_lm, monkeypatch, capsys):
    def interrupted(sae, tl_model, ctx):
        raise KeyboardInterrupt

    monkeypatch.setattr(evals, "load_eval_model", lambda cfg, ctx: None)
    monkeypatch.setattr(evals.core, "eval_core", interrupted)  # the registry's entry looks it up when it runs
    args = tiny_args(tmp_path) + ["--evals", "core"]
    assert cli.run(E.main, args) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted while running the evals" in err[0]
    assert "trained SAE" in err[0] and "are kept" in err[0] and "The same command continues" in err[0]
    assert (tmp_path / "run_1" / "sae").exists()
    monkeypatch.setattr(evals.core, "eval_core", lambda sae, tl_model, ctx: {"eval_result_metrics": {}})
    assert cli.run(E.main, args) == 0
    assert "training already finished" in capsys.readouterr().out


@pytest.mark.slow
def test_matryoshka_runs_end_to_end_paired_with_none(tmp_path, tiny_lm):
    """Same seed, same init and batches as plain TopK; the nested losses change the path from step 1."""
    assert E.main(tiny_args(tmp_path, "run_1", "--variant", "matryoshka")) == 0
    assert E.main(tiny_args(tmp_path, "run_2", "--variant", "none")) == 0
    m, n = (read_log(tmp_path / r) for r in ("run_1", "run_2"))
    assert m[0]["recon_loss"] == pytest.approx(n[0]["recon_loss"], rel=1e-6)  # step 0: the same SAE on the same batch
    assert m[0]["nested_loss"] > 0 and n[0]["nested_loss"] == 0 and m[0]["ortho_loss"] == 0
    assert m[-1]["recon_loss"] != pytest.approx(n[-1]["recon_loss"], rel=1e-6)
    info = json.loads((tmp_path / "run_1" / "final_info.json").read_text())
    assert E.load_sae(tmp_path / "run_1" / "sae").cfg.architecture == "topk"  # every eval reads it as any TopK SAE
    assert info["training results for layer 1"]["config"]["variant"] == "matryoshka"


@pytest.mark.slow
def test_ortsae_runs_end_to_end_paired_with_none(tmp_path, tiny_lm):
    """The OrtSAE arm: the same init and first batch as plain TopK, its penalty at static_matched's
    share of the recon loss from step 0, its dose in final_info."""
    assert E.main(tiny_args(tmp_path, "run_1", "--variant", "ortsae", "--evals", "none")) == 0
    assert E.main(tiny_args(tmp_path, "run_2", "--variant", "none", "--evals", "none")) == 0
    o, n = (read_log(tmp_path / r) for r in ("run_1", "run_2"))
    assert o[0]["recon_loss"] == pytest.approx(n[0]["recon_loss"], rel=1e-6)
    assert o[0]["ortho_loss"] == pytest.approx(o[0]["ortho_lambda"] * o[0]["recon_loss"]) and o[0]["ortho_lambda"] > 0
    assert o[-1]["recon_loss"] != pytest.approx(n[-1]["recon_loss"], rel=1e-6)
    final = json.loads((tmp_path / "run_1" / "final_info.json").read_text())["training results for layer 1"]["final_info"]
    assert final["ortho_share_mean"] > 0 and final["ortho_grad_share_mean"] is None  # autograd path: no held gradient to measure


def key_tree(value, depth=3):
    """The nested keys of a final_info.json block, to `depth` levels (values left out)."""
    if not isinstance(value, dict) or depth == 0:
        return type(value).__name__
    return {key: key_tree(item, depth - 1) for key, item in value.items()}


@pytest.mark.slow
def test_final_info_structure_is_pinned(tmp_path, tiny_lm, capsys, monkeypatch):
    """What final_info.json holds after a run with one eval that measures (separation) and one that
    skips (unlearning on the embedded profile): the blocks, their keys and the summary's entries.
    Refactors of the run directory and the eval plumbing keep this as it is."""
    monkeypatch.setattr(evals, "load_eval_model", lambda cfg, ctx: None)  # unlearning skips before it needs the model
    assert E.main(tiny_args(tmp_path, "run_1", "--evals", "separation,unlearning")) == 0
    info = json.loads((tmp_path / "run_1" / "final_info.json").read_text())
    # in the order written: the summary follows the first eval's result, later blocks go after it
    assert list(info) == ["training results for layer 1", "separation evaluation results", "summary", "unlearning evaluation results"]
    training = info["training results for layer 1"]
    assert list(training) == ["config", "final_info"]
    fields = [f.name for f in dataclasses.fields(E.Config)]
    assert list(training["config"]) == fields + ["steps", "activation_dim", "trainer_class", "dict_class"]
    assert training["config"]["lr"] == training["final_info"]["learning_rate"] > 0  # the resolved lr, not 0 (auto)
    assert training["config"]["evals"] == "separation,unlearning" and training["config"]["steps"] == 30
    assert list(training["final_info"]) == [
        "training_steps", "final_loss", "final_recon_loss", "layer", "dict_size", "learning_rate", "tokens", "seconds", "l0",
        "dead_fraction", "fvu", "ortho_impl", "ortho_lambda_mean", "ortho_scale", "ortho_scale_range", "ortho_share_mean", "ortho_grad_share_mean",
        "ortho_grad_share_range", "activation_scale", "activation_cache", "precision",
    ]  # fmt: skip  # the dose (ortho_*) is there for a run with the term on
    assert key_tree(info["separation evaluation results"], 1) == {
        "cofire_cos_mean": "float", "cofire_cos_p95": "float", "cofire_pairs": "int", "nn_cos_above_half": "float",
        "nn_cos_mean": "float", "alive_fraction": "float", "tokens": "int", "settings": "dict", "seconds": "float",
    }  # fmt: skip
    assert list(info["unlearning evaluation results"]) == ["skipped", "seconds"]
    from sae_harness.run.schema import METRICS

    assert list(info["summary"]) == [m.name for m in METRICS if not m.name.startswith("synth_")]  # a language model's run: no synth_* entry
    for name, entry in info["summary"].items():
        assert list(entry) == ["value", "se", "direction", "status", "std", "n", "values"], name
    ok = {name for name, entry in info["summary"].items() if entry["status"] == "ok"}
    assert ok == {"l0", "heldout_cofire_cos_mean", "heldout_cofire_cos_p95", "heldout_nn_cos_above_half"}
    assert info["summary"]["unlearning_score"]["status"].startswith("skipped: ")
    assert info["summary"]["heldout_cofire_cos_mean"]["value"] == info["separation evaluation results"]["cofire_cos_mean"]
    out = capsys.readouterr().out
    assert "eval: separation ok in" in out and "eval: unlearning skipped: " in out


@pytest.mark.slow
def test_multi_seed_final_info_structure_is_pinned(tmp_path, tiny_lm):
    """A two-seed run: each seed's run directory as a one-seed run's, the run's own final_info the
    aggregate (blocks by name, the seeds block, the summary with a spread)."""
    assert E.main(tiny_args(tmp_path, "run_1", "--evals", "separation", "--seeds", "2")) == 0
    run = tmp_path / "run_1"
    info = json.loads((run / "final_info.json").read_text())
    assert list(info) == ["training results for layer 1", "separation evaluation results", "seeds", "summary"]
    assert info["training results for layer 1"]["config"]["seed"] == [42, 43]
    assert info["training results for layer 1"]["final_info"]["seeds_trained"] == [42, 43]
    assert info["separation evaluation results"]["seeds"] == [42, 43]
    assert info["seeds"]["values"] == [42, 43] and list(info["seeds"]["per_seed"]) == ["42", "43"]
    assert info["seeds"]["per_seed"]["42"]["dir"] == "seed_42"
    entry = info["summary"]["heldout_cofire_cos_mean"]
    assert entry["n"] == 2 and entry["std"] is not None and len(entry["values"]) == 2
    for seed in (42, 43):
        one = json.loads((run / f"seed_{seed}" / "final_info.json").read_text())
        assert list(one) == ["training results for layer 1", "separation evaluation results", "summary"]
        assert one["summary"]["heldout_cofire_cos_mean"]["value"] == entry["values"][seed - 42]


def toy_eval(sae, inputs):
    """A stand-in for a new eval: a number from the SAE and the run's config."""
    return {"score": float(sae.W_dec.shape[0] * inputs.cfg.k)}


def test_a_new_eval_joins_with_one_registry_entry(tmp_path, tiny_lm, monkeypatch):
    """An entry in registry.EVALS is all a new eval needs: --evals takes it, it runs after training,
    final_info.json gets its block and the summary its metric. (The patches below stand for what
    registry.py and schema.py derive from EVALS when they are imported.)"""
    from sae_harness.evals import registry
    from sae_harness.run import schema

    block = "toy evaluation results"
    toy = registry.Eval(
        "toy", block, "test_experiment:toy_eval", metrics=(registry.Metric("toy_score", ((block, ("score",)),), registry.HIGHER),)
    )
    monkeypatch.setattr(registry, "EVALS", (*registry.EVALS, toy))
    monkeypatch.setattr(registry, "EVAL_NAMES", (*registry.EVAL_NAMES, "toy"))
    monkeypatch.setattr(schema, "METRICS", (*schema.METRICS, *toy.metrics))
    monkeypatch.setattr(schema, "EVAL_BLOCKS", schema.EVAL_BLOCKS | {block: "toy"})
    assert E.main(tiny_args(tmp_path, "run_1", "--evals", "toy")) == 0
    info = json.loads((tmp_path / "run_1" / "final_info.json").read_text())
    assert info[block]["score"] == 128 * 8 and info[block]["seconds"] >= 0
    assert info["summary"]["toy_score"]["value"] == 128 * 8 and info["summary"]["toy_score"]["direction"] == registry.HIGHER


@pytest.mark.slow
def test_off_a_terminal_the_log_is_one_plain_line_per_logged_step(tmp_path, tiny_lm, capsys):
    """stdout to a file or a job log: no redrawn bar (no carriage return), one line per logged step
    with the step, the loss terms, L0, the dead fraction and the seconds, and one per extraction chunk."""
    import re

    assert E.main(tiny_args(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "\r" not in out
    lines = [line for line in out.splitlines() if line.startswith("training step ")]
    pattern = r"training step (\d+)/30: loss \S+, recon \S+(, auxk \S+)?, ortho \S+, l0 [\d.]+, dead [\d.]+, [\d.]+ s"
    assert all(re.fullmatch(pattern, line) for line in lines), lines
    logged = [r["step"] + 1 for r in read_log(tmp_path / "run_1")]
    assert [int(re.match(r"training step (\d+)", line).group(1)) for line in lines] == logged
    chunks = [line for line in out.splitlines() if line.startswith("activations ")]
    assert chunks and all(re.fullmatch(r"activations \d+/\d+ tokens: chunk \d+ tokens, [\d.]+ s", line) for line in chunks), chunks


@pytest.mark.slow
def test_a_new_loss_term_is_one_function_and_one_entry(tmp_path, tiny_lm, monkeypatch, capsys):
    """A term added to TrainerTopK.loss_terms (here an L1 penalty on the kept activations) is in the
    loss and its gradient, the log (l1_loss), the progress line and the loss figure, with no other edit."""
    import plot
    from sae_harness.analysis import report

    original = E.TrainerTopK.loss_terms

    def with_l1(self, x_BD, out, *args):
        return original(self, x_BD, out, *args) | {"l1": E.Term(out.acts_BK.sum(-1).mean(), 1e-2)}

    assert E.main(tiny_args(tmp_path, "run_2")) == 0
    capsys.readouterr()
    monkeypatch.setattr(E.TrainerTopK, "loss_terms", with_l1)
    assert E.main(tiny_args(tmp_path, "run_1")) == 0
    log = read_log(tmp_path / "run_1")
    assert all(r["l1_loss"] > 0 for r in log)
    on_stride = [r for r in log if r["step"] % 5 == 0]  # where the logged ortho_loss is the one in the loss
    for r in on_stride:
        assert r["loss"] == pytest.approx(sum(v for k, v in r.items() if k.endswith("_loss")), rel=1e-5)
    assert log[-1]["recon_loss"] != pytest.approx(read_log(tmp_path / "run_2")[-1]["recon_loss"], rel=1e-6)  # its gradient acted
    assert all(", l1 " in line for line in capsys.readouterr().out.splitlines() if line.startswith("training step "))
    drawn = []  # the curves plot_losses draws, by label
    monkeypatch.setattr(plot.plt.Axes, "plot", lambda self, *a, **k: drawn.append(k.get("label")) or [plot.plt.Line2D([], [])])
    plot.plot_losses(report.load_run(tmp_path / "run_1"))
    assert any(label and label.startswith("l1") for label in drawn), drawn


def experiment_with(tmp_path, after: str, line: str):
    """experiment.py with one line added after the line `after`, imported as a module of its own."""
    import importlib.util
    import sys

    source = (E.HERE / "experiment.py").read_text()
    assert source.count(after) == 1
    path = tmp_path / "experiment_edited.py"
    path.write_text(source.replace(after, after + "\n" + line))
    spec = importlib.util.spec_from_file_location("experiment_edited", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["experiment_edited"] = module  # the dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


def test_a_new_arm_is_one_entry(tmp_path, tiny_lm, monkeypatch):
    """One line added to ARMS is all a new arm needs: --variant takes it, its schedule follows the
    entry, sweep.py plans it, and it trains end to end."""
    import sweep

    M = experiment_with(tmp_path, '    "progressive": Arm(),  # the idea', '    "progressive_fixed_thr": Arm(threshold="start"),')
    cfg = M.parse_args(["--out_dir", str(tmp_path / "x"), "--variant", "progressive_fixed_thr"])
    cli.validate(cfg)
    assert M.ortho_threshold(0.5, cfg) == cfg.ortho_base_threshold
    assert M.ortho_lambda(0.5, cfg) == pytest.approx(cfg.ortho_lambda_max * 0.25)
    monkeypatch.setattr(sweep, "E", M)
    args, passthrough = sweep.parse(["--variants", "none,progressive_fixed_thr", "--seeds", "1", "--runs_dir", str(tmp_path / "sweeps")])
    runs = sweep.plan(args, passthrough + ["--evals", "none"])
    assert [(r.arm, r.cfg.variant) for r in runs] == [("none", "none"), ("progressive_fixed_thr", "progressive_fixed_thr")]
    assert M.main(tiny_args(tmp_path, "run_1", "--variant", "progressive_fixed_thr")) == 0
    log = read_log(tmp_path / "run_1")
    assert {r["threshold"] for r in log} == {0.25} and log[0]["ortho_lambda"] > log[-1]["ortho_lambda"] > 0
