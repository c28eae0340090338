"""Ground truth: synthetic activations from SAELens's SynthSAEBench worlds (`sae_lens.synthetic`),
cached once per config and seed, served to the trainer like the language model's activations, and
evaluated against the known features, including an absorption measure defined from the hierarchy.

A world is a `SyntheticModel`: known unit feature vectors v_n (n < N) in D dimensions, Zipfian
firing, a forest of parent -> child edges (a child fires only with its parent; mutually exclusive
siblings), low-rank correlations and superposition (N > D). Building one orthogonalises the
features (minutes at 16k), so `world(...)` builds once into `<cache_dir>/synth-world-<digest>/`;
`training_cache(...)` samples its training rows once into the activation cache's own format
(`buffer.read_cache`), so `buffer.ActivationBuffer` serves them unchanged: a seeded order, E||x||^2 = D;
`eval_batches(...)` draws the ground-truth evals' samples once per (world, eval seed) into
`<cache_dir>/synth-eval-<digest>/`, so the arms of a sweep read them instead of drawing them again.

Shape suffixes: B samples, D model width, F SAE latents, N true features, E hierarchy edges,
P parents (features with children).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from sae_harness.run import buffer, lock, rundir
from sae_harness.run.progress import library_bars_quiet

CACHE_FORMAT = 1


def _synthsaebench(num_features: int, hidden_dim: int, roots: int, depth: int, mutually_exclusive: float) -> dict:
    """SynthSAEBench-16k's recipe (Zipfian firing, a hierarchy with compensated probabilities and
    children scaled by their parent, low-rank correlations, light orthogonalisation, magnitudes
    linear 5 -> 4 with folded-normal spread) at a given size and hierarchy."""
    return dict(
        num_features=num_features,
        hidden_dim=hidden_dim,
        firing_probability=dict(generator_name="zipfian", exponent=0.5, max_prob=0.4, min_prob=5e-4),
        hierarchy=dict(
            total_root_nodes=roots,
            branching_factor=4,
            max_depth=depth,
            mutually_exclusive_portion=mutually_exclusive,
            compensate_probabilities=True,
            scale_children_by_parent=True,
        ),
        orthogonalization=dict(num_steps=100, lr=3e-4, chunk_size=1024),
        correlation=dict(rank=25, correlation_scale=0.1, seed=None),
        mean_firing_magnitudes=dict(generator_name="linear", start=5.0, end=4.0),
        std_firing_magnitudes=dict(generator_name="folded_normal", mean=0.5, std=0.5, min_value=None, max_value=None),
    )


# A world is a plain dict of SyntheticModelConfig fields (nested configs as their to_dict() form),
# so it hashes, prints and records as JSON. Fields not given take SyntheticModelConfig's defaults.
WORLDS = {
    # The CPU size (docs/synthetic.md; results/synth_characterisation.md): SynthSAEBench-16k's recipe
    # at 1,024 features in 256 dims, 32 roots x branching 4 x depth 2 (672 features in the hierarchy,
    # 640 edges), siblings NOT mutually exclusive (so a parent fires alone about 30% of the time and
    # its latent is learned), true L0 about 13. Chosen by the characterisation: "lowsup_nome".
    "synth-cpu": _synthsaebench(1024, 256, roots=32, depth=2, mutually_exclusive=0.0),
    # The same recipe and size with SynthSAEBench-16k's mutually exclusive siblings: a parent never
    # fires without one of its children, so absorbing it into them costs an SAE nothing; the
    # synth-narrow profile trains it with 256 latents, SynthSAEBench-16k's 1:4 (docs/synthetic.md).
    "synth-cpu-me": _synthsaebench(1024, 256, roots=32, depth=2, mutually_exclusive=1.0),
    # The published SynthSAEBench-16k world (SAELens docs/synthsaebench.md, Chanin et al. 2026,
    # arXiv 2602.14687), calibrated to gemma-2-2b layer 12. A GPU job: train width 4096, k 25,
    # 200M samples, lr 3e-4, batch 1024.
    "synthsaebench-16k": _synthsaebench(16_384, 768, roots=128, depth=3, mutually_exclusive=1.0),
}


def model_config(world: dict, seed: int):
    """The SyntheticModelConfig of a world dict (see WORLDS) with its seed."""
    from sae_lens.synthetic import SyntheticModelConfig

    base = SyntheticModelConfig(num_features=world["num_features"], hidden_dim=world["hidden_dim"]).to_dict()
    return SyntheticModelConfig.from_dict(base | world | dict(seed=seed))


def world_key(world: dict, seed: int) -> dict:
    return dict(format=CACHE_FORMAT, config=model_config(world, seed).to_dict())


def _digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _load_world(path: Path, key: dict):
    """The SyntheticModel saved at path under key, or None: missing, another key, or damaged."""
    from sae_lens.synthetic import SyntheticModel

    try:
        if json.loads((path / "key.json").read_text()) == key:
            return SyntheticModel.load_from_disk(path)
    except Exception:  # missing or damaged (JSON, safetensors, the hierarchy): built again
        pass
    return None


def world(world: dict, seed: int, cache_dir: str | Path, verbose: bool = True):
    """The SyntheticModel of (world, seed), built once into <cache_dir>/synth-world-<digest>/ (by
    one process: another that needs it waits, then loads it)."""
    key = world_key(world, seed)
    path = Path(cache_dir) / f"synth-world-{_digest(key)}"
    if (model := _load_world(path, key)) is not None:
        return model
    with lock.building(path):
        if (model := _load_world(path, key)) is None:  # else the process this one waited for built it
            _build_world(world, seed, key, path, verbose)
            from sae_lens.synthetic import SyntheticModel

            model = SyntheticModel.load_from_disk(path)
    return model


def _build_world(world: dict, seed: int, key: dict, path: Path, verbose: bool) -> None:
    from sae_lens.synthetic import SyntheticModel

    t0 = time.time()
    if verbose:
        damaged = " (the one there is incomplete or damaged)" if path.exists() else ""
        print(f"synthetic world: building {path} ({world['num_features']} features in {world['hidden_dim']} dims){damaged}")
    with lock.new_folder(path) as tmp, torch.random.fork_rng(), torch.enable_grad():  # the orthogonalisation is gradient descent
        with library_bars_quiet():  # SAELens draws a bar it offers no switch for
            model = SyntheticModel(model_config(world, seed))
        model.save(tmp)
        (tmp / "key.json").write_text(json.dumps(key, indent=1))
    if verbose:
        print(f"synthetic world: built in {time.time() - t0:.0f} s; clear with: rm -r {path}")


def training_key(world: dict, seed: int, rows: int, data_seed: int) -> dict:
    """What determines a training-sample cache: the world and its seed, the rows and their seed."""
    return dict(format=CACHE_FORMAT, source="synthetic", world=world_key(world, seed)["config"], tokens=rows, seed=data_seed)


@torch.no_grad()
def training_cache(world_cfg: dict, seed: int, rows: int, data_seed: int, cache_dir: str | Path, chunk: int = 8192) -> tuple[Path, dict]:
    """(path, key) of `rows` samples of the world, written once in the activation cache's format
    (acts.npy: bfloat16 bits as int16; meta.json with key, rows, d_model, mean_sq_norm), so that
    buffer.ActivationBuffer(path, key, ...) serves them. Sampled with torch's RNG seeded by data_seed."""
    key = training_key(world_cfg, seed, rows, data_seed)
    path = Path(cache_dir) / f"acts-synth-{_digest(key)}"
    if buffer.read_cache(path, key) is not None:
        return path, key
    with lock.building(path):
        if buffer.read_cache(path, key) is None:  # else the process this one waited for wrote it
            _sample_into(world_cfg, seed, rows, data_seed, cache_dir, chunk, key, path)
    return path, key


