"""Paired intervals and Holm's correction (sae_harness/analysis/stats.py) against scipy and a brute force."""

import itertools
import random

import pytest
from scipy import stats

from sae_harness.analysis.stats import holm, paired_interval


def test_paired_interval_matches_scipy_paired_t_on_random_data():
    rng = random.Random(0)
    for _ in range(20):
        n = rng.randint(2, 12)
        base = [rng.gauss(0, 1) for _ in range(n)]
        a = {40 + s: base[s] + rng.gauss(0, 0.1) for s in range(n)}
        b = {40 + s: base[s] + 0.05 + rng.gauss(0, 0.1) for s in range(n)}
        got = paired_interval(a, b)
        seeds = sorted(a)
        ref = stats.ttest_rel([b[s] for s in seeds], [a[s] for s in seeds])
        ci = ref.confidence_interval(0.95)
        assert got["p"] == pytest.approx(ref.pvalue, rel=1e-9)
        assert (got["lo"], got["hi"]) == (pytest.approx(ci.low, rel=1e-9), pytest.approx(ci.high, rel=1e-9))
        assert got["within_noise"] == (ci.low <= 0 <= ci.high)


def test_pairing_uses_only_shared_seeds_and_beats_welch_when_seeds_move_both_arms():
    seed_effect = {42: -1.0, 43: 0.0, 44: 1.0, 45: 2.0}
    a = {s: v for s, v in seed_effect.items()}
    b = {s: v + 0.1 + 0.01 * (s % 2) for s, v in seed_effect.items()} | {99: 50.0}  # 99: b only, ignored
    got = paired_interval(a, b)
    assert got["n"] == 4 and got["delta"] == pytest.approx(0.105)
    assert not got["within_noise"]  # paired: the seed effect cancels
    welch = stats.ttest_ind([b[s] for s in a], list(a.values()), equal_var=False)
    assert welch.pvalue > 0.5  # unpaired, the same numbers are noise


def test_paired_interval_edge_cases():
    assert paired_interval({1: 1.0}, {2: 1.0}) is None
    one = paired_interval({1: 1.0}, {1: 3.0})
    assert one["delta"] == 2.0 and one["lo"] is None and one["p"] is None
    same = paired_interval({1: 1.0, 2: 2.0}, {1: 1.5, 2: 2.5})
    assert (same["lo"], same["hi"], same["within_noise"]) == (0.5, 0.5, False)


def holm_brute_force(pvalues):
    """Adjusted p of hypothesis h: the smallest alpha at which Holm's step-down procedure rejects h."""
    names = list(pvalues)
    grid = sorted({min(1.0, k * p) for p in pvalues.values() for k in range(1, len(names) + 1)})

    def rejected(alpha):
        order = sorted(names, key=lambda n: pvalues[n])
        out = set()
        for i, name in enumerate(order):
            if min(1.0, (len(order) - i) * pvalues[name]) > alpha:
                break
            out.add(name)
        return out

    return {name: min([a for a in grid if name in rejected(a)], default=1.0) for name in names}


def test_holm_matches_the_step_down_procedure_and_keeps_none():
    rng = random.Random(1)
    for m in range(1, 7):
        for _ in range(10):
            pvalues = {f"m{i}": rng.choice([rng.random(), rng.random() / 50]) for i in range(m)}
            got = holm(pvalues)
            want = holm_brute_force(pvalues)
            assert got == pytest.approx(want)
    assert holm({"a": 0.01, "b": None, "c": 0.04}) == {"a": pytest.approx(0.02), "b": None, "c": pytest.approx(0.04)}
    for p in itertools.permutations([0.001, 0.02, 0.03]):
        adjusted = holm(dict(zip("xyz", p)))
        assert sorted(adjusted.values()) == pytest.approx([0.003, 0.04, 0.04])


