"""plot.py and the reporting helpers on synthetic run directories."""

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import plot  # noqa: E402
from sae_harness.analysis import report  # noqa: E402
from sae_harness.analysis.notes import update_notes  # noqa: E402
from sae_harness.run.schema import METRICS, summarize  # noqa: E402

REFERENCE = ROOT / "run_0" / "final_info.json"  # the seed's gemma-2-2b TopK results, verbatim
EMBEDDED_DEFAULTS = {
    "profile": "gemma-3-270m",
    "variant": "progressive",
    "dict_size": 4096,
    "k": 64,
    "lr": 3e-4,
    "steps": 600,
    "seed": 0,
    "layer": 9,
    "lm_name": "google/gemma-3-270m",
    "ortho_lambda_max": 0.1,
    "ortho_base_threshold": 0.3,
}


def training_log(variant, steps=600, rows=60, lam_max=0.1, base=0.3, seed=0):
    """A plausible training log: decaying losses, the variant's schedule, separation curves."""
    out = []
    for i in range(rows):
        step = int(steps * (i + 1) / rows)
        p = step / steps
        lam = {"progressive": lam_max * (1 - p) ** 2, "static": lam_max, "none": 0.0}[variant]
        thr = {"progressive": base * (1 - p), "static": base, "none": base * (1 - p)}[variant]
        recon = 0.2 + 2.0 * math.exp(-6 * p) + 0.01 * math.sin(i + seed)
        auxk = 0.05 * math.exp(-3 * p)
        penalty = 0.4 * math.exp(-2 * p) + 0.05
        ortho = lam * penalty
        loss = recon + auxk / 32 + ortho
        cos_mean = 0.12 + 0.08 * math.exp(-3 * p) * (0.5 if variant != "none" else 1)
        out.append(
            {
                "step": step,
                "progress": p,
                "tokens": step * 2048,
                "elapsed_s": step * 0.5,
                "lr": 3e-4,
                "loss": loss,
                "recon_loss": recon,
                "auxk_loss": auxk,
                "ortho_penalty": penalty,
                "ortho_lambda": lam,
                "threshold": thr,
                "ortho_loss": ortho,
                "ortho_share": ortho / loss,
                "l0": 64.0,
                "dead_fraction": 0.2 * math.exp(-5 * p),
                "fvu": recon / 2.4,
                "sep_cos_mean": cos_mean,
                "sep_cos_p95": cos_mean * 2.5,
                "sep_frac_above_thr": min(1.0, 0.05 / max(thr, 0.01)),
                "sep_pairs_penalized": None if i == 0 else int(5000 * (1 - p) + 10),
            }
        )
    return out


def final_info(variant="progressive", profile="gemma-3-270m", evals=True, **config):
    cfg = dict(EMBEDDED_DEFAULTS, variant=variant, profile=profile, **config)
    info = {
        f"training results for layer {cfg['layer']}": {
            "config": cfg,
            "final_info": {
                "training_steps": cfg["steps"],
                "final_loss": 0.25,
                "layer": cfg["layer"],
                "dict_size": cfg["dict_size"],
                "learning_rate": cfg["lr"],
                "tokens": cfg["steps"] * 2048,
                "seconds": 812.4,
                "l0": 64.0,
                "dead_fraction": 0.012,
            },
        }
    }
    if evals:
        shift = {"none": 0.0, "static": 0.01, "progressive": 0.02}[variant]
        info["absorption evaluation results"] = {
            "eval_result_metrics": {
                "mean": {"mean_full_absorption_score": 0.30 - shift, "mean_absorption_fraction_score": 0.12, "mean_num_split_features": 1.2}
            },
            "seconds": 120.0,
        }
        info["core evaluation results"] = {
            "metrics": {
                "reconstruction_quality": {"explained_variance": 0.99, "explained_variance_legacy": 0.81 + shift},
                "model_behavior_preservation": {"kl_div_score": 0.93},
                "model_performance_preservation": {"ce_loss_score": 0.91},
                "sparsity": {"l0": 63.5},
            }
        }
        info["sparse probing evaluation results"] = {
            "eval_result_metrics": {"llm": {"llm_top_1_test_accuracy": 0.70}, "sae": {"sae_top_1_test_accuracy": 0.66 + shift}}
        }
        info["unlearning evaluation results"] = {"skipped": "needs gemma-2-2b-it and the gated WMDP forget corpus"}
    info["summary"] = summarize(info)
    return info