def _sample_into(world_cfg: dict, seed: int, rows: int, data_seed: int, cache_dir, chunk: int, key: dict, path: Path) -> None:
    rundir.check_free_space(
        path.parent, rows * world_cfg["hidden_dim"] * 2, f"the synthetic samples ({rows} x {world_cfg['hidden_dim']} bfloat16)"
    )
    if path.exists():
        print(f"synthetic samples: {path} is incomplete or damaged; sampling it again")
    model = world(world_cfg, seed, cache_dir)
    t0 = time.time()
    with lock.new_folder(path) as tmp, torch.random.fork_rng():
        torch.manual_seed(data_seed)
        out = buffer.create_acts(tmp / "acts.npy", rows, world_cfg["hidden_dim"])
        sum_sq = 0.0
        for start in range(0, rows, chunk):
            x_BD = model.sample(min(chunk, rows - start)).to(torch.bfloat16)
            out[start : start + len(x_BD)] = x_BD.view(torch.int16).numpy()
            sum_sq += x_BD.float().pow(2).sum().item()
        out.flush()
        meta = dict(
            key=key, rows=rows, d_model=world_cfg["hidden_dim"], mean_sq_norm=sum_sq / rows, created=time.strftime("%Y-%m-%d %H:%M:%S")
        )
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    print(f"synthetic samples: {rows} rows in {time.time() - t0:.0f} s into {path}; clear with: rm -r {path}")


