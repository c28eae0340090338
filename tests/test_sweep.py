"""sweep.py end to end on one machine (runs forked from one process, workers.py): a two-arm, two-seed sweep of a tiny
Gemma 3 saved as a local model folder (the jobs are subprocesses, so nothing is monkeypatched)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sae_harness.run import precision

ROOT = Path(__file__).resolve().parents[1]


def sweep(tmp_path, *extra):
    tiny = [
        "--lm_name", str(tmp_path / "tiny-gemma"), "--layer", "1", "--tokens", "3000", "--epochs", "1", "--dict_size", "128", "--k", "8",
        "--batch_size", "100", "--context_length", "32", "--llm_batch_size", "4", "--evals", "separation",
        "--heldout_tokens", "1500", "--cache_dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    command = [sys.executable, "sweep.py", "--seeds", "2", "--executor", "local"]
    command += [] if "--variants" in extra else ["--variants", "none,progressive"]
    command += ["--runs_dir", str(tmp_path / "sweeps"), "--results", str(tmp_path / "results"), *tiny, *extra]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=900)


@pytest.mark.slow
def test_two_arm_two_seed_sweep_end_to_end_then_resume(tmp_path):
    from conftest import make_tiny_gemma3, tiny_tokenizer

    make_tiny_gemma3().save_pretrained(tmp_path / "tiny-gemma")
    tiny_tokenizer().save_pretrained(tmp_path / "tiny-gemma")
    done = sweep(tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "4 to run" in done.stdout and "local: 4 runs" in done.stdout
    result = json.loads((tmp_path / "results" / "ablation.json").read_text())
    assert (tmp_path / "results" / "ablation.png").stat().st_size > 0
    from sae_harness.analysis.formatting import results_markdown

    assert (tmp_path / "results" / "ablation.md").read_text().strip() == results_markdown(result)
    assert sorted((r["arm"], r["seed"]) for r in result["runs"]) == [("none", 42), ("none", 43), ("progressive", 42), ("progressive", 43)]
    for record in result["runs"]:
        assert record["config"]["variant"] == record["arm"] and record["config"]["seed"] == record["seed"]
        assert record["summary"]["heldout_cofire_cos_mean"]["status"] == "ok"
        assert (Path(record["run_dir"]) / "sae").is_dir()
    arm = result["arms"]["progressive"]["summary"]["heldout_cofire_cos_mean"]
    per_seed = [r["summary"]["heldout_cofire_cos_mean"]["value"] for r in result["runs"] if r["arm"] == "progressive"]
    assert arm["n"] == 2 and arm["values"] == pytest.approx(per_seed) and arm["value"] == pytest.approx(sum(per_seed) / 2)
    vs = result["arms"]["progressive"]["vs_baseline"]["heldout_cofire_cos_mean"]
    base = result["arms"]["none"]["summary"]["heldout_cofire_cos_mean"]["value"]
    assert vs["delta"] == pytest.approx(arm["value"] - base) and vs["lo"] <= vs["delta"] <= vs["hi"]
    paired = result["arms"]["progressive"]["paired_vs_baseline"]["heldout_cofire_cos_mean"]
    by_seed = {(r["arm"], r["seed"]): r["summary"]["heldout_cofire_cos_mean"]["value"] for r in result["runs"]}
    diffs = [by_seed["progressive", s] - by_seed["none", s] for s in (42, 43)]
    assert paired["n"] == 2 and paired["delta"] == pytest.approx(vs["delta"]) and paired["lo"] <= paired["delta"] <= paired["hi"]
    assert paired["hi"] - paired["lo"] == pytest.approx(2 * 12.7062 * abs(diffs[0] - diffs[1]) / 2, rel=1e-4)  # t(0.975, 1) x SE
    assert "p_holm" in paired
    assert result["arms"]["progressive"]["paired_vs_baseline"]["l0"]["p_holm"] is None  # a reference metric: not in the family
    assert result["baseline"] == "none" and result["directions"]["heldout_cofire_cos_mean"] == "lower is better"
    arm_info = json.loads((tmp_path / "sweeps" / "ablation" / "none" / "final_info.json").read_text())
    assert arm_info["seeds"]["values"] == [42, 43]  # each arm reads like a multi-seed run of experiment.py

    # the arms against another arm than the baseline, paired by seed: none - progressive is -(progressive - none)
    against = sweep(tmp_path, "--collect", "--against", "progressive")
    assert against.returncode == 0, against.stderr[-2000:]
    result = json.loads((tmp_path / "results" / "ablation.json").read_text())
    reverse = result["against"]["progressive"]["none"]["paired_vs_baseline"]["heldout_cofire_cos_mean"]
    assert reverse["delta"] == pytest.approx(-paired["delta"]) and reverse["lo"] == pytest.approx(-paired["hi"])
    assert "Each arm against `progressive`" in (tmp_path / "results" / "ablation.md").read_text()
    assert (tmp_path / "results" / "ablation.md").read_text().strip() == results_markdown(result)
    unknown = sweep(tmp_path, "--collect", "--against", "nope")
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1 and "--against nope: not an arm" in unknown.stderr

    # one run lost its eval (as if interrupted): only that run goes through the engine again
    lost = tmp_path / "sweeps" / "ablation" / "none" / "seed_43" / "final_info.json"
    info = json.loads(lost.read_text())
    del info["separation evaluation results"]
    lost.write_text(json.dumps(info))
    again = sweep(tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "3 finished, 1 to run" in again.stdout and "none seed 43: resume" in again.stdout
    assert "separation evaluation results" in json.loads(lost.read_text())

    # other options for finished runs: refused with one line, nothing submitted
    other = sweep(tmp_path, "--k", "4")
    assert other.returncode == 2 and other.stderr.count("\n") == 1 and "other options" in other.stderr

    # another sweep's results JSON as the baseline (a baseline run apart, e.g. in another session)
    (tmp_path / "base.json").write_text((tmp_path / "results" / "ablation.json").read_text())
    apart = sweep(tmp_path, "--variants", "progressive", "--collect", "--baseline", f"{tmp_path / 'base.json'}#none")
    assert apart.returncode == 0, apart.stderr[-2000:]
    result = json.loads((tmp_path / "results" / "ablation.json").read_text())
    assert list(result["arms"]) == [f"baseline: {tmp_path / 'base.json'}#none", "progressive"]
    assert result["baseline_config_differences"] == [] and "differs" not in apart.stdout
    assert result["arms"]["progressive"]["vs_baseline"]["heldout_cofire_cos_mean"]["delta"] == pytest.approx(vs["delta"])
    assert result["arms"]["progressive"]["paired_vs_baseline"]["heldout_cofire_cos_mean"]["lo"] == pytest.approx(paired["lo"])
    base = json.loads((tmp_path / "base.json").read_text())
    for run in base["runs"]:
        run["config"]["lr"] = 1.0  # a baseline trained differently is named, not refused
    (tmp_path / "base.json").write_text(json.dumps(base))
    apart = sweep(tmp_path, "--variants", "progressive", "--collect", "--baseline", str(tmp_path / "base.json"))
    assert apart.returncode == 0 and "differs from this sweep's in lr" in apart.stdout
    assert json.loads((tmp_path / "results" / "ablation.json").read_text())["baseline_config_differences"] == ["lr"]
    missing = sweep(tmp_path, "--variants", "progressive", "--collect", "--baseline", f"{tmp_path / 'base.json'}#nope")
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "has no arm 'nope'" in missing.stderr

    # an arm of another sweep as the baseline (e.g. a lambda sweep of progressive against the ablation's none)
    alone = sweep(tmp_path, "--variants", "progressive", "--collect", "--baseline", str(tmp_path / "sweeps" / "ablation" / "none"))
    assert alone.returncode == 0, alone.stderr[-2000:]
    result = json.loads((tmp_path / "results" / "ablation.json").read_text())
    assert result["baseline"].endswith("ablation/none") and list(result["arms"])[1:] == ["progressive"]
    assert result["arms"]["progressive"]["vs_baseline"]["heldout_cofire_cos_mean"]["delta"] == pytest.approx(vs["delta"])
    assert result["arms"]["progressive"]["paired_vs_baseline"]["heldout_cofire_cos_mean"]["lo"] == pytest.approx(paired["lo"])


@pytest.mark.slow
def test_synth_sweep_end_to_end(tmp_path):
    """The synth profile through sweep.py (subprocess jobs): a tiny world from a JSON file, two arms
    at two seeds, the ground-truth metrics paired by seed, and the dose recorded per run."""
    from test_synth import TINY

    world = tmp_path / "tiny.json"
    world.write_text(json.dumps(TINY))
    command = [sys.executable, "sweep.py", "--name", "synth_tiny", "--seeds", "2", "--executor", "local", "--variants", "none,progressive"]
    command += ["--runs_dir", str(tmp_path / "sweeps"), "--results", str(tmp_path / "results"), "--cache_dir", str(tmp_path / "cache")]
    command += ["--profile", "synth", "--lm_name", f"synth:{world}", "--tokens", "4096", "--epochs", "2", "--dict_size", "64", "--k", "4"]
    command += ["--batch_size", "256"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads((tmp_path / "results" / "synth_tiny.json").read_text())
    assert result["profile"] == "synth" and len(result["runs"]) == 4
    for record in result["runs"]:
        assert record["summary"]["synth_absorption"]["status"] == "ok"
        assert bool(record["dose"]) == (record["arm"] == "progressive")  # none has no term, so no dose
        assert record["seconds"] > 0 and record["cpu"] == precision.cpu_model()  # the cost, and the machine it is on
    paired = result["arms"]["progressive"]["paired_vs_baseline"]["synth_absorption"]
    by_seed = {(r["arm"], r["seed"]): r["summary"]["synth_absorption"]["value"] for r in result["runs"]}
    assert paired["n"] == 2 and paired["delta"] == pytest.approx(sum(by_seed["progressive", s] - by_seed["none", s] for s in (42, 43)) / 2)
    dose = next(r["dose"] for r in result["runs"] if r["arm"] == "progressive")
    assert dose["ortho_share_mean"] > 0 and dose["ortho_scale_range"][0] <= dose["ortho_scale"] <= dose["ortho_scale_range"][1]

    # seed by seed: a further seed's call adds to the results JSON, it does not replace it
    at = lambda *seeds: [*command[:4], *command[6:], *seeds]  # noqa: E731  (the command without its --seeds 2)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    more = subprocess.run(at("--seed", "44", "--seeds", "1"), cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
    assert more.returncode == 0 and "2 runs, 0 finished, 2 to run" in more.stdout, more.stderr[-2000:]
    grown = json.loads((tmp_path / "results" / "synth_tiny.json").read_text())
    assert sorted((r["arm"], r["seed"]) for r in grown["runs"]) == [(a, s) for a in ("none", "progressive") for s in (42, 43, 44)]
    assert grown["runs"][:2] == result["runs"][:2] and grown["arms"]["progressive"]["paired_vs_baseline"]["synth_absorption"]["n"] == 3

    # a checkout without the run directories (a new session, another machine): the records stand in for them
    (tmp_path / "sweeps").rename(tmp_path / "elsewhere")
    kept = subprocess.run(at("--seeds", "42,43,44", "--collect"), cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
    assert kept.returncode == 0 and "6 runs read from" in kept.stdout, kept.stderr[-2000:]
    again = json.loads((tmp_path / "results" / "synth_tiny.json").read_text())
    assert again["runs"] == grown["runs"] and again["arms"] == grown["arms"]
    rerun = subprocess.run(at("--seeds", "42,43,44", "--dry_run"), cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
    assert "6 runs, 6 finished, 0 to run" in rerun.stdout, rerun.stderr[-2000:]  # finished runs are not trained again
    other = subprocess.run(at("--seeds", "42,43", "--collect", "--k", "8"), cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
    assert other.returncode == 2 and other.stderr.count("\n") == 1 and "none seed 42 with other options (k" in other.stderr


@pytest.mark.slow
def test_collect_from_json_rebuilds_paired_comparisons_from_the_per_run_records(tmp_path):
    """A sweep whose run directories are gone: its JSON's per-run records give the paired intervals."""
    ok = lambda v: {"status": "ok", "value": v, "direction": "lower is better", "se": None, "std": None, "n": 1, "values": [v]}  # noqa: E731
    runs, values = [], {"none": [0.50, 0.60, 0.55], "idea": [0.45, 0.56, 0.49]}
    for arm, vals in values.items():
        runs += [dict(arm=arm, seed=42 + i, summary={"synth_absorption": ok(v)}) for i, v in enumerate(vals)]
    arm_summary = lambda vals: {"synth_absorption": ok(sum(vals) / 3) | {"n": 3, "values": vals, "std": 0.05}}  # noqa: E731
    result = dict(baseline="none", runs=runs, arms={arm: dict(summary=arm_summary(vals)) for arm, vals in values.items()})
    (tmp_path / "old.json").write_text(json.dumps(result))
    command = [sys.executable, "sweep.py", "--name", "old", "--results", str(tmp_path), "--collect", "--from_json"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rebuilt = json.loads((tmp_path / "old.json").read_text())
    paired = rebuilt["arms"]["idea"]["paired_vs_baseline"]["synth_absorption"]
    assert (
        paired["n"] == 3 and paired["delta"] == pytest.approx(-0.05) and paired["lo"] < -0.05 < paired["hi"] < 0
    )  # diffs -0.05, -0.04, -0.06
    assert "paired [" in (tmp_path / "old.md").read_text()
    missing = subprocess.run(
        [*command[:4], "--results", str(tmp_path / "none"), "--collect", "--from_json"], cwd=ROOT, capture_output=True, text=True
    )
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "cannot read" in missing.stderr


def test_every_run_of_a_sweep_gets_one_precision_and_a_resume_keeps_it(tmp_path, monkeypatch):
    """auto rests on a speed probe that flips under load: the sweep resolves it once and pins it for
    every job, and a later launch of the same sweep takes what its finished runs recorded."""
    import sweep
    from sae_harness.run import precision

    calls = []
    monkeypatch.setattr(precision, "choose", lambda requested, device: calls.append(requested) or __import__("torch").bfloat16)
    argv = ["--name", "p", "--runs_dir", str(tmp_path), "--variants", "none,progressive", "--seeds", "2", "--profile", "synth"]
    runs = sweep.plan(*sweep.parse(argv))
    assert calls == ["auto", "auto"]  # llm_dtype and sae_dtype, once each for the whole sweep
    assert {(r.cfg.llm_dtype, r.cfg.sae_dtype) for r in runs} == {("bfloat16", "bfloat16")}
    recorded = tmp_path / "p" / "none" / "seed_42"
    recorded.mkdir(parents=True)
    config = dict(profile="synth", variant="none", llm_dtype="float32", sae_dtype="float32", seed=42)
    (recorded / "final_info.json").write_text(json.dumps({"training results for layer 0": {"config": config, "final_info": {}}}))
    runs = sweep.plan(*sweep.parse(argv))
    assert calls == ["auto", "auto"] and {r.cfg.sae_dtype for r in runs} == {"float32"}  # from the finished run, no probe
    runs = sweep.plan(*sweep.parse([*argv, "--sae_dtype", "bfloat16"]))
    assert {r.cfg.sae_dtype for r in runs} == {"bfloat16"}  # given: left alone
    # a checkout without the run directories: the results JSON's finished records say it
    (recorded / "final_info.json").unlink()
    (tmp_path / "p.json").write_text(json.dumps({"runs": [dict(arm="none", seed=42, state="finished", config=config)]}))
    runs = sweep.plan(*sweep.parse([*argv, "--results", str(tmp_path)]))
    assert calls == ["auto", "auto"] and {r.cfg.sae_dtype for r in runs} == {"float32"}
