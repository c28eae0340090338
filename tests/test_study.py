"""A study is one spec file (studies/*.toml, sae_harness/analysis/study.py) and two commands: the spec
checked in one line, the rule applied to records built to have a known answer, every committed study's
verdict regenerated from its records, and (slow) a new study on a tiny world run and read end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from scipy import stats

import study as study_cli
from sae_harness.analysis import study as S
from sae_harness.run.rundir import UsageError

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "studies").glob("*.toml"))

SPEC = """
name = "toy"
registered = "2026-12-07"
question = "Does the arm lower absorption?"

[[sweeps]]
name = "toy_sweep"
profile = "synth"
arms = ["none", "progressive"]
worlds = [1, 2, 3]
seeds = [10, 11]

[[contrasts]]
name = "primary"
metric = "synth_absorption_any"
arm = "progressive"
against = "none"
records = ["toy_sweep"]
unit = "world"
guards = [{ metric = "synth_mcc", arm = "progressive", against = "none" }]

[rule]
holm = ["primary"]
"""


def entry(value):
    return {"value": value, "se": None, "direction": "x", "status": "ok", "std": None, "n": 1, "values": [value]}


def write_sweep(root: Path, effect: dict, mcc_effect: float = 0.0) -> dict:
    """A sweep's results JSON with none and progressive at 3 worlds x 2 seeds; progressive's absorption
    is none's plus effect[world] plus a seed wobble; its MCC none's plus mcc_effect."""
    runs = []
    for world in (1, 2, 3):
        for seed in (10, 11):
            base = 0.5 + 0.01 * world - 0.02 * seed
            for arm, shift, mcc in (("none", 0.0, 0.0), ("progressive", effect[world] + 0.001 * (seed - 10.5), mcc_effect)):
                summary = {"synth_absorption_any": entry(base + shift), "synth_mcc": entry(0.7 + mcc + 0.001 * seed)}
                runs.append(
                    dict(
                        arm=f"{arm}_data_seed={world}",
                        variant=arm,
                        overrides={"data_seed": str(world)},
                        world=world,
                        seed=seed,
                        summary=summary,
                    )
                )
    (root / "results").mkdir(exist_ok=True)
    (root / "results" / "toy_sweep.json").write_text(json.dumps({"name": "toy_sweep", "runs": runs}))
    return {(r["world"], r["seed"], r["variant"]): r["summary"]["synth_absorption_any"]["value"] for r in runs}


def spec_at(tmp_path, text=SPEC) -> S.Study:
    path = tmp_path / "toy.toml"
    path.write_text(text)
    return S.load(path)


def test_the_interval_over_worlds_is_a_t_interval_over_world_means(tmp_path):
    values = write_sweep(tmp_path, {1: -0.05, 2: -0.03, 3: -0.04})
    result = S.read(spec_at(tmp_path), tmp_path)["contrasts"]["primary"]
    means = [sum(values[w, s, "progressive"] - values[w, s, "none"] for s in (10, 11)) / 2 for w in (1, 2, 3)]
    ref = stats.ttest_1samp(means, 0.0)
    assert result["interval"]["delta"] == pytest.approx(sum(means) / 3)
    assert (result["interval"]["lo"], result["interval"]["hi"]) == pytest.approx(tuple(ref.confidence_interval(0.95)))
    assert result["p_holm"] == pytest.approx(ref.pvalue)  # a family of one: Holm leaves p as it is
    assert result["verdict"]["outcome"] == "better"
    assert "better (lower)" in result["verdict"]["sentence"] and "over 3 world means" in result["verdict"]["sentence"]


def test_no_effect_reads_within_noise_and_a_worse_guard_withholds_a_better_verdict(tmp_path):
    write_sweep(tmp_path, {1: -0.01, 2: 0.012, 3: 0.0})
    assert S.read(spec_at(tmp_path), tmp_path)["contrasts"]["primary"]["verdict"]["outcome"] == "within noise"
    write_sweep(tmp_path, {1: -0.05, 2: -0.03, 3: -0.04}, mcc_effect=-0.2)  # lower absorption, but MCC falls
    verdict = S.read(spec_at(tmp_path), tmp_path)["contrasts"]["primary"]["verdict"]
    assert verdict["outcome"] == "within noise" and "guard progressive - none on synth_mcc reads worse" in verdict["sentence"]


def test_holm_over_the_registered_family_can_withhold_what_one_interval_shows(tmp_path):
    """Two contrasts in one family: the weaker one's unadjusted interval excludes 0 but its Holm p does not hold."""
    write_sweep(tmp_path, {1: -0.05, 2: -0.035, 3: -0.065})  # t 5.8 on 2 df: p 0.029
    text = SPEC.replace('holm = ["primary"]', 'holm = ["primary", "again"]')
    text += SPEC[SPEC.index("[[contrasts]]") : SPEC.index("[rule]")].replace('name = "primary"', 'name = "again"')
    result = S.read(spec_at(tmp_path, text), tmp_path)["contrasts"]
    p = result["primary"]["interval"]["p"]
    assert 0.025 < p < 0.05 and result["primary"]["p_holm"] == pytest.approx(min(1, 2 * p))
    assert result["primary"]["verdict"]["outcome"] == "within noise" and "not established" in result["primary"]["verdict"]["sentence"]


