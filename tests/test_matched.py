"""sae_harness.analysis.matched: each arm read at plain TopK's y for the same x, paired by seed."""

import json

import pytest

import study
from sae_harness.analysis import matched


def test_read_at_interpolates_between_points_and_refuses_outside():
    curve = [(0.8, 0.3), (0.6, 0.1), (0.9, 0.5)]  # any order
    assert matched.read_at(curve, 0.7) == pytest.approx(0.2)
    assert matched.read_at(curve, 0.85) == pytest.approx(0.4)
    assert matched.read_at(curve, 0.9) == pytest.approx(0.5)
    assert matched.read_at(curve, 0.95) is None and matched.read_at(curve, 0.5) is None
    assert matched.read_at([], 0.7) is None


def sweep_result(rows):
    """A results JSON's runs: rows of (arm, seed, x, y)."""
    ok = lambda v: {"status": "ok", "value": v}  # noqa: E731
    return {"runs": [{"arm": a, "seed": s, "summary": {"ev": ok(x), "abs": ok(y)}} for a, s, x, y in rows]}


def test_an_arm_on_a_shifted_curve_reads_its_shift_paired_by_seed():
    """Plain TopK's curve is y = x - 0.5 + 0.02 * seed (each seed its own offset); the arm sits 0.1
    below its own seed's curve at every seed, so the paired difference is exactly -0.1, which an
    unpaired comparison against the curves' mean would blur."""
    curve_rows, arm_rows = [], []
    for seed in range(5):
        for x in (0.6, 0.7, 0.8):
            curve_rows.append((f"none_epochs={x}", seed, x, x - 0.5 + 0.02 * seed))
        arm_rows += [
            ("none", seed, 0.9, 0.4 + 0.02 * seed),
            ("idea", seed, 0.65 + 0.01 * seed, 0.65 + 0.01 * seed - 0.5 + 0.02 * seed - 0.1),
        ]
    arm_rows.append(("far", 0, 0.95, 0.1))  # beyond the curve's range (0.6 .. 0.9)
    result = matched.reading(sweep_result(curve_rows), sweep_result(arm_rows), "ev", "abs")
    idea = result["arms"]["idea"]
    assert idea["paired"]["delta"] == pytest.approx(-0.1) and idea["paired"]["n"] == 5
    assert idea["paired"]["lo"] == pytest.approx(-0.1) and idea["paired"]["hi"] == pytest.approx(-0.1)
    assert all(r["delta"] == pytest.approx(-0.1) for r in idea["per_seed"].values())
    assert result["arms"]["far"]["outside_curve"] == [0] and result["arms"]["far"]["paired"] is None
    assert "none (default length)" in result["curve"] and "none" not in result["arms"]  # the baseline is the curve's end


def test_cli_writes_json_and_figure(tmp_path, capsys):
    rows = [(f"none_epochs={e}", s, 0.5 + 0.1 * e, 0.1 * e + 0.01 * s * e) for e in (1, 2, 3) for s in range(3)]
    arms = [("none", s, 0.9, 0.4) for s in range(3)] + [("idea", s, 0.75, 0.2 + 0.01 * s) for s in range(3)]
    for name, result in (("curves", sweep_result(rows)), ("arms", sweep_result(arms))):
        (tmp_path / f"{name}.json").write_text(json.dumps(result))
    argv = ["--curves", str(tmp_path / "curves.json"), "--arms", str(tmp_path / "arms.json"), "--x", "ev", "--y", "abs"]
    assert study.main(["matched", *argv, "--out", str(tmp_path / "m")]) == 0
    written = json.loads((tmp_path / "m.json").read_text())
    assert written["arms"]["idea"]["paired"]["n"] == 3 and (tmp_path / "m.png").stat().st_size > 0
    assert "idea:" in capsys.readouterr().out
    assert (
        study.main(
            ["matched", "--curves", str(tmp_path / "nope.json"), "--arms", str(tmp_path / "arms.json"), "--out", str(tmp_path / "x")]
        )
        == 2
    )


def test_cli_merges_several_curve_sweeps(tmp_path, capsys):
    """A short-training sweep alone leaves an arm beyond the curve; with a long-training sweep added
    (run apart, its own results file) the same arm is read on the merged curve."""
    short = [(f"none_epochs={e}", s, 0.5 + 0.1 * e, 0.1 * e) for e in (1, 2) for s in range(3)]
    long = [("none_epochs=8", s, 0.95, 0.5) for s in range(3)]
    arms = [("none", s, 0.8, 0.3) for s in range(3)] + [("idea", s, 0.9, 0.35) for s in range(3)]
    for name, result in (("short", short), ("long", long), ("arms", arms)):
        (tmp_path / f"{name}.json").write_text(json.dumps(sweep_result(result)))
    base = ["--arms", str(tmp_path / "arms.json"), "--x", "ev", "--y", "abs"]
    assert study.main(["matched", "--curves", str(tmp_path / "short.json"), *base, "--out", str(tmp_path / "a")]) == 0
    assert json.loads((tmp_path / "a.json").read_text())["arms"]["idea"]["outside_curve"] == [0, 1, 2]
    assert (
        study.main(["matched", "--curves", str(tmp_path / "short.json"), str(tmp_path / "long.json"), *base, "--out", str(tmp_path / "b")])
        == 0
    )
    idea = json.loads((tmp_path / "b.json").read_text())["arms"]["idea"]
    # between (0.8, 0.3) and (0.95, 0.5): the curve reads 0.3 + 0.2 * (0.1 / 0.15) at 0.9
    assert idea["outside_curve"] == [] and idea["paired"]["delta"] == pytest.approx(0.35 - (0.3 + 0.2 * 0.1 / 0.15))


def test_cli_takes_one_arm_of_a_curve_sweep(tmp_path, capsys):
    """`file.json#none`: the default-length plain TopK of an ablation joins the curve and its other
    arms do not (they are not plain TopK), for arms whose baseline was run apart."""
    short = [(f"none_epochs={e}", s, 0.5 + 0.1 * e, 0.1 * e) for e in (1, 2) for s in range(3)]
    ablation = [("none", s, 0.95, 0.5) for s in range(3)] + [("static", s, 0.9, 0.0) for s in range(3)]
    arms = [("idea", s, 0.9, 0.35) for s in range(3)]  # no none arm: compared with ablation's none
    for name, result in (("short", short), ("ablation", ablation), ("arms", arms)):
        (tmp_path / f"{name}.json").write_text(json.dumps(sweep_result(result)))
    base = ["--arms", str(tmp_path / "arms.json"), "--x", "ev", "--y", "abs", "--out", str(tmp_path / "m")]
    assert study.main(["matched", "--curves", str(tmp_path / "short.json"), f"{tmp_path / 'ablation.json'}#none", *base]) == 0
    written = json.loads((tmp_path / "m.json").read_text())
    assert sorted(written["curve"]) == ["none", "none_epochs=1", "none_epochs=2"]  # static is not on the curve
    assert written["arms"]["idea"]["paired"]["delta"] == pytest.approx(0.35 - (0.2 + 0.3 * 0.2 / 0.25))
    assert study.main(["matched", "--curves", f"{tmp_path / 'ablation.json'}#nope", *base]) == 2
    assert "no runs of arm 'nope'" in capsys.readouterr().err
