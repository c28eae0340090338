"""Seeds in one run, their aggregation, Welch intervals, the matched-dose static arm and the
held-out separation measures, each against a brute-force reference."""

import itertools
import json
import math
import random

import pytest
import torch
from conftest import tiny_args

import experiment as E
from sae_harness.analysis.compare import welch
from sae_harness.analysis.stats import welch_interval
from sae_harness.evals import separation
from sae_harness.run import cli
from sae_harness.run.rundir import Interrupted, UsageError
from sae_harness.run.schema import aggregate, combine_summaries, summarize

# ---------------------------------------------------------------- seeds


@pytest.mark.parametrize(
    "spec, seed, expected", [("1", 42, [42]), ("3", 42, [42, 43, 44]), ("3", 7, [7, 8, 9]), ("5,9", 42, [5, 9]), ("11,", 42, [11])]
)
def test_seed_list(spec, seed, expected):
    assert cli.seed_list(E.Config(seeds=spec, seed=seed)) == expected


@pytest.mark.parametrize("spec", ["0", "-2", "a", "4,4", ","])
def test_bad_seeds_are_one_line_usage_errors(spec):
    with pytest.raises(UsageError, match="seeds"):
        cli.seed_list(E.Config(seeds=spec))


def info_with(absorption=None, ev=None, seed=42, error=None):
    info = {
        "training results for layer 9": {"config": {"seed": seed, "profile": "gemma-3-270m", "variant": "none"}, "final_info": {"l0": 64}}
    }
    if absorption is not None:
        info["absorption evaluation results"] = {"eval_result_metrics": {"mean": {"mean_full_absorption_score": absorption}}, "seconds": 10}
    if error:
        info["core evaluation results"] = {"error": error}
    elif ev is not None:
        info["core evaluation results"] = {
            "eval_result_metrics": {"reconstruction_quality": {"explained_variance_legacy": ev}},
            "name": "x",
        }
    return info


def test_aggregate_mean_std_n_values_and_blocks_keep_their_names():
    per_seed = {42: info_with(0.5, 0.8, 42), 43: info_with(0.3, 0.7, 43), 44: info_with(0.4, 0.9, 44)}
    info = aggregate(per_seed, {42: "seed_42", 43: "seed_43", 44: "seed_44"})
    entry = info["summary"]["absorption_full"]
    assert entry["value"] == pytest.approx(0.4) and entry["n"] == 3 and entry["values"] == [0.5, 0.3, 0.4]
    assert entry["std"] == pytest.approx(0.1)  # sample std (n - 1)
    assert entry["direction"] == "lower is better" and entry["status"] == "ok"
    assert info["summary"]["explained_variance"]["std"] == pytest.approx(0.1)
    # the top-level blocks hold the mean of every number, so a one-seed reader reads the mean
    assert info["absorption evaluation results"]["eval_result_metrics"]["mean"]["mean_full_absorption_score"] == pytest.approx(0.4)
    assert info["core evaluation results"]["name"] == "x"
    assert info["training results for layer 9"]["config"]["seed"] == [42, 43, 44]
    assert summarize(json.loads(json.dumps(info))) == info["summary"]  # self-contained, survives JSON
    assert info["seeds"]["per_seed"]["43"]["dir"] == "seed_43"


def test_aggregate_error_in_one_seed_names_it_and_partial_metrics_say_n():
    info = aggregate({1: info_with(0.5, 0.8), 2: info_with(0.3, error="RuntimeError: boom")})
    assert info["core evaluation results"] == {"error": "seed 2: RuntimeError: boom"}
    assert info["summary"]["explained_variance"]["n"] == 1 and info["summary"]["explained_variance"]["value"] == 0.8
    assert info["summary"]["absorption_full"]["n"] == 2
    # a seed that has not trained yet is left out of the means
    info = aggregate({1: info_with(0.5), 2: {}})
    assert info["summary"]["absorption_full"]["n"] == 1 and info["training results for layer 9"]["final_info"]["seeds_trained"] == [1]


def test_combine_single_seed_summaries_matches_summarize():
    one = summarize(info_with(0.5, 0.8))
    assert one["absorption_full"]["n"] == 1 and one["absorption_full"]["std"] is None and one["absorption_full"]["values"] == [0.5]
    assert combine_summaries([one])["absorption_full"]["value"] == 0.5