def make_run(parent, name, info, log):
    run = Path(parent) / name
    run.mkdir(parents=True)
    (run / "final_info.json").write_text(json.dumps(info, indent=1))
    if log is not None:
        (run / "training_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    return run


def run_plot_inprocess(cwd, monkeypatch, capsys, *args):
    """plot.main in this process (fast); returns (exit code, stdout, stderr)."""
    monkeypatch.chdir(cwd)
    code = plot.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def run_plot(cwd, *args):
    return subprocess.run(
        [sys.executable, str(ROOT / "plot.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, MPLBACKEND="Agg"),
    )


def assert_png(path, min_bytes=15_000):
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    assert len(data) > min_bytes, f"{path}: only {len(data)} bytes"


@pytest.fixture(scope="module")
def reference():
    return json.loads(REFERENCE.read_text())


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory, reference):
    """run_0 seed copy, three embedded runs (none, progressive, static) and one gemma-2-2b run."""
    d = tmp_path_factory.mktemp("runs")
    make_run(d, "run_0", reference, None)
    make_run(d, "run_1", final_info("none"), training_log("none"))
    make_run(d, "run_2", final_info("progressive"), training_log("progressive"))
    make_run(d, "run_3", final_info("static"), training_log("static"))
    big = final_info("progressive", profile="gemma-2-2b", layer=12, dict_size=16384, k=320, lm_name="google/gemma-2-2b")
    make_run(d, "run_4", big, training_log("progressive", steps=2441))
    result = run_plot(d)
    return d, result


# ---------------------------------------------------------------- summarize / METRICS


# a summary entry of a metric (lower is better) whose eval left no result
MISSING_LOWER_IS_BETTER = {
    "value": None,
    "se": None,
    "direction": "lower is better",
    "status": "missing",
    "std": None,
    "n": 0,
    "values": [],
}


def test_summarize_reference_uses_seed_fallbacks(reference):
    s = summarize(copy.deepcopy(reference))
    assert [m.name for m in METRICS if not m.name.startswith("synth_")] == list(s)  # a language-model run: no synth_* entry
    assert s["absorption_full"]["status"] == "ok"
    assert s["absorption_full"]["value"] == pytest.approx(0.0296, abs=5e-5)
    assert s["absorption_fraction"] == MISSING_LOWER_IS_BETTER
    assert s["explained_variance"]["value"] == pytest.approx(0.746, abs=5e-4)
    assert s["sparse_probing_sae_top1"]["value"] == pytest.approx(0.745, abs=5e-4)
    assert s["sparse_probing_llm_top1"]["value"] == pytest.approx(0.6525, abs=5e-4)
    assert s["unlearning_score"]["value"] == pytest.approx(0.0637, abs=5e-4)
    assert s["l0"]["value"] == 320.0
    directions = {name: e["direction"] for name, e in s.items()}
    assert directions == {
        "absorption_full": "lower is better",
        "absorption_fraction": "lower is better",
        "absorption_full_dscaled": "lower is better",
        "explained_variance": "higher is better",
        "kl_div_score": "higher is better",
        "ce_loss_score": "higher is better",
        "l0": "reference",
        "sparse_probing_sae_top1": "higher is better",
        "sparse_probing_llm_top1": "reference",
        "unlearning_score": "higher is better",
        "heldout_cofire_cos_mean": "lower is better",
        "heldout_cofire_cos_p95": "lower is better",
        "heldout_nn_cos_above_half": "lower is better",
    }


def test_summarize_statuses_and_fallbacks():
    info = final_info("progressive")
    info["core evaluation results"] = {"error": "CUDA out of memory\nTraceback ..."}
    info["sparse probing evaluation results"]["eval_result_metrics"]["sae"]["sae_top_1_test_accuracy"] = float("nan")
    del info["absorption evaluation results"]
    s = summarize(info)
    assert s["absorption_full"] == MISSING_LOWER_IS_BETTER
    assert s["explained_variance"]["status"] == "error: CUDA out of memory"
    assert s["explained_variance"]["value"] is None
    # core errored, so l0 falls back to the training l0
    assert s["l0"] == {"value": 64.0, "se": None, "direction": "reference", "status": "ok", "std": None, "n": 1, "values": [64.0]}
    assert s["sparse_probing_sae_top1"]["value"] is None
    assert s["sparse_probing_sae_top1"]["status"].startswith("error:")
    assert s["unlearning_score"]["status"] == ("skipped: needs gemma-2-2b-it and the gated WMDP forget corpus")
    # new-style absorption key wins over the seed-era one
    info = final_info("none")
    info["absorption evaluation results"]["eval_result_metrics"]["mean"]["mean_absorption_score"] = 0.9
    assert summarize(info)["absorption_full"]["value"] == pytest.approx(0.30)
    json.dumps(summarize(info), allow_nan=False)  # stays valid JSON


# ---------------------------------------------------------------- update_notes

HEADER = "# Title: T\n# Experiment description: steps\n\n"


def test_update_notes_replaces_not_duplicates(tmp_path, reference):
    notes = tmp_path / "notes.txt"
    notes.write_text(HEADER)
    update_notes(notes, "run_0", reference, [], {}, title="Baseline", remarks=["seed remark"])
    update_notes(notes, "run_1", final_info("none"), ["run_1/losses.png"], EMBEDDED_DEFAULTS)
    update_notes(notes, "run_10", final_info("static", lr=1e-3), [], EMBEDDED_DEFAULTS)
    with open(notes, "a") as f:
        f.write("\n## Analysis\nhand-written text stays\n")
    before = notes.read_text()
    # rerun run_1 with different results: replaced in place, nothing else touched
    info = final_info("none")
    info["core evaluation results"]["metrics"]["reconstruction_quality"]["explained_variance_legacy"] = 0.5
    update_notes(notes, "run_1", info, ["run_1/losses.png", "run_1/metrics.png"], EMBEDDED_DEFAULTS)
    after = notes.read_text()
    assert after.startswith(HEADER)
    assert after.count("## Run 1:") == 1 and after.count("## Run 10:") == 1
    assert after.count("## Run 0: Baseline") == 1 and "seed remark" in after
    assert "explained_variance = 0.5 (n=1) (higher is better" in after
    assert "explained_variance = 0.81" not in after.split("## Run 10:")[0]
    assert "run_1/metrics.png" in after
    assert after.index("## Run 0:") < after.index("## Run 1:") < after.index("## Run 10:")
    assert "hand-written text stays" in after
    for other in ("## Run 0:", "## Run 10:", "## Analysis"):
        assert before[before.index(other) :].split("\n## ")[0] == after[after.index(other) :].split("\n## ")[0]
    assert not list(tmp_path.glob(".notes.*"))  # no temp file left behind


def test_update_notes_content(tmp_path, reference):
    notes = tmp_path / "notes.txt"
    info = final_info("static", lr=1e-3)
    info["core evaluation results"] = {"error": "boom"}
    update_notes(notes, "run_3", info, ["run_3/losses.png"], EMBEDDED_DEFAULTS)
    text = notes.read_text()
    assert text.startswith("## Run 3: gemma-3-270m, static\n")
    assert "lr=0.001 (default 0.0003)" in text
    assert "variant=" not in text.split("Differs from profile defaults:")[1].splitlines()[0]
    assert "time 812.4 s" in text and "final loss 0.25" in text
    assert "dead fraction 0.012" in text
    assert "- absorption_full = 0.29 (n=1) (lower is better)" in text
    assert "- explained_variance: error: boom (higher is better)" in text
    assert "- core: error: boom" in text
    assert "- unlearning: skipped: needs gemma-2-2b-it" in text
    assert "Plots: run_3/losses.png" in text
    # the seed run: fallback source named, missing training fields said to be missing
    update_notes(notes, "run_0", reference, [], {})
    text = notes.read_text()
    assert "## Run 0: gemma-2-2b, none" in text
    assert "- absorption_full = 0.02959 (n=1) (lower is better; read from absorption mean_absorption_score)" in text
    assert "tokens not recorded" in text
    with pytest.raises(ValueError):
        update_notes(notes, "baseline", reference, [], {})


# ---------------------------------------------------------------- plot.py


@pytest.mark.slow
def test_plot_all_runs(runs_dir):
    d, result = runs_dir
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""
    for name in ("run_1", "run_2", "run_3", "run_4"):
        for png in ("losses", "schedule", "separation", "metrics"):
            assert_png(d / name / f"{png}.png")
    assert_png(d / "run_0" / "metrics.png")
    assert not (d / "run_0" / "losses.png").exists()  # the seed copy has no training log
    assert_png(d / "comparison_gemma-3-270m.png", 60_000)
    assert_png(d / "comparison_gemma-2-2b.png", 60_000)
    assert sorted(p.name for p in d.glob("comparison_*.png")) == ["comparison_gemma-2-2b.png", "comparison_gemma-3-270m.png"]


@pytest.mark.slow
def test_plot_text_table(runs_dir):
    d, result = runs_dir
    out = result.stdout
    embedded = out[out.index("profile gemma-3-270m: wrote") :]
    embedded = embedded[: embedded.index("feature separation")]
    header = embedded.splitlines()[1]
    assert "run_1 (none)" in header and "run_2 (progressive)" in header
    assert "run_0" not in embedded  # the seed run is never shown beside embedded runs
    row = next(line for line in embedded.splitlines() if line.startswith("explained_variance"))
    assert row.split()[1:] == ["higher", "is", "better", "0.81", "0.83", "0.82"]
    row = next(line for line in embedded.splitlines() if line.startswith("unlearning_score"))
    assert row.split()[-3:] == ["skipped"] * 3
    assert "config fields that differ: variant" in out
    big = out[out.index("profile gemma-2-2b: wrote") :]
    row = next(line for line in big.splitlines() if line.startswith("absorption_full"))
    assert "0.02959" in row and "lower is better" in row
    # the per-phase means printed for the progressive run: cos falls from early to late
    line = next(row for row in out.splitlines() if row.strip().startswith("run_2 (progressive)") and "sep_cos_mean" in row)
    early, middle, late = map(float, line.split()[-3:])
    assert early > middle > late


@pytest.mark.slow
def test_baseline_choice(runs_dir):
    d, _ = runs_dir
    loaded = {}
    runs = report.siblings(d / "run_2", loaded)
    by_name = {r.name: r for r in runs}
    assert report.find_baseline(by_name["run_2"], runs).name == "run_1"
    assert report.find_baseline(by_name["run_4"], runs).name == "run_0"
    assert report.find_baseline(by_name["run_1"], runs) is None  # only itself is `none`
    means = report.phase_means(by_name["run_2"].log, "ortho_lambda")
    assert means[0] > means[1] > means[2] > 0


def test_partial_runs_still_plot(tmp_path, monkeypatch, capsys):
    info = final_info("progressive", evals=False)
    info["core evaluation results"] = {"error": "RuntimeError: out of memory"}
    make_run(tmp_path, "run_5", info, training_log("progressive"))
    make_run(tmp_path, "run_6", final_info("static", evals=False), [])  # empty log
    log = training_log("none")
    for row in log:
        for key in ("sep_cos_mean", "sep_cos_p95", "threshold", "ortho_share"):
            row[key] = None
    lines = "".join(json.dumps(r) + "\n" for r in log) + '{"step": 61, "trunc'
    run7 = make_run(tmp_path, "run_7", final_info("none", evals=False), None)
    (run7 / "training_log.jsonl").write_text(lines)
    code, stdout, stderr = run_plot_inprocess(tmp_path, monkeypatch, capsys, "run_5", "run_6", "run_7")
    assert code == 0, stderr
    for png in ("losses", "schedule", "separation"):
        assert_png(tmp_path / "run_5" / f"{png}.png")
        assert_png(tmp_path / "run_7" / f"{png}.png")
        assert not (tmp_path / "run_6" / f"{png}.png").exists()
    assert not (tmp_path / "run_5" / "metrics.png").exists()  # no eval produced results
    assert "missing: core eval: error: RuntimeError: out of memory" in stdout
    assert "missing: sparse probing eval: not run" in stdout
    assert "synthetic eval" not in stdout  # another profile's eval is not missing here
    assert "missing: training_log.jsonl: missing or empty" in stdout
    assert "1 unreadable line(s) skipped" in stdout
    assert_png(tmp_path / "comparison_gemma-3-270m.png")


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: None, "not a directory"),
        (lambda d: d.mkdir(), "no final_info.json"),
        (lambda d: (d.mkdir(), (d / "final_info.json").write_text("{not json")), "not valid JSON"),
        (lambda d: (d.mkdir(), (d / "final_info.json").write_text("[1, 2]")), "not a JSON object"),
        (
            lambda d: (d.mkdir(), (d / "final_info.json").write_text('{"core evaluation results": {}}')),
            "no 'training results for layer N' block",
        ),
    ],
)
def test_bad_run_dir_exits_2_with_one_line(tmp_path, monkeypatch, capsys, setup, message):
    setup(tmp_path / "run_9")
    code, stdout, stderr = run_plot_inprocess(tmp_path, monkeypatch, capsys, "run_9")
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "run_9" in lines[0], stderr
    assert stdout == ""