# ----------------------------------------------------------------------------------------------
# Evaluation samples: drawn once per (world, eval seed), cached like the training samples
# ----------------------------------------------------------------------------------------------


def drawn(model, n_samples: int, batch_size: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Fresh samples of the world: (x_BD, f_BN) in batches of batch_size (the last one smaller),
    from torch's RNG seeded by seed; the caller's RNG state comes back when the last batch is out."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for start in range(0, n_samples, batch_size):
            yield model.sample_with_features(min(batch_size, n_samples - start))


def eval_batches(model, n_samples: int, batch_size: int, seed: int, cache_dir: str | Path | None = None):
    """The batches an evaluation pass reads: drawn(...) itself, or with cache_dir the same batches
    drawn once into <cache_dir>/synth-eval-<digest>/ and read back from there by every later pass
    at this world, count, batch size and seed (every arm of a sweep is evaluated at one world and
    eval seed, so drawing them is no longer part of each run's cost). Bit for bit the batches
    drawn(...) yields, so every eval's numbers are the same with or without it (tests/test_synth.py)."""
    if cache_dir is None:
        return drawn(model, n_samples, batch_size, seed)
    key = eval_key(model, n_samples, batch_size, seed)
    path = Path(cache_dir) / f"synth-eval-{_digest(key)}"
    cache = _read_eval_cache(path, key)
    if cache is None:
        d = model.cfg.hidden_dim  # x as float32 bits, and about a quarter more for the true features' nonzeros
        rundir.check_free_space(path.parent, n_samples * d * 4 * 5 // 4, f"the synthetic eval samples ({n_samples} x {d} float32)")
        t0 = time.time()
        with lock.new_folder(path) as tmp:
            _write_eval_cache(tmp, key, drawn(model, n_samples, batch_size, seed))
            cache = _read_eval_cache(tmp, key)  # mapped before the rename: a neighbour rebuilding it cannot pull it away
        print(f"synthetic eval samples: {n_samples} rows in {time.time() - t0:.0f} s into {path}; clear with: rm -r {path}")
    return _cached_batches(*cache, batch_size)


def eval_key(model, n_samples: int, batch_size: int, seed: int) -> dict:
    """What determines an evaluation sample: the world (its config, seed included), the count, the
    batch size (torch's RNG is drawn batch by batch: other batches are another sample) and the seed."""
    return dict(
        format=CACHE_FORMAT, source="synthetic-eval", world=model.cfg.to_dict(), n_samples=n_samples, batch_size=batch_size, seed=seed
    )


EVAL_ARRAYS = ("x", "indptr", "indices", "values")
"""An eval-sample cache's files (name.npy): x (n, D), and f's nonzeros by row (CSR: row i's are
indices[indptr[i]:indptr[i + 1]], with their values); x and the values stored as the bits of
their dtype (numpy has no bfloat16), so they come back exactly."""


def _bits(t: torch.Tensor) -> np.ndarray:
    return t.contiguous().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]).numpy()


def _from_bits(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(a).view(dtype)  # a copy into torch's own (aligned) memory, as a drawn batch is


def _write_eval_cache(folder: Path, key: dict, batches) -> None:
    n, row, indptr, indices, values = key["n_samples"], 0, [np.zeros(1, dtype=np.int64)], [], []
    for x_BD, f_BN in batches:
        if row == 0:
            x = np.lib.format.open_memmap(folder / "x.npy", mode="w+", dtype=_bits(x_BD).dtype, shape=(n, x_BD.shape[1]))
            meta = dict(key=key, x_dtype=str(x_BD.dtype), f_dtype=str(f_BN.dtype), num_features=f_BN.shape[1])
        x[row : row + len(x_BD)] = _bits(x_BD)
        rows, cols = f_BN.nonzero(as_tuple=True)
        indptr.append(indptr[-1][-1] + torch.bincount(rows, minlength=len(f_BN)).cumsum(0).numpy())
        indices.append(cols.to(torch.int32).numpy())
        values.append(_bits(f_BN[rows, cols]))
        row += len(x_BD)
    x.flush()
    for name, parts in (("indptr", indptr), ("indices", indices), ("values", values)):
        np.save(folder / f"{name}.npy", np.concatenate(parts))
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))


def _read_eval_cache(path: Path, key: dict):
    """(meta, {name: memmap}) of a complete eval-sample cache for key, else None."""
    try:
        meta = json.loads((path / "meta.json").read_text())
        arrays = {name: np.load(path / f"{name}.npy", mmap_mode="r") for name in EVAL_ARRAYS}
    except (OSError, ValueError):
        return None
    if meta.get("key") != key or len(arrays["x"]) != key["n_samples"] or len(arrays["indptr"]) != key["n_samples"] + 1:
        return None
    return meta, arrays