def test_compare_paired_pairs_per_seed_summaries_and_holm_skips_reference_metrics():
    from sae_harness.analysis.compare import compare
    from sae_harness.run.schema import METRICS

    def summary(shift, seed):
        return {m.name: {"status": "ok", "value": seed + shift * (m.direction != "reference")} for m in METRICS}

    base = {s: summary(0.0, s) for s in (42, 43, 44)}
    arm = {s: summary(0.5 + 0.01 * s, s) for s in (42, 43, 44, 45)}  # seed 45: no baseline to pair with
    out = compare(arm, base)
    family = [m.name for m in METRICS if m.direction != "reference"]
    for name in family:
        assert out[name]["n"] == 3 and out[name]["delta"] == pytest.approx(0.5 + 0.43)
        assert out[name]["p_holm"] == pytest.approx(min(1.0, len(family) * out[name]["p"]))  # equal p: Holm = m p
    reference = [m.name for m in METRICS if m.direction == "reference"]
    assert reference and all(out[name]["p_holm"] is None and out[name]["delta"] == 0 for name in reference)


def test_interval_over_worlds_equals_a_t_interval_over_the_world_means():
    """Worlds as the random factor: average the paired differences within each world, then a t
    interval over those means (df = worlds - 1), checked against numpy and scipy on random data;
    the spreads between and within worlds as their definitions say."""
    import numpy as np
    from scipy import stats as st

    from sae_harness.analysis.stats import interval_over_worlds

    rng = np.random.default_rng(3)
    diffs = {w: list(rng.normal(0.1 * w, 0.05, size=5)) for w in range(4)}
    got = interval_over_worlds(diffs)
    means = np.array([np.mean(d) for d in diffs.values()])
    half = st.t.ppf(0.975, 3) * means.std(ddof=1) / 2
    assert got["delta"] == pytest.approx(means.mean()) and got["n_worlds"] == 4 and got["seeds"] == [5] and got["df"] == 3
    assert got["lo"] == pytest.approx(means.mean() - half) and got["hi"] == pytest.approx(means.mean() + half)
    assert got["between_world_sd"] == pytest.approx(means.std(ddof=1))
    residuals = np.concatenate([np.array(d) - np.mean(d) for d in diffs.values()])
    assert got["within_world_sd"] == pytest.approx(np.sqrt((residuals**2).sum() / (4 * 4)))
    assert got["p"] == pytest.approx(st.ttest_1samp(means, 0).pvalue)
    narrow = interval_over_worlds({w: [0.1 + 0.001 * i for i in range(5)] for w in range(4)})  # no world effect
    assert narrow["between_world_sd"] == pytest.approx(0, abs=1e-12) and narrow["within_world_sd"] > 0


def test_over_worlds_wider_than_pooled_when_worlds_differ():
    """A world effect the pooled paired interval ignores: with 3 worlds whose differences disagree,
    the interval over worlds is wider than the pooled paired one over the same 15 runs."""
    from sae_harness.analysis.stats import interval_over_worlds, paired_interval

    diffs = {0: [0.10, 0.11, 0.09, 0.10, 0.10], 1: [0.01, 0.02, 0.00, 0.01, 0.01], 2: [0.05, 0.06, 0.04, 0.05, 0.05]}
    pooled = paired_interval({i: 0.0 for i in range(15)}, {i: d for i, d in enumerate(x for ds in diffs.values() for x in ds)})
    over = interval_over_worlds(diffs)
    assert over["hi"] - over["lo"] > 3 * (pooled["hi"] - pooled["lo"])