# ---------------------------------------------------------------- Welch's interval


def test_welch_interval_matches_scipy():
    from scipy import stats

    rng = random.Random(0)
    for _ in range(20):
        a = [rng.gauss(0, rng.uniform(0.1, 2)) for _ in range(rng.randint(2, 8))]
        b = [rng.gauss(rng.uniform(-1, 1), rng.uniform(0.1, 2)) for _ in range(rng.randint(2, 8))]
        got = welch_interval(a, b)
        ref = stats.ttest_ind(b, a, equal_var=False).confidence_interval(0.95)
        assert got["delta"] == pytest.approx(sum(b) / len(b) - sum(a) / len(a))
        assert (got["lo"], got["hi"]) == pytest.approx((ref.low, ref.high), rel=1e-9, abs=1e-12)
        assert got["within_noise"] == (ref.low <= 0 <= ref.high)


def test_welch_interval_covers_the_true_difference_about_95_percent():
    rng = random.Random(1)
    covered = 0
    for _ in range(2000):
        a = [rng.gauss(0.0, 1.0) for _ in range(5)]
        b = [rng.gauss(0.3, 0.5) for _ in range(5)]
        w = welch_interval(a, b)
        covered += w["lo"] <= 0.3 <= w["hi"]
    assert 0.93 < covered / 2000 < 0.97


def test_welch_interval_edge_cases():
    assert welch_interval([1.0], [2.0, 3.0])["lo"] is None  # one seed: no interval
    assert welch_interval([1.0, 1.0], [1.0, 1.0])["within_noise"] is True
    assert welch_interval([], [1.0]) is None
    far = welch(summarize(info_with(0.9)) | {}, summarize(info_with(0.1)))
    assert far["absorption_full"]["lo"] is None and far["absorption_full"]["delta"] == pytest.approx(0.8)


# ---------------------------------------------------------------- matched dose


@pytest.mark.parametrize("schedule", ["quadratic", "constant"])
def test_static_matched_gets_progressives_dose(schedule):
    def dose(variant):
        cfg = E.Config(variant=variant, weight_schedule=schedule, ortho_lambda_max=1.7)
        n = 20000
        return sum(E.ortho_lambda((i + 0.5) / n, cfg) for i in range(n)) / n  # midpoint rule for the integral over p

    assert dose("static_matched") == pytest.approx(dose("progressive"), rel=1e-6)
    assert dose("static") == pytest.approx(1.7)
    if schedule == "quadratic":
        assert dose("static_matched") == pytest.approx(1.7 / 3)
    cfg = E.Config(variant="static_matched", ortho_base_threshold=0.25)
    assert E.ortho_threshold(0.9, cfg) == 0.25  # threshold held at p=0, as static


def test_static_matched_from_the_cli(tmp_path):
    cfg = E.parse_args(["--out_dir", str(tmp_path / "run_1"), "--variant", "static_matched", "--profile", "gemma-3-270m"])
    assert cfg.variant == "static_matched" and E.ortho_lambda(0.5, cfg) == pytest.approx(cfg.ortho_lambda_max / 3)
    with pytest.raises(UsageError, match="invalid choice"):
        E.parse_args(["--out_dir", "x", "--variant", "static_matchd"])


# ---------------------------------------------------------------- held-out separation


def brute_force_separation(W_dec, idx):
    """The definition, by loops over latents and pairs."""
    F = len(W_dec)
    fires = [set() for _ in range(F)]
    for t, row in enumerate(idx.tolist()):
        for i in row:
            if i >= 0:
                fires[i].add(t)
    W = W_dec / W_dec.norm(dim=-1, keepdim=True)
    cos = []
    for i, j in itertools.combinations(range(F), 2):
        if len(fires[i]) >= separation.MIN_FIRES and len(fires[j]) >= separation.MIN_FIRES:
            if len(fires[i] & fires[j]) / min(len(fires[i]), len(fires[j])) >= separation.COFIRE_MIN_N:
                cos.append(abs(float(W[i] @ W[j])))
    nn = [max(abs(float(W[i] @ W[j])) for j in range(F) if j != i) for i in range(F)]
    cos.sort()
    return dict(
        mean=sum(cos) / len(cos),
        p95=cos[int(0.95 * (len(cos) - 1))],
        pairs=len(cos),
        above=sum(v > 0.5 for v in nn) / F,
        alive=sum(bool(f) for f in fires) / F,
    )