def _cached_batches(meta: dict, arrays: dict, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    x_dtype, f_dtype = (getattr(torch, meta[k].removeprefix("torch.")) for k in ("x_dtype", "f_dtype"))
    indptr = arrays["indptr"]
    for start in range(0, len(arrays["x"]), batch_size):
        end = min(start + batch_size, len(arrays["x"]))
        lo, hi = indptr[start], indptr[end]
        rows = torch.from_numpy(np.repeat(np.arange(end - start), np.diff(indptr[start : end + 1])))
        f_BN = torch.zeros(end - start, meta["num_features"], dtype=f_dtype)
        f_BN[rows, torch.from_numpy(arrays["indices"][lo:hi].astype(np.int64))] = _from_bits(arrays["values"][lo:hi], f_dtype)
        yield _from_bits(arrays["x"][start:end], x_dtype), f_BN


# ----------------------------------------------------------------------------------------------
# Ground-truth evals
# ----------------------------------------------------------------------------------------------


def hierarchy_edges(model) -> tuple[torch.Tensor, torch.Tensor]:
    """(parent_E, child_E): the feature indices of every parent -> child edge of the world's
    hierarchy, at every depth (a grandchild's parent is the child above it)."""
    parents, children = [], []
    stack = list(model.hierarchy.roots) if model.hierarchy is not None else []
    while stack:
        node = stack.pop()
        for child in node.children:
            if node.feature_index is not None and child.feature_index is not None:
                parents.append(node.feature_index)
                children.append(child.feature_index)
            stack.append(child)
    order = sorted(range(len(parents)), key=lambda e: (parents[e], children[e]))
    return torch.tensor([parents[e] for e in order], dtype=torch.long), torch.tensor([children[e] for e in order], dtype=torch.long)


RECOVERED_COS = 0.5
"""A true feature is represented when its matched latent's decoder has at least this cosine with it."""


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-8)


def match_by_direction(W_dec_FD: torch.Tensor, v_ND: torch.Tensor, edges=None) -> tuple[torch.Tensor, torch.Tensor]:
    """For each true feature n, the latent whose unit decoder row has the largest cosine with v_n,
    and that cosine: (latent_N, cos_N). With edges (parent_E, child_E), a parent never takes the
    latent its child took: an SAE that gave the parent no latent of its own, only child latents
    that carry child + parent, leaves the parent with its best other latent (and a low cosine)."""
    cos_NF = unit(v_ND.float()) @ unit(W_dec_FD.detach().float()).T
    cos_N, latent_N = cos_NF.max(dim=1)
    if edges is not None:
        parent_E, child_E = edges
        cos_NF[parent_E, latent_N[child_E]] = -torch.inf
        cos_N, latent_N = cos_NF.max(dim=1)
    return latent_N, cos_N


def mean_se(x: torch.Tensor) -> tuple[float, float]:
    """Mean and its standard error (sample std / sqrt(n)); SE is nan for fewer than 2 values."""
    x = x.double()
    n = len(x)
    if n == 0:
        return math.nan, math.nan
    return x.mean().item(), (x.std() / math.sqrt(n)).item() if n > 1 else math.nan