@pytest.mark.parametrize(
    "change, says",
    [
        (('metric = "synth_absorption_any"', 'metric = "synth_absorption_any"\ncolour = "red"'), "unknown key 'colour'"),
        (('records = ["toy_sweep"]', 'records = ["other"]'), "reads 'other', not one of the study's sweeps"),
        (('unit = "world"', 'unit = "world"\nreading = "matched"'), "is read matched but names no curve"),
        (('holm = ["primary"]', 'holm = ["primary", "nope"]'), "the Holm family names 'nope'"),
        (("[rule]", "[rule"), "is not valid TOML"),
    ],
)
def test_a_bad_spec_is_one_line(tmp_path, change, says):
    with pytest.raises(UsageError, match=says):
        spec_at(tmp_path, SPEC.replace(*change))


def test_study_cli_refuses_bad_input_in_one_line(tmp_path):
    for argv, says in (
        (["read"], "needs a spec file"),
        (["read", str(tmp_path / "none.toml")], "cannot read"),
        (["sideways"], "invalid choice"),
    ):
        done = subprocess.run([sys.executable, "study.py", *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and says in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_every_committed_studys_verdict_regenerates_from_its_records(spec):
    assert study_cli.check([spec], ROOT) == 0, f"results/{spec.stem}.verdict.* is stale: python study.py read {spec.relative_to(ROOT)}"


REGISTERED = {  # what results/README.md reported for each registered study before its spec existed: (delta, lo, hi, Holm p)
    ("registered_variants", "synth"): (-0.013, -0.024, -0.001, 0.082),
    ("registered_variants", "synth-narrow"): (0.005, -0.014, 0.023, 0.40),
    ("synth_worlds", "synth"): (-0.026, -0.036, -0.016, 0.015),
    ("synth_worlds", "synth-narrow"): (0.0085, -0.009, 0.026, 0.17),
    ("lm_variants", "language model"): (0.0001, -0.037, 0.038, 1.0),
}


@pytest.mark.parametrize("key", REGISTERED, ids=lambda k: f"{k[0]}:{k[1]}")
def test_the_specs_give_the_numbers_results_reported(key):
    result = S.read(S.load(ROOT / "studies" / f"{key[0]}.toml"), ROOT)["contrasts"][key[1]]
    i = result["interval"]
    got = (i["delta"], i["lo"], i["hi"], result["p_holm"])
    assert got == pytest.approx(REGISTERED[key], abs=6e-4, rel=0.05)


@pytest.mark.slow
def test_a_new_study_is_one_spec_and_two_commands(tmp_path):
    from test_synth import TINY

    world = tmp_path / "tiny.json"
    world.write_text(json.dumps(TINY))
    options = f'{{ lm_name = "synth:{world}", tokens = 4096, epochs = 2, dict_size = 64, k = 4, batch_size = 256, cache_dir = "{tmp_path / "cache"}" }}'
    spec = SPEC.replace("worlds = [1, 2, 3]\nseeds = [10, 11]", f"seeds = [42, 43]\noptions = {options}").replace(
        'unit = "world"', 'unit = "seed"'
    )
    (tmp_path / "toy.toml").write_text(spec)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    base = [sys.executable, "study.py"]
    where = ["--root", str(tmp_path), "--runs_dir", str(tmp_path / "sweeps")]
    ran = subprocess.run(
        [*base, "run", str(tmp_path / "toy.toml"), *where, "--executor", "local"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
    )
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    records = json.loads((tmp_path / "results" / "toy_sweep.json").read_text())["runs"]
    assert sorted((r["variant"], r["seed"]) for r in records) == [("none", 42), ("none", 43), ("progressive", 42), ("progressive", 43)]
    read = subprocess.run(
        [*base, "read", str(tmp_path / "toy.toml"), "--root", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert read.returncode == 0, read.stderr
    verdict = json.loads((tmp_path / "results" / "toy.verdict.json").read_text())["contrasts"]["primary"]
    assert verdict["interval"]["n"] == 2 and verdict["verdict"]["outcome"] in ("better", "worse", "within noise")
    assert verdict["verdict"]["sentence"] in read.stdout


def test_the_screen_passes_an_arm_better_by_more_than_its_spread_and_keeps_the_largest(tmp_path):
    write_sweep(tmp_path, {1: -0.05, 2: -0.03, 3: -0.04})
    text = SPEC.replace('holm = ["primary"]', 'kind = "screen"\nkeep = 1').replace(
        'guards = [{ metric = "synth_mcc", arm = "progressive", against = "none" }]',
        'guards = [{ metric = "synth_mcc", arm = "progressive", against = "none", by = "spread" }]',
    )
    result = S.read(spec_at(tmp_path, text), tmp_path)
    screen = result["contrasts"]["primary"]["screen"]
    assert screen["units"] == 6 and screen["mean"] < -screen["spread"]
    assert result["contrasts"]["primary"]["verdict"]["outcome"] == "passes" and result["selected"] == ["progressive"]
    write_sweep(tmp_path, {1: -0.05, 2: 0.04, 3: -0.01})  # a mean inside its spread
    assert S.read(spec_at(tmp_path, text), tmp_path)["selected"] == []
    write_sweep(tmp_path, {1: -0.05, 2: -0.03, 3: -0.04}, mcc_effect=-0.2)  # its guard worse by more than its spread
    assert S.read(spec_at(tmp_path, text), tmp_path)["contrasts"]["primary"]["verdict"]["outcome"] == "fails"


def test_the_screen_spec_selects_what_the_screen_selected():
    """docs/method.md's screen, read from its spec: matryoshka_progressive alone, at the numbers reported
    (-0.186 ± 0.036 on synth, -0.084 ± 0.046 on synth-narrow; rising +0.002 ± 0.029)."""
    result = S.read(S.load(ROOT / "studies" / "screen.toml"), ROOT)
    assert result["selected"] == ["matryoshka_progressive"]
    for name, (mean, spread) in {
        "matryoshka_progressive, synth": (-0.186, 0.036),
        "matryoshka_progressive, synth-narrow": (-0.084, 0.046),
        "rising, synth": (0.002, 0.029),
    }.items():
        got = result["contrasts"][name]["screen"]
        assert (got["mean"], got["spread"]) == pytest.approx((mean, spread), abs=6e-4)