def test_bad_json_as_a_script(tmp_path):
    """The real exit status and stderr of the script, not just main's return value."""
    (tmp_path / "run_9").mkdir()
    (tmp_path / "run_9" / "final_info.json").write_text('{"training results for layer 9": ')
    result = run_plot(tmp_path, "run_9")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "not valid JSON" in result.stderr and "Traceback" not in result.stderr
    result = run_plot(tmp_path / "run_9")  # no run_* directories here
    assert result.returncode == 2 and "no run_* directories" in result.stderr


def test_bad_dir_does_not_stop_good_ones(tmp_path, monkeypatch, capsys):
    make_run(tmp_path, "run_1", final_info("none"), training_log("none"))
    code, _, stderr = run_plot_inprocess(tmp_path, monkeypatch, capsys, "run_1", "run_8")
    assert code == 2
    assert stderr.strip().splitlines() == ["plot.py: run_8: not a directory"]
    assert_png(tmp_path / "run_1" / "metrics.png")


def test_summarize_reads_saebench_06_core_layout():
    """SAEBench 0.6.0 saves core metrics under eval_result_metrics; its new explained_variance is
    not the one reported (broken at large activation norms), explained_variance_legacy is."""
    info = {
        "core evaluation results": {
            "eval_result_metrics": {
                "reconstruction_quality": {"explained_variance": 1.00006, "explained_variance_legacy": 0.8248},
                "model_behavior_preservation": {"kl_div_score": 0.8856},
                "model_performance_preservation": {"ce_loss_score": 0.8834},
                "sparsity": {"l0": 64.0},
            }
        }
    }
    s = summarize(info)
    assert s["explained_variance"]["value"] == pytest.approx(0.8248)
    assert s["kl_div_score"]["value"] == pytest.approx(0.8856)
    assert s["ce_loss_score"]["value"] == pytest.approx(0.8834)
    assert s["l0"]["value"] == 64.0


