"""sae_harness.analysis.frontier: each arm raw and at plain TopK's explained variance, worlds as the random factor."""

import json

import pytest

import study
from sae_harness.analysis import frontier
from sae_harness.analysis.stats import interval_over_worlds

X, Y = "synth_explained_variance", "synth_absorption_any"


def run(variant, world, seed, x, y, **overrides):
    ok = lambda v: {"status": "ok", "value": v}  # noqa: E731
    summary = {X: ok(x), Y: ok(y), "synth_absorption": ok(y / 10), "synth_mcc": ok(1 - y)}
    return dict(variant=variant, overrides={"data_seed": world, **overrides}, world=world, seed=seed, summary=summary)


def curve_y(world, seed, x):
    return x - 0.5 + 0.05 * world + 0.01 * seed  # each (world, seed) its own curve


def worlds_sweep(shift_by_world):
    """Plain TopK at the default length (x 0.9) and an arm trained to x 0.7 that sits
    shift_by_world[w] off its own (world, seed)'s curve; a curve sweep at x 0.6, 0.7, 0.8."""
    arms, curves = [], []
    for world, shift in shift_by_world.items():
        for seed in range(4):
            arms.append(run("none", world, seed, 0.9, curve_y(world, seed, 0.9)))
            arms.append(run("idea", world, seed, 0.7 + 0.01 * seed, curve_y(world, seed, 0.7 + 0.01 * seed) + shift))
            curves += [run("none", world, seed, x, curve_y(world, seed, x), epochs=e) for e, x in ((1, 0.6), (2, 0.7), (4, 0.8))]
    return curves, arms


def test_matched_reading_is_the_shift_off_each_units_own_curve_with_worlds_as_the_factor():
    shifts = {1: -0.1, 2: -0.2, 3: -0.3}
    curves, arms = worlds_sweep(shifts)
    result = frontier.reading(curves, arms, X, (Y,))
    got = result["arms"]["idea"][Y]["matched"]
    expected = interval_over_worlds({w: [s] * 4 for w, s in shifts.items()})
    assert got["delta"] == pytest.approx(-0.2) and got["n_worlds"] == 3
    assert got["lo"] == pytest.approx(expected["lo"]) and got["hi"] == pytest.approx(expected["hi"])
    assert got["within_world_sd"] == pytest.approx(0, abs=1e-12)  # every seed of a world sits on the same shift
    raw = result["arms"]["idea"][Y]["raw"]  # against plain TopK at its own (longer) length: the curve's drop 0.9 -> ~0.715 too
    assert raw["delta"] == pytest.approx(-0.2 + (0.7 + 0.015) - 0.9)
    assert result["arms"]["idea"][X]["raw"]["delta"] == pytest.approx(0.715 - 0.9)
    assert result["arms"]["idea"][Y]["outside_curve"] == []


def test_a_point_beyond_the_curve_is_left_out_and_counted():
    curves, arms = worlds_sweep({1: -0.1, 2: -0.1})
    arms.append(run("far", 1, 0, 0.95, 0.1))  # beyond plain TopK's longest (0.9)
    arms.append(run("far", 2, 0, 0.7, curve_y(2, 0, 0.7) + 0.05))
    arms.append(run("far", 2, 9, 0.7, 0.0))  # a seed the curve sweep did not run: not read, not "beyond"
    far = frontier.reading(curves, arms, X, (Y,))["arms"]["far"][Y]
    assert far["outside_curve"] == [[1, 0]] and far["matched"]["n_worlds"] == 1 and far["matched"]["delta"] == pytest.approx(0.05)
    assert far["no_curve"] == [[2, 9]]


def test_an_arm_with_its_own_options_is_read_on_the_same_plain_curve():
    curves, arms = worlds_sweep({1: 0.0, 2: 0.0})
    arms += [run("idea", w, s, 0.75, curve_y(w, s, 0.75) - 0.04, ortho_lambda_max="0.15") for w in (1, 2) for s in range(4)]
    result = frontier.reading(curves, arms, X, (Y,))
    assert result["arms"]["idea_ortho_lambda_max=0.15"][Y]["matched"]["delta"] == pytest.approx(-0.04)
    assert result["arms"]["idea"][Y]["matched"]["delta"] == pytest.approx(0.0, abs=1e-12)


def test_cli_writes_json_table_and_figure_and_refuses_runs_without_worlds(tmp_path, capsys):
    curves, arms = worlds_sweep({1: -0.1, 2: -0.15, 3: -0.05})
    (tmp_path / "c.json").write_text(json.dumps({"runs": curves}))
    (tmp_path / "a.json").write_text(json.dumps({"name": "w", "profile": "synth", "runs": arms}))
    argv = ["--curves", str(tmp_path / "c.json"), "--arms", str(tmp_path / "a.json")]
    assert study.main(["frontier", *argv, "--out", str(tmp_path / "f")]) == 0
    table = (tmp_path / "f.md").read_text()
    assert table.startswith("| arm |") and "`idea`" in table and "-0.10 [" in table
    assert json.loads((tmp_path / "f.json").read_text())["arms"]["idea"][Y]["matched"]["n_worlds"] == 3
    assert (tmp_path / "f.png").stat().st_size > 0
    capsys.readouterr()
    for run_ in arms:
        del run_["world"]
    (tmp_path / "old.json").write_text(json.dumps({"runs": arms}))
    assert (
        study.main(["frontier", "--curves", str(tmp_path / "c.json"), "--arms", str(tmp_path / "old.json"), "--out", str(tmp_path / "g")])
        == 2
    )
    assert "not sweeps over data_seed" in capsys.readouterr().err
    assert study.main(["frontier", *argv, "--ys", "no_such_metric", "--out", str(tmp_path / "h")]) == 2