@torch.no_grad()
def hierarchy_absorption(
    sae,
    model,
    n_samples: int = 100_000,
    batch_size: int = 4096,
    seed: int = 0,
    cos_threshold: float = 0.25,
    min_count: int = 20,
    cache_dir: str | Path | None = None,
) -> dict:
    """Absorption measured on the world's hierarchy, on fresh samples with known features.

    `sae` encodes raw world activations: sae.encode(x_BD) -> (B, F) latent values, sae.W_dec (F, D).
    The latent of true feature n, l(n), is the one whose decoder row points most nearly along v_n
    (largest cosine; not the best F1, which under absorption picks the child latent that fires on
    parent and child together and reads the absorption as negative), and a parent never takes its
    child's latent (match_by_direction). For an edge parent p -> child c:

        miss_c(e) = P(l(p) silent | c active)                     (c active implies p active)
        miss_0(e) = P(l(p) silent | p active, no child of p active)
        absorption(e) = miss_c(e) - miss_0(e)                      in [-1, 1]; 0 = no absorption
        full(e) = P(l(p) silent, l(c) fires, cos(W_dec[l(c)], v_p) >= cos_threshold | c active)

    `full` counts the misses that the child's latent covers by carrying the parent's direction.
    Headline numbers: the mean over edges of absorption(e) and full(e), each with its SE over edges
    (std / sqrt(E)), and the fraction of edges with absorption(e) > 0.5. An edge counts only when
    both conditions occur at least min_count times in the sample (n_edges says how many did).
    parent_recovered: the fraction of parents whose l(p) has cosine >= RECOVERED_COS with v_p. A
    parent below it has no latent of its own: l(p) counts as silent everywhere, so it reads
    absorption(e) = 0 (missed with and without the child), blind to the main form of absorption
    where siblings exclude each other (SynthSAEBench's design): the parent's direction carried by
    its children's latents alone. absorption_any sees every form:

        any(e) = absorption(e)   where p has a latent of its own
               = full(e)         where it has none and l(c) carries v_p (cos >= cos_threshold)
               left out          where it has none and no child latent carries it: lost, not absorbed

    with parent_lost the fraction of parents lost so. absorption_any_lost, a sensitivity reading, counts
    a lost parent's edges as wholly absorbed (1) instead of leaving them out; n_edges, n_edges_any and
    n_edges_any_lost count the edges each measure averages over. Both miss rates and parent_recovered come with
    their SEs (over edges; binomial over parents). The samples: eval_batches(model, n_samples,
    batch_size, seed, cache_dir)."""
    parent_E, child_E = hierarchy_edges(model)
    parents_P = parent_E.unique()
    E, P = len(parent_E), len(parents_P)
    if E == 0:
        return dict(n_edges=0)
    v_ND = model.feature_dict.feature_vectors.detach()
    latent_N, cos_N = match_by_direction(sae.W_dec, v_ND, (parent_E, child_E))
    l_parent_E, l_child_E = latent_N[parent_E], latent_N[child_E]
    represented_N = cos_N >= RECOVERED_COS  # a parent without such a latent has none to fire: always silent
    child_carries_parent_E = (unit(sae.W_dec.detach().float()[l_child_E]) * unit(v_ND.float()[parent_E])).sum(-1) >= cos_threshold
    # child membership: which parent slot each edge's child belongs to
    slot_E = torch.searchsorted(parents_P, parent_E)
    membership_NP = torch.zeros(v_ND.shape[0], P)
    membership_NP[child_E, slot_E] = 1.0
    counts = {name: torch.zeros(E, dtype=torch.float64) for name in ("n_c", "miss_c", "full_c")}
    n_0_P, miss_0_P = torch.zeros(P, dtype=torch.float64), torch.zeros(P, dtype=torch.float64)
    for x_BD, f_BN in eval_batches(model, n_samples, batch_size, seed, cache_dir):
        fires_BF = sae.encode(x_BD) != 0
        active_BN = f_BN > 0
        child_on_BE = active_BN[:, child_E]
        parent_silent_BE = ~(fires_BF[:, l_parent_E] & represented_N[parent_E])
        counts["n_c"] += child_on_BE.sum(0)
        counts["miss_c"] += (child_on_BE & parent_silent_BE).sum(0)
        counts["full_c"] += (child_on_BE & parent_silent_BE & fires_BF[:, l_child_E] & child_carries_parent_E).sum(0)
        alone_BP = active_BN[:, parents_P] & ((active_BN.float() @ membership_NP) == 0)
        n_0_P += alone_BP.sum(0)
        miss_0_P += (alone_BP & ~(fires_BF[:, latent_N[parents_P]] & represented_N[parents_P])).sum(0)
    n_0_E, miss_0_E = n_0_P[slot_E], miss_0_P[slot_E]
    valid_E = (counts["n_c"] >= min_count) & (n_0_E >= min_count)
    miss_c_E = counts["miss_c"] / counts["n_c"].clamp_min(1)
    miss_0_E = miss_0_E / n_0_E.clamp_min(1)
    absorption_E = miss_c_E - miss_0_E
    full_E = counts["full_c"] / counts["n_c"].clamp_min(1)
    absorption, absorption_se = mean_se(absorption_E[valid_E])
    full, full_se = mean_se(full_E[valid_E])
    # every form: a parent with a latent of its own is read by the differential measure; one without,
    # whose direction its child's latent carries, by the share of child-on samples that latent covers
    # (full(e)); one without, that no child latent carries, is lost, not absorbed, and is left out
    represented_E, seen_E = represented_N[parent_E], counts["n_c"] >= min_count
    valid_any_E = (represented_E & valid_E) | (~represented_E & child_carries_parent_E & seen_E)
    any_E = torch.where(represented_E, absorption_E, full_E)
    absorption_any, absorption_any_se = mean_se(any_E[valid_any_E])
    carried_P = torch.zeros(P).index_add_(0, slot_E, child_carries_parent_E.float()) > 0  # some child's latent carries it
    lost_P = ~represented_N[parents_P] & ~carried_P
    # the sensitivity reading: a lost parent's edges counted as wholly absorbed (1) instead of left out
    lost_E = lost_P[slot_E]
    valid_lost_E = valid_any_E | (lost_E & seen_E)
    absorption_any_lost, absorption_any_lost_se = mean_se(torch.where(lost_E, torch.ones_like(any_E), any_E)[valid_lost_E])
    recovered = represented_N[parents_P].double().mean().item()
    miss_with_child, miss_with_child_se = mean_se(miss_c_E[valid_E])
    miss_alone, miss_alone_se = mean_se(miss_0_E[valid_E])
    return dict(
        absorption=absorption,
        absorption_se=absorption_se,
        full_absorption=full,
        full_absorption_se=full_se,
        absorption_any=absorption_any,
        absorption_any_se=absorption_any_se,
        absorption_any_lost=absorption_any_lost,
        absorption_any_lost_se=absorption_any_lost_se,
        absorbed_edges=(absorption_E[valid_E] > 0.5).double().mean().item() if valid_E.any() else math.nan,
        miss_with_child=miss_with_child,
        miss_with_child_se=miss_with_child_se,
        miss_alone=miss_alone,
        miss_alone_se=miss_alone_se,
        parent_recovered=recovered,
        parent_recovered_se=math.sqrt(recovered * (1 - recovered) / P),
        parent_lost=lost_P.double().mean().item(),
        n_edges=int(valid_E.sum()),
        n_edges_any=int(valid_any_E.sum()),
        n_edges_any_lost=int(valid_lost_E.sum()),
        n_edges_total=E,
        n_samples=n_samples,
        cos_threshold=cos_threshold,
        per_edge=dict(
            parent=parent_E.tolist(),
            child=child_E.tolist(),
            absorption=[round(a, 4) for a in absorption_E.tolist()],
            full=[round(a, 4) for a in full_E.tolist()],
            absorption_any=[round(a, 4) if v else None for a, v in zip(any_E.tolist(), valid_any_E.tolist())],
            valid=valid_E.tolist(),
        ),
    )