# ---------------------------------------------------------------- several seeds: error bars, within noise, Δ in notes


def seeded_info(variant, absorption_values, seed0=42):
    """A multi-seed run's final_info (schema.aggregate) whose seeds differ in absorption."""
    from sae_harness.run.schema import aggregate

    per_seed = {}
    for i, value in enumerate(absorption_values):
        info = final_info(variant, seed=seed0 + i)
        info["absorption evaluation results"]["eval_result_metrics"]["mean"]["mean_full_absorption_score"] = value
        info["summary"] = summarize(info)
        per_seed[seed0 + i] = info
    return aggregate(per_seed, {s: f"seed_{s}" for s in per_seed})


def make_seeded_run(parent, name, info):
    run = make_run(parent, name, info, None)
    for seed in info["seeds"]["values"]:
        make_run(run, f"seed_{seed}", {}, training_log(run_identity_variant(info), seed=seed))
    return run


def run_identity_variant(info):
    from sae_harness.run.schema import run_identity

    return run_identity(info)["variant"]


def test_metric_panels_error_bars_and_within_noise():
    import matplotlib.pyplot as plt

    base = seeded_info("none", [0.50, 0.52, 0.48])["summary"]
    close = seeded_info("progressive", [0.51, 0.49, 0.53])["summary"]  # Δ 0.01, spread 0.02: within noise
    far = seeded_info("static", [0.20, 0.21, 0.19])["summary"]  # Δ -0.3: outside noise
    fig, axes = plt.subplots(4, 3)
    axes = list(axes.flat)
    plot.metric_panels(axes, [("none", base), ("close", close), ("far", far)], ["#999999", "C0", "C1"], base)
    ax = axes[[m.name for m in METRICS].index("absorption_full")]
    texts = [t.get_text() for t in ax.texts]
    assert any("within noise" in t for t in texts if t.startswith("0.51"))
    assert any("CI excl. 0" in t and "Δ -0.3" in t for t in texts if t.startswith("0.2"))
    assert not any("paired" in t for t in texts)  # no paired comparisons given
    plt.close(fig)
    fig, axes = plt.subplots(4, 3)
    axes = list(axes.flat)
    paired = {"close": {"absorption_full": {"delta": 0.01, "lo": 0.005, "hi": 0.015, "within_noise": False}}}
    plot.metric_panels(axes, [("none", base), ("close", close)], ["#999999", "C0"], base, paired)
    texts = [t.get_text() for t in axes[[m.name for m in METRICS].index("absorption_full")].texts]
    assert any("within noise" in t and "paired: excl. 0" in t for t in texts if t.startswith("0.51"))  # Welch blurs what pairing shows
    assert not any("Δ" in t for t in texts if t.startswith("0.5\n"))  # the baseline itself
    bars = [c for c in ax.containers if hasattr(c, "errorbar")]
    assert len(bars) == 3 and all(c.errorbar is not None for c in bars)  # ± std drawn for every bar
    assert any(len(line.get_xdata()) == 3 for line in ax.get_lines())  # one dot per seed
    plt.close(fig)


