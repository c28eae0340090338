"""sae_harness.analysis.mechanism: the synth mechanism per third of training over a sweep's worlds x seeds."""

import json

import pytest

import study
from sae_harness.analysis import mechanism
from sae_harness.analysis.stats import interval_over_worlds

KEYS = [k for k, _ in mechanism.QUANTITIES]


def write_sweep(root, cos_of):
    """A results JSON and training logs: arms none and progressive, worlds 1-3 x seeds 1-2; every
    logged quantity is cos_of(arm, world, seed, p) (p the progress of the row)."""
    runs = []
    for variant in ("none", "progressive"):
        for world in (1, 2, 3):
            for seed in (1, 2):
                run_dir = f"sweeps/w/{variant}_data_seed={world}/seed_{seed}"
                (root / run_dir).mkdir(parents=True)
                rows = [{"step": i, "progress": i / 30} | {k: cos_of(variant, world, seed, i / 30) for k in KEYS} for i in range(31)]
                (root / run_dir / "training_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
                runs.append(dict(variant=variant, overrides={"data_seed": str(world)}, world=world, seed=seed, run_dir=run_dir))
    (root / "results").mkdir()
    (root / "results" / "w.json").write_text(json.dumps({"name": "w", "profile": "synth", "runs": runs}))
    return root / "results" / "w.json"


def test_phase_means_per_arm_and_the_difference_over_worlds(tmp_path):
    def cos(variant, world, seed, p):  # the term lowers |cos| by 0.01 * world early on only
        early = p < 1 / 3
        return 0.2 + 0.1 * p + 0.001 * seed - (0.01 * world if variant == "progressive" and early else 0.0)

    path = write_sweep(tmp_path, cos)
    by_arm = mechanism.runs_of(json.loads(path.read_text()), ["none", "progressive"], tmp_path)
    result = mechanism.reading(by_arm)
    assert result["baseline"] == "none"
    early = result["arms"]["progressive"]["mech_hier_cos/early"]
    expected = interval_over_worlds({w: [-0.01 * w] * 2 for w in (1, 2, 3)})
    assert early["n"] == 6 and early["vs_baseline"]["delta"] == pytest.approx(-0.02)
    assert early["vs_baseline"]["lo"] == pytest.approx(expected["lo"]) and early["vs_baseline"]["hi"] == pytest.approx(expected["hi"])
    late = result["arms"]["progressive"]["mech_hier_cos/late"]
    assert late["vs_baseline"]["delta"] == pytest.approx(0.0, abs=1e-12)
    rows = [i / 30 for i in range(31) if i / 30 >= 2 / 3]  # the late third's rows, brute force
    assert result["arms"]["none"]["mech_hier_cos/late"]["mean"] == pytest.approx(0.2 + 0.0015 + 0.1 * sum(rows) / len(rows))


def test_cli_writes_the_table_and_figure_and_refuses_logs_without_a_mechanism(tmp_path, capsys):
    path = write_sweep(tmp_path, lambda v, w, s, p: 0.3 - (0.05 if v == "progressive" else 0) + 0.001 * w)
    assert study.main(["mechanism", "--results", str(path), "--out", str(tmp_path / "m")]) == 0
    table = (tmp_path / "m.md").read_text()
    assert "| mech_hier_cos (decoder |cos|), early |" in table and "Δ -0.05" in table
    assert (tmp_path / "m.png").stat().st_size > 0
    assert study.main(["mechanism", "--results", str(path), "--arms", "none,nope", "--out", str(tmp_path / "x")]) == 2
    assert "no training logs for arm 'nope'" in capsys.readouterr().err
    for log in tmp_path.glob("sweeps/**/training_log.jsonl"):
        log.write_text('{"step": 0, "progress": 0.0, "loss": 1.0}\n')
    assert study.main(["mechanism", "--results", str(path), "--out", str(tmp_path / "y")]) == 2
    assert "not a synth profile" in capsys.readouterr().err