def test_against_contrasts_each_arm_with_another_paired_by_world_and_seed():
    """variant - idea at plain TopK's x: each one's shift off its own (world, seed)'s curve, paired."""
    curves, arms = worlds_sweep({1: -0.1, 2: -0.2, 3: -0.1})
    shift = {(w, s): -0.03 - 0.01 * s + 0.005 * w for w in (1, 2, 3) for s in range(4)}
    for (w, s), d in shift.items():
        idea = next(r for r in arms if r["variant"] == "idea" and r["world"] == w and r["seed"] == s)
        x = idea["summary"][X]["value"] + 0.02  # at another x: the curve, not the raw difference, pairs them
        arms.append(run("variant", w, s, x, curve_y(w, s, x) + {1: -0.1, 2: -0.2, 3: -0.1}[w] + d))
    result = frontier.reading(curves, arms, X, (Y,), against="idea")
    got = result["contrasts"]["idea"]["variant"][Y]["matched"]
    values = list(shift.values())
    mean = sum(values) / len(values)
    assert got["mean"] == pytest.approx(mean) and got["units"] == 12
    assert got["spread"] == pytest.approx((sum((v - mean) ** 2 for v in values) / 11) ** 0.5)
    by_world = {w: [shift[w, s] for s in range(4)] for w in (1, 2, 3)}
    assert got["over_worlds"]["delta"] == pytest.approx(interval_over_worlds(by_world)["delta"])
    raw = result["contrasts"]["idea"]["variant"][Y]["raw"]
    assert raw["mean"] == pytest.approx(mean + 0.02)  # the curve's slope is 1: 0.02 more x is 0.02 more y
    assert "idea" not in result["contrasts"]["idea"] and "minus `idea`" in frontier.markdown(result)
    both = frontier.reading(curves, arms, X, (Y,), against=("idea", "variant"))["contrasts"]
    assert both["variant"]["idea"][Y]["matched"]["mean"] == pytest.approx(-mean)  # the same pairs, the other way round
    with pytest.raises(ValueError, match="not an arm"):
        frontier.reading(curves, arms, X, (Y,), against="nothing")


def test_arms_from_several_sweeps_are_read_together_and_a_repeated_arm_is_its_own(tmp_path, capsys):
    """A registered test's new arm in its own sweep, read beside the study that ran plain TopK; plain
    TopK run again in the new sweep (another machine) is an arm of its own, off the curve."""
    curves, arms = worlds_sweep({1: -0.1, 2: -0.2, 3: -0.1})
    (tmp_path / "c.json").write_text(json.dumps({"runs": curves}))
    plain = [r for r in arms if r["variant"] == "none"]
    idea = [r for r in arms if r["variant"] == "idea"]
    (tmp_path / "plain.json").write_text(json.dumps({"name": "study", "profile": "synth", "runs": plain}))
    (tmp_path / "idea.json").write_text(json.dumps({"name": "new", "profile": "synth", "runs": idea}))
    common = ["--curves", str(tmp_path / "c.json"), "--arms", str(tmp_path / "plain.json"), str(tmp_path / "idea.json")]
    assert study.main(["frontier", *common, "--out", str(tmp_path / "f")]) == 0
    merged = json.loads((tmp_path / "f.json").read_text())
    assert merged["arms"] == json.loads(json.dumps(frontier.reading(curves, arms, X, frontier.YS)["arms"]))
    again = [dict(r, summary={**r["summary"], Y: {"status": "ok", "value": r["summary"][Y]["value"] + 0.03}}) for r in plain]
    (tmp_path / "again.json").write_text(json.dumps({"name": "here", "profile": "synth", "runs": again}))
    argv = [*common, str(tmp_path / "again.json"), "--against", "none@here", "--out", str(tmp_path / "g")]
    assert study.main(["frontier", *argv]) == 0
    result = json.loads((tmp_path / "g.json").read_text())
    assert result["baseline"] == "none" and result["arms"]["none@here"][Y]["raw"]["delta"] == pytest.approx(0.03)
    assert len(result["curves"][Y]["1/0"]) == 4  # the curve: three lengths and the first sweep's plain TopK only
    within = result["contrasts"]["none@here"]["idea"][Y]["raw"]["mean"]  # the idea against plain TopK of its own sweep
    assert within == pytest.approx(result["arms"]["idea"][Y]["raw"]["delta"] - 0.03)
    more = [dict(r, seed=r["seed"] + 10) for r in idea]  # more seeds in a sweep of their own: the same arm
    assert [r["variant"] for r in frontier.merged_runs([{"name": "a", "runs": idea}, {"name": "b", "runs": more}])] == ["idea"] * 24
    # plain TopK re-run on the study's units in two sweeps (seeds split between them): one re-run arm
    first, rest = [r for r in again if r["seed"] < 2], [r for r in again if r["seed"] >= 2]
    sweeps = [{"name": "study", "runs": plain}, {"name": "here", "runs": first}, {"name": "here_rest", "runs": rest}]
    assert {r["variant"] for r in frontier.merged_runs(sweeps)} == {"none", "none@here"}
    capsys.readouterr()
    (tmp_path / "narrow.json").write_text(json.dumps({"name": "n", "profile": "synth-narrow", "runs": []}))
    assert study.main(["frontier", *common, str(tmp_path / "narrow.json"), "--out", str(tmp_path / "h")]) == 2
    assert "mixes profiles" in capsys.readouterr().err