def test_seeded_runs_plot_and_notes_show_spread_and_delta(tmp_path, monkeypatch, capsys):
    make_seeded_run(tmp_path, "run_1", seeded_info("none", [0.50, 0.52, 0.48]))
    make_seeded_run(tmp_path, "run_2", seeded_info("progressive", [0.20, 0.21, 0.19]))
    code, out, err = run_plot_inprocess(tmp_path, monkeypatch, capsys, "run_1", "run_2")
    assert code == 0, err
    assert_png(tmp_path / "run_2" / "metrics.png")
    assert_png(tmp_path / "comparison_gemma-3-270m.png")
    assert "run_2 (progressive, 3 seeds)" in out and "0.2±0.01" in out
    from sae_harness.analysis.notes import baseline_beside, update_notes

    info = json.loads((tmp_path / "run_2" / "final_info.json").read_text())
    baseline = baseline_beside(tmp_path / "run_2", info)
    assert baseline[0] == "run_1"
    update_notes(tmp_path / "notes.txt", "run_2", info, [], EMBEDDED_DEFAULTS, baseline=baseline)
    text = (tmp_path / "notes.txt").read_text()
    assert "mean ± std over seeds 42, 43, 44" in text and "Welch" in text
    assert "- absorption_full = 0.2 ± 0.01 (std over seeds, n=3); Δ -0.3 [95% Welch CI" in text
    assert "within noise" in text  # explained variance etc. are identical across seeds: Δ 0 with no spread
    line = next(row for row in text.splitlines() if row.startswith("- absorption_full"))
    assert "Δ -0.3 [95% paired CI -0.3248, -0.2752]" in line  # diffs -0.30, -0.31, -0.29 at seeds 42-44: t(0.975, 2) x 0.01 / sqrt(3)