@torch.no_grad()
def saelens_metrics(
    sae, model, n_samples: int = 100_000, batch_size: int = 10_000, seed: int = 0, cache_dir: str | Path | None = None
) -> dict:
    """SAELens's ground-truth metrics (`eval_sae_on_synthetic_data`: explained variance, MCC,
    uniqueness, per-latent precision / recall / F1, L0, dead latents, shrinkage), computed with its
    own calculators in one pass so that each comes with an SE: explained variance over batches
    (std of the per-batch values / sqrt(batches)), precision / recall / F1 over latents (they are
    means over latents). MCC and uniqueness depend on the decoder alone: no sampling noise (their
    spread is over SAE seeds). Same numbers as eval_sae_on_synthetic_data for the same seed and
    batch size (tests/test_synth.py holds them equal). The samples: eval_batches(model, n_samples,
    batch_size, seed, cache_dir)."""
    from sae_lens.evals import ExplainedVarianceCalculator
    from sae_lens.synthetic import (
        ClassificationMetricsCalculator,
        DeadLatentsCalculator,
        L0Calculator,
        ShrinkageCalculator,
        feature_uniqueness,
        mean_correlation_coefficient,
    )

    v_ND = model.feature_dict.feature_vectors
    true_l0, sae_l0, dead = L0Calculator(), L0Calculator(), DeadLatentsCalculator(sae.W_dec.shape[0])
    shrinkage, ev, classes = ShrinkageCalculator(), ExplainedVarianceCalculator(), ClassificationMetricsCalculator(sae.W_dec, v_ND)
    ev_per_batch = []
    for x_BD, f_BN in eval_batches(model, n_samples, batch_size, seed, cache_dir):
        acts_BF = sae.encode(x_BD)
        x_hat_BD = sae.decode(acts_BF)
        for calc, args in (
            (true_l0, (f_BN,)),
            (sae_l0, (acts_BF,)),
            (dead, (acts_BF,)),
            (shrinkage, (x_hat_BD, x_BD)),
            (ev, (x_hat_BD, x_BD)),
        ):
            calc.add_batch(*args)
        classes.add_batch(acts_BF, f_BN)
        one = ExplainedVarianceCalculator()
        one.add_batch(x_hat_BD, x_BD)
        ev_per_batch.append(one.compute())
    tp, fp, fn = classes.tp, classes.fp, classes.fn
    precision_F = torch.where(tp + fp > 0, tp / (tp + fp), torch.zeros_like(tp))
    recall_F = torch.where(tp + fn > 0, tp / (tp + fn), torch.zeros_like(tp))
    f1_F = torch.where(precision_F + recall_F > 0, 2 * precision_F * recall_F / (precision_F + recall_F), torch.zeros_like(tp))
    out = dict(
        explained_variance=ev.compute(),
        explained_variance_se=mean_se(torch.tensor(ev_per_batch))[1],
        mcc=mean_correlation_coefficient(sae.W_dec, v_ND),
        uniqueness=feature_uniqueness(sae.W_dec, v_ND),
        true_l0=true_l0.compute(),
        sae_l0=sae_l0.compute(),
        dead_latents=dead.compute(),
        shrinkage=shrinkage.compute(),
    )
    for name, per_latent in (("precision", precision_F), ("recall", recall_F), ("f1", f1_F)):
        out[name], out[f"{name}_se"] = mean_se(per_latent)
    return out