def test_separation_measures_match_brute_force():
    g = torch.Generator().manual_seed(0)
    F, D, N, K = 40, 8, 600, 4
    W_dec = torch.randn(F, D, generator=g)
    W_dec[1] = W_dec[0] + 0.1 * torch.randn(D, generator=g)  # a near-duplicate pair
    idx = torch.stack([torch.randperm(F - 5, generator=g)[:K] for _ in range(N)])  # the last 5 latents never fire
    idx[::3, 0], idx[::3, 1] = 0, 1  # latents 0 and 1 co-fire often
    idx[::3, 2:] = torch.where(idx[::3, 2:] <= 1, 7, idx[::3, 2:])
    idx[::7, 3] = -1  # a token where a kept latent had activation 0
    got = separation.separation_measures(W_dec, idx)
    ref = brute_force_separation(W_dec, idx)
    assert got["cofire_pairs"] == ref["pairs"] > 0
    assert got["cofire_cos_mean"] == pytest.approx(ref["mean"], rel=1e-5)
    assert got["cofire_cos_p95"] == pytest.approx(ref["p95"], rel=1e-5)
    assert got["nn_cos_above_half"] == pytest.approx(ref["above"]) and got["nn_cos_above_half"] >= 2 / F
    assert got["alive_fraction"] == pytest.approx(ref["alive"])


def test_top_k_indices_are_the_saes_own_latents():
    sae = E.AutoEncoderTopK(16, 64, 4, "m", 0, device="cpu", seed=0)
    x = torch.randn(50, 16)
    idx = separation.top_k_indices(sae, x)
    acts = sae.encode(x)
    for row, a in zip(idx.tolist(), acts):
        assert {i for i in row if i >= 0} == set(a.nonzero().squeeze(1).tolist())


# ---------------------------------------------------------------- several seeds end to end (tiny model)


@pytest.mark.slow
def test_seeds_in_one_run_share_data_and_resume_the_unfinished_seed(tmp_path, tiny_lm, monkeypatch):
    import os
    import signal

    args = tiny_args(tmp_path, "run_1", "--seeds", "2", "--evals", "separation", "--heldout_tokens", "1500")
    original = E.TrainerTopK.update

    def interrupting(self, x, step):  # stop the second seed half way
        if step == 12 and self.cfg.seed == 43:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, x, step)

    monkeypatch.setattr(E.TrainerTopK, "update", interrupting)
    with pytest.raises(Interrupted):
        E.main(args)
    run = tmp_path / "run_1"
    first = (run / "seed_42" / "final_info.json").stat().st_mtime_ns
    assert (run / "seed_43" / "checkpoint.pt").exists()
    partial = json.loads((run / "final_info.json").read_text())  # written after each seed: seed 42's results so far
    assert partial["summary"]["heldout_cofire_cos_mean"]["n"] == 1 and partial["seeds"]["values"] == [42, 43]
    monkeypatch.setattr(E.TrainerTopK, "update", original)
    assert E.main(args) == 0
    assert (run / "seed_42" / "final_info.json").stat().st_mtime_ns == first  # the finished seed was left alone
    per_seed = {s: json.loads((run / f"seed_{s}" / "final_info.json").read_text()) for s in (42, 43)}
    blocks = {s: i["training results for layer 1"] for s, i in per_seed.items()}
    assert [b["config"]["seed"] for b in blocks.values()] == [42, 43]
    # one activation cache and one held-out split for both seeds; different SAEs
    assert blocks[42]["final_info"]["activation_cache"] == blocks[43]["final_info"]["activation_cache"]
    assert (run / "seed_42" / "split.json").read_text() == (run / "seed_43" / "split.json").read_text()
    assert len(list((tmp_path / "cache").glob("acts-*"))) == 2  # training + held-out
    a, b = E.load_sae(run / "seed_42" / "sae"), E.load_sae(run / "seed_43" / "sae")
    assert not torch.equal(a.W_dec, b.W_dec)
    info = json.loads((run / "final_info.json").read_text())
    entry = info["summary"]["heldout_cofire_cos_mean"]
    values = [per_seed[s]["separation evaluation results"]["cofire_cos_mean"] for s in (42, 43)]
    assert entry["n"] == 2 and entry["values"] == pytest.approx(values)
    assert entry["value"] == pytest.approx(sum(values) / 2) and entry["std"] == pytest.approx(abs(values[0] - values[1]) / math.sqrt(2))
    assert info["separation evaluation results"]["cofire_cos_mean"] == pytest.approx(entry["value"])
    notes = (tmp_path / "notes.txt").read_text()
    assert "## Run 1:" in notes and "n=2" in notes and "seeds 42, 43" in notes