@pytest.mark.slow
def test_plot_imports_no_torch_with_seeded_runs(tmp_path):
    make_seeded_run(tmp_path, "run_1", seeded_info("none", [0.50, 0.52]))
    make_seeded_run(tmp_path, "run_2", seeded_info("progressive", [0.40, 0.42]))
    code = "import sys, plot; assert plot.main([]) == 0; assert 'torch' not in sys.modules and 'experiment' not in sys.modules"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT))
    )
    assert done.returncode == 0, done.stderr[-1500:]


def test_notes_show_the_eval_se_for_one_seed_and_the_seed_std_for_several():
    from sae_harness.analysis.formatting import fmt_spread
    from sae_harness.run.schema import combine_summaries

    one = {"value": 0.5, "se": 0.02, "status": "ok", "std": None, "n": 1, "values": [0.5]}
    assert fmt_spread(one) == "0.5 ± 0.02 (eval SE, n=1)"
    per_seed = [{m.name: dict(one, value=v, se=se) for m in METRICS} for v, se in ((0.4, 0.03), (0.6, 0.04))]
    combined = combine_summaries(per_seed)["absorption_full"]
    assert combined["value"] == pytest.approx(0.5) and combined["n"] == 2
    assert combined["std"] == pytest.approx(math.sqrt(0.02))  # sample std of 0.4, 0.6
    assert combined["se"] == pytest.approx(math.sqrt(0.03**2 + 0.04**2) / 2)  # the evals' noise in the mean
    assert fmt_spread(combined) == "0.5 ± 0.1414 (std over seeds, n=2; eval SE 0.025)"