def test_sweep_groups_runs_by_world_and_pairs_each_arm_with_plain_topk():
    """sweep.worlds_comparisons: the records of a sweep gridded over data_seed, grouped by arm with
    the world taken out, each against plain TopK with the same other options, paired by (world, seed)."""
    import sweep
    from sae_harness.analysis.stats import interval_over_worlds

    def record(variant, world, seed, value, **other):
        summary = {"synth_absorption": {"status": "ok", "value": value}}
        return dict(variant=variant, overrides={"data_seed": str(world)} | other, world=world, seed=seed, summary=summary)

    records = [record("none", w, s, 0.4 + 0.01 * w + 0.001 * s) for w in (42, 43, 44) for s in (1, 2)]
    records += [record("progressive", w, s, 0.39 + 0.02 * w + 0.001 * s) for w in (42, 43, 44) for s in (1, 2)]
    records += [record("progressive", w, s, 0.3, k="8") for w in (42, 43) for s in (1, 2)]  # no plain TopK at k=8: no comparison
    dose = [record("progressive", w, s, 0.35, ortho_lambda_max="0.15") for w in (42, 43, 44) for s in (1, 2)]  # an arm's own option
    out = sweep.worlds_comparisons(records + dose)
    assert list(out) == ["progressive", "progressive_ortho_lambda_max=0.15"]  # the dose arm meets plain TopK at its world
    assert out["progressive_ortho_lambda_max=0.15"]["synth_absorption"]["n_worlds"] == 3
    diffs = {w: [(0.39 + 0.02 * w + 0.001 * s) - (0.4 + 0.01 * w + 0.001 * s) for s in (1, 2)] for w in (42, 43, 44)}
    expected = interval_over_worlds(diffs)
    got = out["progressive"]["synth_absorption"]
    assert got["delta"] == pytest.approx(expected["delta"]) and got["lo"] == pytest.approx(expected["lo"]) and got["n_worlds"] == 3


def test_schedule_contrasts_pair_arms_that_differ_only_in_their_schedules_at_each_dose():
    """progressive - static_matched (and - static) at the same dose, paired by (world, seed) over
    worlds; the rule reads ARMS, so OrtSAE (another term) and Matryoshka (no term) are not contrasted."""
    import experiment as E
    import sweep
    from sae_harness.analysis.stats import interval_over_worlds
    from sae_harness.analysis.sweeps import schedule_contrasts

    chosen = ["none", "progressive", "static_matched", "ortsae", "matryoshka"]
    assert schedule_contrasts({v: E.ARMS[v] for v in chosen}) == [("progressive", "static_matched")]

    def record(variant, world, seed, value, **other):
        summary = {"synth_absorption": {"status": "ok", "value": value}}
        return dict(variant=variant, overrides={"data_seed": str(world)} | other, world=world, seed=seed, summary=summary)

    records = [record("none", w, s, 0.4) for w in (1, 2, 3) for s in (1, 2)]
    for dose, shift in (({}, 0.0), ({"ortho_lambda_max": "0.15"}, 0.1)):
        records += [record("progressive", w, s, 0.38 + shift + 0.01 * w, **dose) for w in (1, 2, 3) for s in (1, 2)]
        records += [record("static_matched", w, s, 0.36 + shift + 0.001 * s, **dose) for w in (1, 2, 3) for s in (1, 2)]
    out = sweep.worlds_comparisons(records)
    assert "progressive - static_matched" in out and "progressive_ortho_lambda_max=0.15 - static_matched_ortho_lambda_max=0.15" in out
    expected = interval_over_worlds({w: [0.02 + 0.01 * w - 0.001 * s for s in (1, 2)] for w in (1, 2, 3)})
    for key in ("progressive - static_matched", "progressive_ortho_lambda_max=0.15 - static_matched_ortho_lambda_max=0.15"):
        assert out[key]["synth_absorption"]["delta"] == pytest.approx(expected["delta"])
        assert out[key]["synth_absorption"]["lo"] == pytest.approx(expected["lo"])


def test_a_variants_item_takes_options_of_its_own():
    import experiment as E
    from sae_harness.run.planning import arm_item

    assert arm_item(E, "progressive+ortho_lambda_max=0.15") == ("progressive", {"ortho_lambda_max": "0.15"})
    assert arm_item(E, "none") == ("none", {})
    for bad in ("sideways", "progressive+nope=1", "progressive+seed=1", "progressive+ortho_lambda_max"):
        with pytest.raises(ValueError):
            arm_item(E, bad)