@pytest.mark.slow
def test_finished_multi_seed_run_is_refused(tmp_path, tiny_lm):
    args = tiny_args(tmp_path, "run_2", "--seeds", "42,44", "--tokens", "1000")
    assert E.main(args) == 0
    with pytest.raises(UsageError, match="finished run"):
        E.main(args)


def test_lm_name_accepts_a_local_model_folder(tmp_path):
    from conftest import make_tiny_gemma3, tiny_tokenizer

    from sae_harness.run import data

    folder = tmp_path / "tiny-gemma"
    make_tiny_gemma3().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    data.check_model_available(str(folder))  # no error for a folder
    cfg = E.parse_args(["--out_dir", str(tmp_path / "run_1"), "--lm_name", str(folder), "--layer", "1"])
    model, tok = data.load_language_model(cfg, torch.device("cpu"))
    assert model.config.hidden_size == 64 and tok("ab")["input_ids"][-2:] == [4 + ord("a") - 32, 4 + ord("b") - 32]
    assert data.cache_path(cfg).name.startswith("acts-tiny-gemma-L1-")


def test_multi_seed_out_dir_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "run_3").write_text("not a run")
    with pytest.raises(UsageError, match="is a file"):
        E.main(tiny_args(tmp_path, "run_3", "--seeds", "2"))


# ---------------------------------------------------------------- the quoted results tables


def _arm(values_by_metric):
    return {
        "summary": combine_summaries([{m: {"value": v, "se": None, "status": "ok"} for m, v in run.items()} for run in values_by_metric])
    }


def test_results_markdown_cells_are_mean_std_n_and_welch_delta():
    from sae_harness.analysis.formatting import results_markdown

    rng = random.Random(0)
    runs = {
        arm: [{"explained_variance": rng.gauss(mu, 0.01), "absorption_full": rng.gauss(0.5, 0.05)} for _ in range(5)]
        for arm, mu in (("none", 0.8), ("progressive", 0.7))
    }
    arms = {arm: _arm(r) for arm, r in runs.items()}
    arms["progressive"]["vs_baseline"] = welch(arms["progressive"]["summary"], arms["none"]["summary"])
    table = results_markdown({"arms": arms}).splitlines()
    assert table[0] == "| metric (direction) | `none` | `progressive` |"
    ev_row = next(line for line in table if line.startswith("| explained_variance"))
    ev = [r["explained_variance"] for r in runs["progressive"]]
    mean, std = sum(ev) / 5, math.sqrt(sum((v - sum(ev) / 5) ** 2 for v in ev) / 4)
    cmp = welch_interval([r["explained_variance"] for r in runs["none"]], ev)
    assert f"{mean:.4g} ± {std:.4g} (n=5); Δ {cmp['delta']:+.3g} [{cmp['lo']:.4g}, {cmp['hi']:.4g}] |" in ev_row
    assert "within noise" not in ev_row  # 0.1 apart with std 0.01
    assert "kl_div_score" not in "\n".join(table)  # no arm has it: no row