def test_panels_leave_out_the_metrics_no_run_has():
    """An LM run's figures have no synth panels and a synth run's none of the LM evals'; skipped
    (unlearning on the embedded profile) still gets its panel, saying so."""
    from sae_harness.run.schema import METRICS

    lm = {m.name: {"status": "missing" if m.name.startswith("synth_") else "ok", "value": 0.5} for m in METRICS}
    lm["unlearning_score"] = {"status": "skipped: needs a GPU", "value": None}
    synth = {m.name: {"status": "ok" if m.name.startswith("synth_") else "missing", "value": 0.5} for m in METRICS}
    shown_lm = [m.name for m in report.shown_metrics([lm])]
    assert "unlearning_score" in shown_lm and not any(n.startswith("synth_") for n in shown_lm)
    assert [m.name for m in report.shown_metrics([synth])] == [m.name for m in METRICS if m.name.startswith("synth_")]
    assert len(report.shown_metrics([lm, synth])) == len(METRICS)


@pytest.mark.slow
def test_mechanism_figure_for_synth_runs_and_in_their_comparison(tmp_path, monkeypatch, capsys):
    """A synth run's log carries the mechanism fields: mechanism.png per run, a mechanism row in the
    comparison; a language-model run gets neither, and neither reports the other's evals missing."""
    for name, variant, hier_cos in (("run_1", "none", 0.30), ("run_2", "progressive", 0.05)):
        log = training_log(variant)
        for i, row in enumerate(log):
            row |= dict(mech_hier_cofire=0.6, mech_other_cofire=0.1, mech_hier_cos=hier_cos * (1 + i / 60), mech_other_cos=0.03)
            row |= dict(mech_hier_share=0.4, mech_hier_pairs=600)
        info = final_info(variant, profile="synth", evals=False)
        info[next(iter(info))]["config"]["evals"] = "synth"
        make_run(tmp_path, name, info, log)
    make_run(tmp_path, "run_3", final_info("none", evals=False), training_log("none"))
    code, stdout, stderr = run_plot_inprocess(tmp_path, monkeypatch, capsys, "run_1", "run_2", "run_3")
    assert code == 0, stderr
    assert_png(tmp_path / "run_1" / "mechanism.png") and assert_png(tmp_path / "run_2" / "mechanism.png")
    assert not (tmp_path / "run_3" / "mechanism.png").exists()
    assert_png(tmp_path / "comparison_synth.png")
    assert "missing: synthetic eval: not run" in stdout  # asked for by the synth runs, absent
    assert stdout.count("missing: synthetic eval: not run") == 2  # run_1, run_2; not run_3 (a language-model run)
    assert stdout.count("eval: not run") == 2 + 5  # and run_3's five language-model evals, none of them in the synth runs'


def test_separation_table_keeps_a_gap_after_a_long_run_name():
    """A run name longer than the column (run_synth_long_name (progressive, 5 seeds)) ran into the
    measure's name; every row still splits into the label, the measure and three phase means."""
    log = training_log("progressive")
    runs = [
        report.Run(name, Path(name), {}, log, 0, "synth", "progressive", {}, {}, seeds)
        for name, seeds in (("run_1", []), ("run_synth_long_name", [42, 43, 44, 45, 46]))
    ]
    lines = report.separation_table(runs).splitlines()
    for run in runs:
        rows = [line for line in lines if line.startswith(run.label)]
        assert len(rows) == len(report.SEPARATION)
        for row, (key, _) in zip(rows, report.SEPARATION):
            assert row[len(run.label)] == " "
            measure, *means = row[len(run.label) :].split()
            assert measure == key and len(means) == 3


