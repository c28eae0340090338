"""The activation cache's on-disk format and its reader: acts.npy (N, D) int16 holding bfloat16
bits, meta.json with the key, rows, d_model and mean squared norm; ActivationBuffer serves it as
training batches, and geometric_median gives a batch's (where the decoder bias starts). Both the
language-model caches (data.py) and the synthetic samples (synth.py) are written in this format,
so each imports this module and neither imports the other."""

import errno
import json
import math
import os
from pathlib import Path

import numpy as np
import torch


def create_acts(path: Path, rows: int, d_model: int) -> np.memmap:
    """acts.npy for rows x d_model activations, opened for writing, its blocks reserved on disk up
    front: a disk that fills up then fails here with ENOSPC (an OSError, said in one line), not
    later inside a write to the mapping, where it would kill the process with SIGBUS."""
    acts = np.lib.format.open_memmap(path, mode="w+", dtype=np.int16, shape=(rows, d_model))
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):  # a filesystem without it: written as before
                raise OSError(e.errno, e.strerror, str(path)) from None
    return acts


def read_cache(path: Path, key: dict):
    """(acts memmap (N, D) int16 holding bf16 bits, meta) for a complete, matching cache, else None."""
    try:
        meta = json.loads((path / "meta.json").read_text())
        acts = np.load(path / "acts.npy", mmap_mode="r")
    except (OSError, ValueError):
        return None
    if meta.get("key") != key or acts.shape != (meta["rows"], meta["d_model"]) or acts.dtype != np.int16:
        return None
    return acts, meta


class ActivationBuffer:
    """Serves (B, D) float32 batches from the activation cache in a seeded random order over all
    contexts, scaled by a fixed factor so that E||x||^2 = D. Batch `step` is a pure function of
    (seed, step), which makes resuming exact. Past the end of the cache (more than one epoch) the
    rows are served again in a fresh order per epoch; epoch 0's order is seeded by `seed` alone."""

    def __init__(self, path: Path, key: dict, batch_size: int, seed: int, device: torch.device):
        found = read_cache(path, key)
        if found is None:
            raise RuntimeError(f"activation cache {path} is missing or incomplete")
        self.acts, meta = found
        self.path = path
        self.rows, self.d_model = self.acts.shape
        self.scale = math.sqrt(meta["mean_sq_norm"] / self.d_model)  # x_normalized = x / scale
        self.batch_size = batch_size
        self.device = device
        self.seed = seed
        self.steps_per_epoch = self.rows // batch_size
        self._orders = {}

    def order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            generator = torch.Generator().manual_seed(self.seed + 1_000_003 * epoch)
            self._orders = {epoch: torch.randperm(self.rows, generator=generator).numpy()}  # one epoch held at a time
        return self._orders[epoch]

    def batch(self, step: int) -> torch.Tensor:
        epoch, step = divmod(step, self.steps_per_epoch)
        rows = np.sort(self.order(epoch)[step * self.batch_size : (step + 1) * self.batch_size])
        x_BD = torch.from_numpy(self.acts[rows]).view(torch.bfloat16)
        return x_BD.to(self.device, non_blocking=True).float() / self.scale


def geometric_median(x_ND: torch.Tensor, iters: int = 100, eps: float = 1e-5) -> torch.Tensor:
    """The geometric median of the rows of x (Weiszfeld's algorithm): where a TopK SAE's decoder bias
    starts (experiment.TrainerTopK.start)."""
    median_D = x_ND.mean(0)
    for _ in range(iters):
        weights_N = 1 / (x_ND - median_D).norm(dim=-1).clamp_min(eps)
        new_D = (weights_N[:, None] * x_ND).sum(0) / weights_N.sum()
        if (new_D - median_D).norm() < eps:
            return new_D
        median_D = new_D
    return median_D