def test_every_results_table_is_generated_from_its_json_and_the_history_quotes_it():
    """Every results/<name>.md is what results_markdown (a sweep), frontier.markdown (a frontier
    reading) or mechanism.markdown makes of results/<name>.json, and results/history.md quotes each
    verbatim: no quoted table can drift from the numbers."""
    from pathlib import Path

    from sae_harness.analysis import frontier, mechanism
    from sae_harness.analysis.formatting import results_markdown

    root = Path(__file__).resolve().parent.parent
    history = (root / "results" / "history.md").read_text()
    sweeps = (md for md in (root / "results").glob("*.md") if md.name not in ("README.md", "history.md") and ".verdict" not in md.name)
    tables = sorted(md for md in sweeps if md.with_suffix(".json").exists() and "arms" in json.loads(md.with_suffix(".json").read_text()))
    assert len(tables) > 20
    for md in tables:
        result = json.loads(md.with_suffix(".json").read_text())
        kind = frontier if "ys" in result else mechanism if result.get("kind") == "mechanism" else None
        expected = kind.markdown(result) if kind else results_markdown(result)
        assert md.read_text().strip() == expected, f"{md.name} is stale: rerun python sweep.py --collect with that sweep's options"
        assert expected in history, f"results/history.md does not quote results/{md.name}"


def test_the_readmes_quote_the_registered_verdicts_as_generated():
    """README.md and results/README.md quote `python study.py table` verbatim: the verdicts a reader
    meets first are the ones the registered rule computes from the records."""
    from pathlib import Path

    import study

    root = Path(__file__).resolve().parent.parent
    table = study.table(sorted((root / "studies").glob("*.toml")), root)
    for readme in ("README.md", "results/README.md"):
        assert table in (root / readme).read_text(), f"{readme} does not quote python study.py table's output"


# ---------------------------------------------------------------- a sweep re-read over eval seeds


def _eval_noise_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "eval_noise.py"
    spec = importlib.util.spec_from_file_location("eval_noise", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _entry(value, se=None):
    return {"value": value, "se": se, "direction": "x", "status": "ok", "std": None, "n": 1, "values": [value]}


def test_eval_seed_compare_averages_each_sae_then_compares_arms(tmp_path):
    """Each run's absorption becomes its mean over the eval seeds all runs share; arms are then
    compared on those means (brute force here); metrics not re-evaluated keep their value."""
    from sae_harness.analysis.formatting import results_markdown

    eval_noise = _eval_noise_module()
    rng = random.Random(1)
    records, by_run = [], {}
    for arm, mu in (("none", 0.7), ("progressive", 0.6)):
        for seed in (42, 43, 44):
            run = tmp_path / arm / f"seed_{seed}"
            run.mkdir(parents=True)
            own = {"absorption_full": _entry(rng.gauss(mu, 0.03), 0.03), "explained_variance": _entry(rng.gauss(0.88, 0.001))}
            later = {s: rng.gauss(mu, 0.03) for s in (43, 44, 45)}
            seeds = (43, 44, 45) if seed != 44 else (43, 44)  # one run lacks eval seed 45: only 42-44 are shared
            runs = [{"eval_seed": 42, "summary": own, "seconds": None}]
            runs += [{"eval_seed": s, "summary": {"absorption_full": _entry(later[s], 0.03)}, "seconds": {"absorption": 1}} for s in seeds]
            (run / "eval_noise.json").write_text(json.dumps({"runs": runs}))
            records.append({"arm": arm, "variant": arm, "seed": seed, "run_dir": str(run), "summary": own})
            by_run[str(run)] = [own["absorption_full"]["value"], later[43], later[44]]
    sweep = {"name": "abl", "baseline": "none", "arms": {"none": {"variant": "none"}, "progressive": {"variant": "progressive"}}}
    (tmp_path / "abl.json").write_text(json.dumps(sweep | {"runs": records}))

    assert eval_noise.main(["--compare", str(tmp_path / "abl.json"), "--results", str(tmp_path / "results")]) == 0
    result = json.loads((tmp_path / "results" / "abl_evalseeds.json").read_text())
    assert result["eval_seeds"] == [42, 43, 44] and result["eval_seed_mean"] == ["absorption_full"]
    means = {arm: [sum(by_run[r["run_dir"]]) / 3 for r in records if r["arm"] == arm] for arm in ("none", "progressive")}
    absorption = result["arms"]["progressive"]["summary"]["absorption_full"]
    assert absorption["values"] == pytest.approx(means["progressive"]) and absorption["n"] == 3
    expected = welch_interval(means["none"], means["progressive"])
    got = result["arms"]["progressive"]["vs_baseline"]["absorption_full"]
    assert (got["delta"], got["lo"], got["hi"]) == pytest.approx((expected["delta"], expected["lo"], expected["hi"]))
    pooled = math.sqrt(sum(statistics_variance(v) for v in by_run.values()) / len(by_run))
    assert result["eval_seed_std"]["absorption_full"] == pytest.approx(pooled)
    ev = [r["summary"]["explained_variance"]["value"] for r in records if r["arm"] == "none"]
    assert result["arms"]["none"]["summary"]["explained_variance"]["values"] == pytest.approx(ev)  # not re-evaluated: as it was
    assert (tmp_path / "results" / "abl_evalseeds.md").read_text().strip() == results_markdown(result)


def statistics_variance(values):
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values) / (len(values) - 1)