def test_one_seed_bars_carry_the_evals_own_standard_error():
    """A one-seed run's bar has ± the eval's SE (and says so); one with no SE has no error bar."""
    import matplotlib.pyplot as plt

    entry = {"value": 0.37, "se": 0.012, "status": "ok", "std": None, "n": 1, "values": [0.37], "direction": "lower is better"}
    with_se = {m.name: dict(entry) for m in METRICS}
    without = {m.name: dict(entry, se=None) for m in METRICS}
    fig, axes = plt.subplots(4, 5)
    plot.metric_panels(list(axes.flat), [("a", with_se), ("b", without)], ["C0", "C1"])
    ax = list(axes.flat)[[m.name for m in report.shown_metrics([with_se, without])].index("absorption_full")]
    assert [t.get_text() for t in ax.texts] == ["0.37\n± 0.012 (eval SE)", "0.37"]
    bars = [c for c in ax.containers if hasattr(c, "errorbar")]
    assert bars[0].errorbar is not None and bars[1].errorbar is None
    (caps,) = bars[0].errorbar.lines[2]  # the vertical segment spans value ± SE
    assert caps.get_segments()[0][:, 1] == pytest.approx([0.358, 0.382])
    plt.close(fig)


def test_summaries_table_keeps_a_gap_between_long_cells():
    """A cell longer than the column's minimum width (mean ± std with the eval's SE) widens its
    column, so two arms' cells never run together (seen on a sweep over worlds)."""
    entry = {"status": "ok", "value": 0.08596, "std": 0.02192, "n": 2, "se": 0.034, "values": [0.07, 0.1]}
    items = [(arm, {m.name: dict(entry) for m in METRICS}) for arm in ("none", "progressive")]
    table = report.summaries_table(items)
    row = next(line for line in table.splitlines() if line.startswith("synth_absorption "))
    assert ")  " in row and ")0" not in row, row


def test_a_sweep_over_worlds_is_drawn_as_its_differences_over_worlds(tmp_path, monkeypatch, capsys):
    """plot.py results/x.json with over_worlds: a panel per compared metric, a row per comparison
    (arms and schedule contrasts), each with its interval and a dot per world."""
    import sweep

    def record(variant, world, seed, value):
        summary = {m: {"status": "ok", "value": value + 0.1 * i} for i, m in enumerate(("synth_absorption_any", "synth_mcc"))}
        return dict(variant=variant, overrides={"data_seed": str(world)}, world=world, seed=seed, summary=summary)

    records = [
        record(v, w, s, 0.5 + d + 0.01 * w + 0.001 * s)
        for v, d in (("none", 0), ("progressive", -0.02), ("static_matched", -0.03))
        for w in (1, 2, 3)
        for s in (1, 2)
    ]
    over = sweep.worlds_comparisons(records)
    arms = {"none": {"summary": {}}, "progressive": {"summary": {}}}
    (tmp_path / "w.json").write_text(json.dumps({"name": "w", "profile": "synth", "arms": arms, "baseline": "none", "over_worlds": over}))
    panels = []
    monkeypatch.setattr(plot, "save", lambda fig, path: panels.append([ax.get_title() for ax in fig.axes if ax.get_visible()]) or path)
    code, _, err = run_plot_inprocess(tmp_path, monkeypatch, capsys, "w.json")
    assert code == 0, err
    assert panels == [["synth_mcc (higher is better)", "synth_absorption_any (lower is better)"]]
    assert list(over) == ["progressive", "static_matched", "progressive - static_matched"]
    assert over["progressive"]["synth_absorption_any"]["world_means"] == {
        "1": pytest.approx(-0.02),
        "2": pytest.approx(-0.02),
        "3": pytest.approx(-0.02),
    }


def test_a_single_run_is_drawn_beside_its_profiles_committed_reference_runs(tmp_path):
    """report.references: a synth run of the default sizes gets synth_worlds_cpu's plain TopK and
    progressive at its world (5 seeds each); a run of other sizes, or a profile with none, gets none."""
    import json

    from sae_harness.analysis.report import references

    config = dict(
        profile="synth", dict_size=1024, k=13, tokens=524288, epochs=6, batch_size=1024, layer=0, lm_name="synth:synth-cpu", data_seed=42
    )
    info = {"training results for layer 0": {"config": config}}
    what, refs = references(info)
    assert [label for label, _ in refs] == ["ref none", "ref progressive"] and "synth_worlds_cpu" in what
    committed = json.loads((ROOT / "results" / "synth_worlds_cpu.json").read_text())["arms"]["none_data_seed=42"]["summary"]
    assert refs[0][1]["synth_absorption_any"]["values"] == pytest.approx(committed["synth_absorption_any"]["values"])
    assert references({"training results for layer 0": {"config": config | {"dict_size": 64}}}) == ("", [])
    assert references({"training results for layer 12": {"config": {"profile": "gemma-2-2b"}}}) == ("", [])
