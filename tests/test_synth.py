"""sae_harness.run.synth: the world and sample caches, and the ground-truth evals held to oracles: an
SAE set to the true features scores absorption ~0 and MCC ~1; an SAE built by hand to absorb one
parent into one child scores ~1 on that edge and ~0 elsewhere."""

import json
import shutil

import numpy as np
import pytest
import torch

from sae_harness.run import data, synth

# 48 features in 64 dims (no superposition: the oracles are exact), 4 roots x 3 children, siblings
# mutually exclusive, every feature firing with probability 0.2 (a parent fires alone about half
# the time), magnitudes 1 +- 0.1.
TINY = dict(
    num_features=48,
    hidden_dim=64,
    firing_probability=dict(generator_name="constant", probability=0.2),
    hierarchy=dict(total_root_nodes=4, branching_factor=3, max_depth=1, mutually_exclusive_portion=1.0),
    orthogonalization=dict(num_steps=200, lr=0.01, chunk_size=1024),
    std_firing_magnitudes=0.1,
    mean_firing_magnitudes=1.0,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return synth.world(TINY, seed=0, cache_dir=tmp_path_factory.mktemp("synth"))


def true_feature_sae(world, threshold=0.3):
    """One latent per true feature (SAELens's init_sae_to_match_feature_dict), b_dec at the world's
    bias, and a firing threshold below the smallest magnitude (k = all latents), so latent n fires
    exactly when feature n does, with its magnitude."""
    from sae_bench.custom_saes.topk_sae import TopKSAE
    from sae_lens.synthetic import init_sae_to_match_feature_dict

    n, d = TINY["num_features"], TINY["hidden_dim"]
    sae = TopKSAE(d_in=d, d_sae=n, k=n, model_name="synth", hook_layer=0, device="cpu", dtype=torch.float32, use_threshold=True)
    init_sae_to_match_feature_dict(sae, world.feature_dict)
    with torch.no_grad():
        sae.b_dec.copy_(world.feature_dict.bias)
        sae.threshold.fill_(threshold)
    return sae


def absorbing_sae(world, parent, child, child_fires_on="child"):
    """The true-feature SAE, except that on the edge parent -> child the child's latent decodes
    child + parent and the parent's latent is silent whenever the child is active. child_fires_on:
    "child" (its encoder reads v_child) or "both" (it reads v_child + v_parent with a threshold
    that only parent and child together pass)."""
    sae = true_feature_sae(world)
    v = world.feature_dict.feature_vectors.detach()
    with torch.no_grad():
        sae.W_dec[child] = synth.unit(v[child] + v[parent])
        sae.W_enc[:, parent] = v[parent] - 2 * v[child]
        if child_fires_on == "both":
            sae.W_enc[:, child] = v[child] + v[parent]
            sae.b_enc[child] = -1.2
    return sae


def test_world_is_cached_and_reloaded(tmp_path):
    a = synth.world(TINY, seed=0, cache_dir=tmp_path)
    (folder,) = tmp_path.glob("synth-world-*")
    assert json.loads((folder / "key.json").read_text()) == synth.world_key(TINY, 0)
    b = synth.world(TINY, seed=0, cache_dir=tmp_path)
    assert torch.equal(a.feature_dict.feature_vectors, b.feature_dict.feature_vectors)
    assert synth.hierarchy_edges(a)[0].tolist() == synth.hierarchy_edges(b)[0].tolist()
    c = synth.world(TINY, seed=1, cache_dir=tmp_path)
    assert not torch.equal(a.feature_dict.feature_vectors, c.feature_dict.feature_vectors)


def test_training_cache_is_served_by_the_activation_buffer(tmp_path):
    path, key = synth.training_cache(TINY, seed=0, rows=4096, data_seed=5, cache_dir=tmp_path)
    buf = data.ActivationBuffer(path, key, batch_size=512, seed=3, device=torch.device("cpu"))
    x_BD = torch.cat([buf.batch(s) for s in range(8)])
    assert x_BD.shape == (4096, TINY["hidden_dim"])
    assert x_BD.pow(2).sum(-1).mean().item() == pytest.approx(TINY["hidden_dim"], rel=1e-3)  # E||x||^2 = D
    again, _ = synth.training_cache(TINY, seed=0, rows=4096, data_seed=5, cache_dir=tmp_path)
    assert again == path and len(list(tmp_path.glob("acts-synth-*"))) == 1  # sampled once


def test_edges_follow_the_hierarchy(world):
    parent_E, child_E = synth.hierarchy_edges(world)
    assert len(parent_E) == 12 and len(parent_E.unique()) == 4
    _, f_BN = world.sample_with_features(5000)
    active = f_BN > 0
    assert not (active[:, child_E] & ~active[:, parent_E]).any()  # a child fires only with its parent


def test_true_feature_sae_scores_no_absorption_and_mcc_one(world):
    sae = true_feature_sae(world)
    result = synth.hierarchy_absorption(sae, world, n_samples=20_000, seed=1)
    assert result["n_edges"] == 12
    assert abs(result["absorption"]) < 0.01 and result["full_absorption"] < 0.01
    assert result["miss_with_child"] < 0.01 and result["miss_alone"] < 0.01 and result["parent_recovered"] == 1.0
    metrics = synth.saelens_metrics(sae, world, n_samples=20_000, seed=1)
    assert metrics["mcc"] > 0.999 and metrics["explained_variance"] > 0.999
    assert metrics["f1"] > 0.99


@pytest.mark.parametrize("child_fires_on", ["child", "both"])
def test_hand_built_absorption_scores_one_on_its_edge(world, child_fires_on):
    parent_E, child_E = synth.hierarchy_edges(world)
    parent, child = parent_E[0].item(), child_E[0].item()
    sae = absorbing_sae(world, parent, child, child_fires_on)
    result = synth.hierarchy_absorption(sae, world, n_samples=20_000, seed=1)
    edge = result["per_edge"]
    assert edge["parent"][0] == parent and edge["child"][0] == child
    assert edge["absorption"][0] > 0.95  # the parent's latent misses every time the child is on, never alone
    assert edge["full"][0] > 0.95  # and the child's latent fires instead, carrying the parent's direction
    assert max(abs(a) for a in edge["absorption"][1:]) < 0.02
    assert result["absorption"] == pytest.approx(sum(edge["absorption"]) / 12, abs=1e-3)
    assert result["absorbed_edges"] == pytest.approx(1 / 12)


def test_parent_without_a_latent_reads_as_full_absorption(world):
    """All children of one parent carry child + parent and the parent has no latent of its own:
    the parent is never matched to a child's latent, absorption(e) reads ~0 (the parent is missed
    with and without a child) and full(e) ~1 on its edges: the two read together."""
    parent_E, child_E = synth.hierarchy_edges(world)
    parent = parent_E[0].item()
    sae = true_feature_sae(world)
    v = world.feature_dict.feature_vectors.detach()
    with torch.no_grad():
        for child in child_E[parent_E == parent].tolist():
            sae.W_dec[child] = synth.unit(v[child] + v[parent])
        r = torch.randn(TINY["hidden_dim"], generator=torch.Generator().manual_seed(123))
        sae.W_dec[parent] = synth.unit(r - (r @ v[parent]) * v[parent])  # a direction orthogonal to the parent
        sae.W_enc[:, parent] = 0
    result = synth.hierarchy_absorption(sae, world, n_samples=20_000, seed=1)
    edges = [i for i, p in enumerate(result["per_edge"]["parent"]) if p == parent]
    assert len(edges) == 3 and result["parent_recovered"] == 0.75
    assert all(abs(result["per_edge"]["absorption"][i]) < 0.05 for i in edges)
    assert all(result["per_edge"]["full"][i] > 0.95 for i in edges)


def without_parent_latents(world, parents, children_carry: bool):
    """The true-feature SAE with no latent of its own for each of parents (its decoder turned to a
    direction orthogonal to it, its encoder silent); with children_carry, each of their children's
    latents decodes child + parent: the parent's direction lives in its children's latents alone."""
    parent_E, child_E = synth.hierarchy_edges(world)
    sae = true_feature_sae(world)
    v = world.feature_dict.feature_vectors.detach()
    with torch.no_grad():
        for parent in parents:
            if children_carry:
                for child in child_E[parent_E == parent].tolist():
                    sae.W_dec[child] = synth.unit(v[child] + v[parent])
            r = torch.randn(TINY["hidden_dim"], generator=torch.Generator().manual_seed(parent))
            sae.W_dec[parent] = synth.unit(r - (r @ v[parent]) * v[parent])
            sae.W_enc[:, parent] = 0
    return sae


def test_absorption_any_reads_parents_carried_by_their_children_as_absorbed(world):
    """The main form of absorption where siblings exclude each other: no parent has a latent of its
    own and every child's latent carries its parent. The differential measure reads ~0 (each parent
    is missed with and without a child); absorption_any reads ~1. A measure that scores an unlearned
    parent as 0 fails here."""
    parent_E, _ = synth.hierarchy_edges(world)
    sae = without_parent_latents(world, parent_E.unique().tolist(), children_carry=True)
    result = synth.hierarchy_absorption(sae, world, n_samples=20_000, seed=1)
    assert result["parent_recovered"] == 0.0 and result["parent_lost"] == 0.0
    assert abs(result["absorption"]) < 0.05  # blind to it
    assert result["absorption_any"] > 0.95 and result["n_edges_any"] == 12
    assert all(a > 0.95 for a in result["per_edge"]["absorption_any"])


def test_absorption_any_is_zero_on_the_true_features_and_one_on_a_carried_parent(world):
    truth = synth.hierarchy_absorption(true_feature_sae(world), world, n_samples=20_000, seed=1)
    assert truth["absorption_any"] < 0.01 and truth["parent_lost"] == 0.0 and truth["parent_recovered"] == 1.0
    assert truth["miss_with_child_se"] >= 0 and truth["parent_recovered_se"] == 0.0
    parent = synth.hierarchy_edges(world)[0][0].item()
    result = synth.hierarchy_absorption(without_parent_latents(world, [parent], children_carry=True), world, n_samples=20_000, seed=1)
    edges = [i for i, p in enumerate(result["per_edge"]["parent"]) if p == parent]
    assert all(result["per_edge"]["absorption_any"][i] > 0.95 for i in edges)  # the old measure's ~0 there
    assert all(abs(result["per_edge"]["absorption"][i]) < 0.05 for i in edges)
    assert result["absorption_any"] == pytest.approx(3 / 12, abs=0.02)


def test_a_parent_never_learned_nor_carried_is_lost_not_absorbed(world):
    parent = synth.hierarchy_edges(world)[0][0].item()
    result = synth.hierarchy_absorption(without_parent_latents(world, [parent], children_carry=False), world, n_samples=20_000, seed=1)
    edges = [i for i, p in enumerate(result["per_edge"]["parent"]) if p == parent]
    assert result["parent_recovered"] == 0.75 and result["parent_lost"] == 0.25
    assert all(result["per_edge"]["absorption_any"][i] is None for i in edges) and result["n_edges_any"] == 9
    assert result["absorption_any"] < 0.01  # the other parents are kept, and the lost one is not counted as absorbed
    # the sensitivity reading counts the lost parent's 3 edges as absorbed: 3 of 12, the truth's 0
    assert result["absorption_any_lost"] == pytest.approx(3 / 12, abs=0.02) and result["n_edges_any_lost"] == 12


def test_the_sensitivity_reading_is_zero_on_the_truth_and_equals_absorption_any_without_lost_parents(world):
    truth = synth.hierarchy_absorption(true_feature_sae(world), world, n_samples=20_000, seed=1)
    assert truth["absorption_any_lost"] < 0.01 and truth["n_edges_any_lost"] == truth["n_edges_any"]
    parent = synth.hierarchy_edges(world)[0][0].item()
    carried = synth.hierarchy_absorption(without_parent_latents(world, [parent], children_carry=True), world, n_samples=20_000, seed=1)
    assert carried["absorption_any_lost"] == pytest.approx(carried["absorption_any"])  # nothing lost: the two readings agree


def test_best_f1_matching_would_miss_the_absorption(world):
    """Why the parent's latent is matched by decoder direction: here the absorbing child latent is
    a perfect-precision detector of the parent, and on an edge whose child fires with the parent
    more often than the parent fires alone it has the parent's best F1, so an F1 match would
    measure the child latent's miss rate instead (lower with the child on than off: negative)."""
    parent_E, child_E = synth.hierarchy_edges(world)
    parent, child = parent_E[0].item(), child_E[0].item()
    sae = absorbing_sae(world, parent, child)
    latent_N, _ = synth.match_by_direction(sae.W_dec, world.feature_dict.feature_vectors)
    assert latent_N[parent] == parent and latent_N[child] == child
    x_BD, f_BN = world.sample_with_features(20_000)
    fires = sae.encode(x_BD)[:, child] != 0
    parent_on, child_on = f_BN[:, parent] > 0, f_BN[:, child] > 0
    assert (fires & ~parent_on).sum() == 0  # the child latent never fires without the parent
    assert fires[child_on].float().mean() > 0.99  # and always with the child


def test_saelens_metrics_equal_eval_sae_on_synthetic_data(world):
    from sae_lens.synthetic import eval_sae_on_synthetic_data

    sae = absorbing_sae(world, *(e[0].item() for e in synth.hierarchy_edges(world)))
    ours = synth.saelens_metrics(sae, world, n_samples=6000, batch_size=2000, seed=4)
    with torch.random.fork_rng():
        torch.manual_seed(4)
        theirs = eval_sae_on_synthetic_data(sae, world.feature_dict, world.activation_generator, num_samples=6000, batch_size=2000)
    for name in ("explained_variance", "mcc", "uniqueness", "true_l0", "sae_l0", "dead_latents", "shrinkage"):
        assert ours[name] == pytest.approx(getattr(theirs, name), rel=1e-6), name
    for name in ("precision", "recall"):
        assert ours[name] == pytest.approx(getattr(theirs.classification, name), rel=1e-6), name
    assert ours["f1"] == pytest.approx(theirs.classification.f1_score, rel=1e-6)


def test_eval_samples_are_drawn_once_and_read_back_bit_for_bit(world, tmp_path):
    """Both ground-truth passes read the same numbers from the eval-sample cache as from fresh
    samples: the first pass at a (world, count, batch size, seed) draws into the cache, later ones
    read it back (the cache is then the only source: replaced by other rows, it is what they read),
    and the caller's RNG is left as it was either way."""
    sae = absorbing_sae(world, *(e[0].item() for e in synth.hierarchy_edges(world)))
    passes = dict(
        metrics=lambda **kw: synth.saelens_metrics(sae, world, n_samples=5000, batch_size=2000, seed=4, **kw),
        absorption=lambda **kw: synth.hierarchy_absorption(sae, world, n_samples=5000, batch_size=1500, seed=5, **kw),
    )
    for name, evaluate in passes.items():
        rng = torch.get_rng_state()
        fresh = evaluate()
        assert torch.equal(torch.get_rng_state(), rng)
        drawn_once = evaluate(cache_dir=tmp_path)
        read_back = evaluate(cache_dir=tmp_path)
        assert torch.equal(torch.get_rng_state(), rng)
        assert json.dumps(drawn_once, sort_keys=True) == json.dumps(fresh, sort_keys=True), name
        assert json.dumps(read_back, sort_keys=True) == json.dumps(fresh, sort_keys=True), name
    assert len(list(tmp_path.glob("synth-eval-*"))) == 2  # one cache per pass, each drawn once
    for (x, f), (x_cached, f_cached) in zip(synth.drawn(world, 5000, 2000, 4), synth.eval_batches(world, 5000, 2000, 4, tmp_path)):
        assert torch.equal(x, x_cached) and torch.equal(f, f_cached) and f_cached.dtype == f.dtype
    (folder,) = (p for p in tmp_path.glob("synth-eval-*") if json.loads((p / "meta.json").read_text())["key"]["seed"] == 4)
    x = np.load(folder / "x.npy", mmap_mode="r+")
    x[:] = np.flip(np.array(x), 0)  # the rows in reverse: a pass that still drew its own samples would not notice
    x.flush()
    assert json.dumps(passes["metrics"](cache_dir=tmp_path)) != json.dumps(passes["metrics"]())
    other = synth.eval_batches(world, 5000, 2000, 6, tmp_path)  # another seed: another sample, in its own folder
    assert not torch.equal(next(iter(other))[0], next(iter(synth.drawn(world, 5000, 2000, 4)))[0])
    assert len(list(tmp_path.glob("synth-eval-*"))) == 3


def test_eval_samples_without_room_are_refused_before_they_are_drawn(world, tmp_path, monkeypatch):
    """The eval-sample cache checks the disk as the other caches do: one line naming both sizes
    (rundir.OutOfSpace: exit 4), nothing written."""
    from sae_harness.run import rundir

    real = shutil.disk_usage
    monkeypatch.setattr(rundir.shutil, "disk_usage", lambda path: real(path)._replace(free=1000))
    with pytest.raises(
        rundir.OutOfSpace, match=r"the synthetic eval samples \(5000 x 64 float32\) needs 1\.53 MiB .* only 1000 bytes is free"
    ):
        synth.eval_batches(world, 5000, 2000, 4, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_synth_profile_end_to_end(tmp_path, monkeypatch):
    """experiment.py --profile synth on the tiny world: trains from the sample cache and writes the
    ground-truth block and its headline metrics (with SEs) into final_info.json."""
    import experiment as E

    monkeypatch.setitem(synth.WORLDS, "tiny", TINY)
    monkeypatch.setattr(synth, "EVAL_SAMPLES", 5000)
    argv = ["--out_dir", str(tmp_path / "run_1"), "--cache_dir", str(tmp_path / "cache"), "--profile", "synth", "--lm_name", "synth:tiny"]
    argv += ["--tokens", "4096", "--epochs", "2", "--dict_size", "64", "--k", "4", "--batch_size", "256", "--variant", "none"]
    assert E.main(argv) == 0
    info = json.loads((tmp_path / "run_1" / "final_info.json").read_text())
    block = info["synthetic evaluation results"]
    assert block["world"] == "synth:tiny" and block["absorption"]["n_edges"] > 0
    assert info["training results for layer 0"]["final_info"]["training_steps"] == 32
    for name in ("synth_absorption", "synth_full_absorption", "synth_mcc", "synth_explained_variance", "synth_f1"):
        assert info["summary"][name]["status"] == "ok", name
    assert info["summary"]["synth_absorption"]["se"] is not None  # the SE over edges reaches the summary
    assert info["summary"]["synth_explained_variance"]["value"] > 0.3  # it learned something in 32 steps


def test_synth_profile_rejects_language_model_evals(tmp_path):
    import experiment as E
    from sae_harness.run.rundir import UsageError

    cfg = E.parse_args(["--out_dir", str(tmp_path / "r"), "--profile", "synth", "--evals", "core"])
    with pytest.raises(UsageError, match="no language model"):
        E.cli.validate(cfg)
    cfg = E.parse_args(["--out_dir", str(tmp_path / "r"), "--profile", "gemma-3-270m", "--evals", "synth"])
    with pytest.raises(UsageError, match="--profile synth"):
        E.cli.validate(cfg)


def test_mechanism_sees_the_hierarchy_pairs(world):
    """On the true features' own firing, a child always co-fires with its parent (n = 1), so the
    hierarchy pairs carry P's co-firing weight; other pairs co-fire far less."""
    sae = true_feature_sae(world)
    _, f_BN = world.sample_with_features(4000)
    import experiment as E

    m = synth.mechanism(sae.W_dec, E.cofiring(f_BN > 0, threshold=0.25), model=world)
    assert m["mech_hier_pairs"] == 12
    assert m["mech_hier_cofire"] == pytest.approx(1.0)
    assert m["mech_other_cofire"] < 0.5
    assert m["mech_hier_cos"] < 0.1  # the true features are nearly orthogonal


def test_mechanism_matches_brute_force(world):
    """Every group measure against a pair-by-pair loop, on a random decoder and random firing: the
    hierarchy pairs are the (l(p), l(c)) of each edge that both fired (either order), the others
    every other ordered pair of fired latents."""
    import experiment as E

    gen = torch.Generator().manual_seed(5)
    n, d = TINY["num_features"], TINY["hidden_dim"]
    v = world.feature_dict.feature_vectors
    W = (v[torch.randperm(n, generator=gen)[: n - 2]] + 0.3 * torch.randn(n - 2, d, generator=gen)).float()
    active = torch.rand(300, n - 2, generator=gen) < 0.15
    active[:, 3] = False  # a latent that never fires
    cf = E.cofiring(active, 0.2)
    m = synth.mechanism(W, cf, world)
    latent_N, _ = synth.match_by_direction(W, v, synth.hierarchy_edges(world))
    pos = {int(f): a for a, f in enumerate(cf.fired_A)}
    hier, edges = set(), 0  # two edges may share a latent pair: pairs counted once, edges each
    for p, c in zip(*synth.hierarchy_edges(world)):
        i, j = int(latent_N[p]), int(latent_N[c])
        if i in pos and j in pos and i != j:
            hier |= {(pos[i], pos[j]), (pos[j], pos[i])}
            edges += 1
    W_hat = W / W.norm(dim=-1, keepdim=True)
    cos = lambda a, b: abs((W_hat[cf.fired_A[a]] @ W_hat[cf.fired_A[b]]).item())  # noqa: E731
    A = len(cf.fired_A)
    other = [(a, b) for a in range(A) for b in range(A) if a != b and (a, b) not in hier]
    P = sum(cf.c_AA[a, b].item() * cos(a, b) for a in range(A) for b in range(A))
    assert m["mech_hier_pairs"] == edges and hier
    assert m["mech_hier_cofire"] == pytest.approx(sum(cf.n_AA[a, b].item() for a, b in hier) / len(hier), rel=1e-5)
    assert m["mech_hier_share"] == pytest.approx(sum(cf.c_AA[a, b].item() * cos(a, b) for a, b in hier) / P, rel=1e-4)
    assert m["mech_other_cofire"] == pytest.approx(sum(cf.n_AA[a, b].item() for a, b in other) / len(other), rel=1e-5)
    assert m["mech_other_cos"] == pytest.approx(sum(cos(a, b) for a, b in other) / len(other), rel=1e-5)


def test_an_edit_of_cofiring_reaches_the_penalty_and_the_mechanism(world, monkeypatch):
    """c_ij is defined once (experiment.cofiring): edited there (here to 1 for every pair that fired),
    the penalty and the mechanism's share of P both follow, without an edit of their own."""
    import experiment as E

    original = E.cofiring

    def every_pair(active_BF, threshold, contained=False):
        fired_A, n_AA, _ = original(active_BF, threshold, contained)
        return E.Cofiring(fired_A, n_AA, torch.ones_like(n_AA).fill_diagonal_(0))

    monkeypatch.setattr(E, "cofiring", every_pair)
    sae = true_feature_sae(world)
    _, f_BN = world.sample_with_features(4000)
    active, W = f_BN > 0, sae.W_dec.detach().double()  # float64: the true features' cosines are ~1e-3
    W_hat = W / W.norm(dim=-1, keepdim=True)
    cos = (W_hat @ W_hat.T).abs().fill_diagonal_(0)  # every feature fires in 4000 samples: fired = all
    assert active.any(0).all()
    assert E.orthogonality_penalty(W, active, 0.25).item() == pytest.approx(cos.sum().item() / len(W), rel=1e-5)
    parent_E, child_E = synth.hierarchy_edges(world)  # the true-feature SAE's latent n is feature n
    hier = 2 * cos[parent_E, child_E].sum().item() / cos.sum().item()
    assert synth.mechanism(W, E.cofiring(active, 0.25), world)["mech_hier_share"] == pytest.approx(hier, rel=1e-3)


@pytest.mark.slow
def test_synth_training_log_has_the_mechanism(tmp_path, monkeypatch):
    import experiment as E

    monkeypatch.setitem(synth.WORLDS, "tiny", TINY)
    monkeypatch.setattr(synth, "EVAL_SAMPLES", 2000)
    argv = ["--out_dir", str(tmp_path / "run_1"), "--cache_dir", str(tmp_path / "cache"), "--profile", "synth", "--lm_name", "synth:tiny"]
    argv += ["--tokens", "2048", "--epochs", "1", "--dict_size", "64", "--k", "4", "--batch_size", "256", "--evals", "none"]
    assert E.main(argv) == 0
    log = [json.loads(line) for line in (tmp_path / "run_1" / "training_log.jsonl").read_text().splitlines()]
    assert all("mech_hier_share" in r and "mech_other_cofire" in r for r in log)
    assert any(r["ortho_share"] for r in log)  # progressive by default: the term is on


def test_world_seed_never_equals_the_sae_seed(tmp_path):
    """With --seed == --data_seed the SAE must not start at the world's features (both are drawn
    with torch.Generator().manual_seed(seed).randn): the world's seed is a hash of data_seed."""
    import experiment as E

    model = synth.world(TINY, synth.world_seed(42), tmp_path)
    sae = E.AutoEncoderTopK(TINY["hidden_dim"], TINY["num_features"], 4, "synth", 0, device="cpu", seed=42)
    _, cos_N = synth.match_by_direction(sae.W_dec, model.feature_dict.feature_vectors)
    assert synth.world_seed(42) != 42 and cos_N.mean() < 0.5
    same = synth.world(TINY, 42, tmp_path)  # what a shared seed would do
    assert synth.match_by_direction(sae.W_dec, same.feature_dict.feature_vectors)[1].mean() > 0.8


def test_a_world_can_come_from_a_json_file(tmp_path):
    from sae_harness.run.rundir import UsageError

    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))
    assert synth.world_of(f"synth:{path}") == TINY
    (tmp_path / "bad.json").write_text(json.dumps(dict(hidden_dim=8)))  # no num_features
    for name, match in (("bad.json", "not a SyntheticModelConfig"), ("missing.json", "synthetic world file")):
        with pytest.raises(UsageError, match=match):
            synth.world_of(f"synth:{tmp_path / name}")
    with pytest.raises(UsageError, match="synth-cpu"):
        synth.world_of("synth:nowhere")