def test_eval_seed_compare_without_evaluations_is_one_line(tmp_path, capsys):
    eval_noise = _eval_noise_module()
    run = tmp_path / "none" / "seed_42"
    run.mkdir(parents=True)
    records = [{"arm": "none", "variant": "none", "seed": 42, "run_dir": str(run), "summary": {}}]
    (tmp_path / "abl.json").write_text(json.dumps({"name": "abl", "baseline": "none", "arms": {"none": {}}, "runs": records}))
    assert eval_noise.main(["--compare", str(tmp_path / "abl.json"), "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: 1 runs have no eval_noise.json") and "\n" not in err
    assert not (tmp_path / "results").exists()


def test_eval_noise_merges_a_later_eval_into_a_seeds_summary():
    eval_noise = _eval_noise_module()
    old = {"absorption_full": _entry(0.5), "kl_div_score": {"status": "missing", "value": None}}
    new = {"absorption_full": {"status": "missing", "value": None}, "kl_div_score": _entry(0.9)}
    both = eval_noise.merged(old, new)
    assert both["absorption_full"]["value"] == 0.5 and both["kl_div_score"]["value"] == 0.9


@pytest.mark.slow
def test_eval_noise_at_another_eval_seed_equals_a_run_made_with_it(tmp_path, tiny_lm, monkeypatch):
    """eval_noise.py on a finished run at eval seed 43 gives what a run trained the same way with
    --eval_seed 43 records (the SAE does not depend on the eval seed); a second call evaluates
    nothing. The eval is a stand-in whose numbers depend on the SAE and the eval seed (the real
    evals' seed handling is tested in test_evals.py)."""
    from sae_harness import evals

    def core(sae, tl_model, ctx):
        ev = float(sae.W_dec.sum()) % 1 + ctx.eval_seed / 1000
        return {"eval_result_metrics": {"reconstruction_quality": {"explained_variance_legacy": ev}}}

    monkeypatch.setattr(evals, "load_eval_model", lambda cfg, ctx: None)
    monkeypatch.setattr(evals.core, "eval_core", core)
    eval_noise = _eval_noise_module()
    for out, eval_seed in (("run_1", "42"), ("run_2", "43")):
        assert E.main(tiny_args(tmp_path, out, "--evals", "core", "--eval_seed", eval_seed)) == 0
    run = tmp_path / "run_1"
    assert eval_noise.main([str(run), "--eval_seeds", "43", "--evals", "core"]) == 0
    noise = json.loads((run / "eval_noise.json").read_text())
    assert [r["eval_seed"] for r in noise["runs"]] == [42, 43] and noise["evals"] == ["core"]
    own, other = (summarize(json.loads((tmp_path / r / "final_info.json").read_text())) for r in ("run_1", "run_2"))
    assert noise["runs"][1]["summary"]["explained_variance"]["value"] == other["explained_variance"]["value"]
    assert noise["metrics"]["explained_variance"]["values"] == [own["explained_variance"]["value"], other["explained_variance"]["value"]]
    written = (run / "eval_noise.json").stat().st_mtime_ns
    monkeypatch.setattr(evals.core, "eval_core", None)  # would fail if called
    assert eval_noise.main([str(run), "--eval_seeds", "42,43", "--evals", "core"]) == 0
    assert (run / "eval_noise.json").stat().st_mtime_ns == written  # both done already: nothing re-evaluated