# ----------------------------------------------------------------------------------------------
# The synth profile: lm_name "synth:<world>" names the world in WORLDS
# ----------------------------------------------------------------------------------------------

PREFIX = "synth:"


def world_of(lm_name: str) -> dict:
    """The world dict that lm_name names: "synth:<name>", a key of WORLDS, or "synth:<file>.json",
    a world dict of your own (SyntheticModelConfig's fields, as in WORLDS)."""
    from sae_harness.run.rundir import UsageError

    name = lm_name.removeprefix(PREFIX)
    if lm_name.startswith(PREFIX) and name.endswith(".json"):
        try:
            world = json.loads(Path(name).read_text())
        except (OSError, ValueError) as e:
            raise UsageError(f"synthetic world file {name}: {e}") from None
        try:
            model_config(world, 0)  # a world SAELens cannot build fails here, in one line
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise UsageError(f"synthetic world file {name}: not a SyntheticModelConfig ({type(e).__name__}: {e})") from None
        return world
    if not lm_name.startswith(PREFIX) or name not in WORLDS:
        choices = ", ".join(PREFIX + w for w in WORLDS)
        raise UsageError(f"unknown synthetic world {lm_name!r}: choose {choices}, or synth:<file>.json (a world dict)")
    return WORLDS[name]


def world_seed(data_seed: int) -> int:
    """The world's seed for --data_seed: a hash, never data_seed itself. SAELens draws the world's
    feature vectors with torch.Generator().manual_seed(seed).randn(N, D) and the SAE's decoder is
    drawn the same way from --seed, so with seed == data_seed (both 42 by default) and F <= N the
    SAE would start at the true features (before the world's light orthogonalisation): plain
    TopK's absorption read 0.58 from there against 0.38 from a random start in the study."""
    return int(hashlib.sha256(f"synth-world-{data_seed}".encode()).hexdigest()[:8], 16)


def activation_buffer(cfg, device: torch.device):
    """buffer.ActivationBuffer over cfg.tokens samples of the world cfg.lm_name names (world seed
    world_seed(cfg.data_seed); the samples' seed cfg.data_seed), built once into cfg.cache_dir."""
    path, key = training_cache(world_of(cfg.lm_name), world_seed(cfg.data_seed), cfg.tokens, cfg.data_seed, cfg.cache_dir)
    samples = buffer.ActivationBuffer(path, key, cfg.batch_size, cfg.seed, device)
    print(f"synthetic samples: {path} ({samples.rows} x {samples.d_model}); clear with: rm -r {path}")
    return samples


def run_synth_eval(sae, cfg, n_samples: int | None = None) -> dict:
    """The "synthetic evaluation results" block: the saved SAE (on raw world activations) against
    the world's ground truth, on samples seeded by cfg.eval_seed (drawn once into cfg.cache_dir,
    eval_batches): SAELens's metrics
    (saelens_metrics) and the hierarchy absorption (hierarchy_absorption), with "standard_errors"
    for the headline metrics (schema.summarize reads them)."""
    model = world(world_of(cfg.lm_name), world_seed(cfg.data_seed), cfg.cache_dir)
    n_samples = n_samples or EVAL_SAMPLES
    sae = sae.to("cpu").float()
    metrics = saelens_metrics(sae, model, n_samples=n_samples, seed=cfg.eval_seed, cache_dir=cfg.cache_dir)
    absorption = hierarchy_absorption(sae, model, n_samples=n_samples, seed=cfg.eval_seed + 1, cache_dir=cfg.cache_dir)
    absorption.pop("per_edge")
    return dict(
        world=cfg.lm_name,
        metrics=metrics,
        absorption=absorption,
        standard_errors=dict(
            synth_absorption=absorption.get("absorption_se"),
            synth_full_absorption=absorption.get("full_absorption_se"),
            synth_explained_variance=metrics["explained_variance_se"],
            synth_f1=metrics["f1_se"],
            synth_absorption_any=absorption.get("absorption_any_se"),
            synth_parent_recovered=absorption.get("parent_recovered_se"),
            synth_miss_with_child=absorption.get("miss_with_child_se"),
            synth_miss_alone=absorption.get("miss_alone_se"),
            synth_absorption_any_lost=absorption.get("absorption_any_lost_se"),
        ),
    )


EVAL_SAMPLES = 100_000
"""Fresh world samples per ground-truth eval (each of the two passes)."""


def evaluate(sae, inputs) -> dict:
    """The synthetic block (registry.py): run_synth_eval on the saved SAE with the run's config."""
    return run_synth_eval(sae, inputs.cfg)


# ----------------------------------------------------------------------------------------------
# The mechanism, observed during training
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def mechanism(W_dec_FD: torch.Tensor, cofiring, model) -> dict:
    """Where the orthogonality term acts on one batch, against the truth. cofiring: the batch's
    (fired_A, n_AA, c_AA) as experiment.cofiring defines them (the term's own definition, handed in,
    never restated here). Hierarchy pairs: the latents (l(p), l(c)) of every edge, matched by decoder
    direction at this step; other pairs: every other pair of latents that fired in the batch. For
    each group: mean co-firing n_ij, mean decoder |cos|, and the share of P = sum c_ij |cos_ij| the
    group carries (computed for every arm, so plain TopK shows the share the term would carry)."""
    parent_E, child_E = _edges(model)
    latent_N, _ = match_by_direction(W_dec_FD, model.feature_dict.feature_vectors, (parent_E, child_E))
    l_parent_E, l_child_E = latent_N[parent_E], latent_N[child_E]
    fired_A, n_AA, c_AA = (t.cpu() for t in cofiring)
    W_hat_AD = unit(W_dec_FD.detach().float()[fired_A])
    cos_AA = (W_hat_AD @ W_hat_AD.T).abs()
    position_F = torch.full((W_dec_FD.shape[0],), -1, dtype=torch.long)
    position_F[fired_A] = torch.arange(len(fired_A))
    i_E, j_E = position_F[l_parent_E], position_F[l_child_E]
    both_E = (i_E >= 0) & (j_E >= 0) & (i_E != j_E)
    hier_AA = torch.zeros_like(c_AA, dtype=torch.bool)
    hier_AA[i_E[both_E], j_E[both_E]] = True
    hier_AA[j_E[both_E], i_E[both_E]] = True
    other_AA = ~hier_AA
    other_AA.fill_diagonal_(False)
    other_N = other_AA.flatten().nonzero().squeeze(1)  # found once, read twice (as n_AA[other_AA] reads them)
    weighted_AA = c_AA * cos_AA
    P = weighted_AA.sum().item()
    W_hat_FD = unit(W_dec_FD.detach().float())
    return dict(
        mech_hier_pairs=int(both_E.sum()),
        mech_hier_cofire=n_AA[hier_AA].mean().item() if hier_AA.any() else None,
        mech_hier_cos=(W_hat_FD[l_parent_E] * W_hat_FD[l_child_E]).sum(-1).abs().mean().item(),
        mech_hier_share=weighted_AA[hier_AA].sum().item() / P if P > 0 else None,
        mech_other_cofire=n_AA.flatten()[other_N].mean().item() if len(other_N) else None,
        mech_other_cos=cos_AA.flatten()[other_N].mean().item() if len(other_N) else None,
    )


def _edges(model) -> tuple[torch.Tensor, torch.Tensor]:
    if not hasattr(model, "_synth_edges"):
        model._synth_edges = hierarchy_edges(model)
    return model._synth_edges


_WORLDS_LOADED: dict = {}


def mechanism_record(cfg, W_dec_FD: torch.Tensor, cofiring) -> dict:
    """mechanism(...) for a training-log record of the synth profile (the world loaded once)."""
    key = (cfg.lm_name, cfg.data_seed, str(cfg.cache_dir))
    if key not in _WORLDS_LOADED:
        _WORLDS_LOADED[key] = world(world_of(cfg.lm_name), world_seed(cfg.data_seed), cfg.cache_dir)
    return mechanism(W_dec_FD.cpu(), cofiring, _WORLDS_LOADED[key])
