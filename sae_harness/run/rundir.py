"""The run directory: final_info.json (RunDir: the run's state, the recorded config, each eval's
result recorded atomically), atomic writes, checkpoints, the saved SAE, and stopping on Ctrl-C /
SIGTERM with a checkpoint or on a full disk with what was kept. A run directory is data, not code:
its checkpoints are read as tensors and plain values only."""

import contextlib
import dataclasses
import enum
import errno
import json
import os
import shutil
import signal
import sys
from pathlib import Path

from sae_harness.evals.registry import by_name
from sae_harness.run.checks import PLACE, fields_with
from sae_harness.run.schema import aggregate, config_differences, eval_done, summarize, training_key


class Exit(enum.IntEnum):
    """The exit status of experiment.py and sweep.py (and of each sweep job): one table for both."""

    DONE = 0
    EVAL_FAILED = 1  # training and the other evals are kept; a rerun retries the failed ones
    BAD_INPUT = 2
    TRAINING_FAILED = 3
    NO_SPACE = 4  # what was finished is kept; the same command continues once space is freed
    INTERRUPTED = 130


EXIT_MEANING = {
    Exit.DONE: "done",
    Exit.EVAL_FAILED: "done, an eval failed (rerun to retry it)",
    Exit.BAD_INPUT: "bad input",
    Exit.TRAINING_FAILED: "training failed",
    Exit.NO_SPACE: "out of disk space (free some, then rerun)",
    Exit.INTERRUPTED: "interrupted",
}


def describe_exit(code) -> str:
    return EXIT_MEANING.get(code, str(code))


class UsageError(Exception):
    """Bad input: the CLI prints the message as one line and exits with status 2."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM; the message says what was kept and how to continue."""


class TrainingFailed(Exception):
    """A non-finite loss; the message names the step, the term and the checkpoint kept."""


class OutOfSpace(Exception):
    """Too little disk space for a cache, or a write that failed with ENOSPC; the message says what
    was kept and that the same command continues once space is freed."""


def disk_full(error: BaseException | None) -> OSError | None:
    """The ENOSPC (or EDQUOT) OSError behind error, if any: torch.save reports one as a RuntimeError
    whose context is the OSError."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return error
        error = error.__context__
    return None


def check_free_space(folder: Path, needed: int, what: str) -> None:
    """Refuse (OutOfSpace) before building what needs `needed` bytes in folder when the disk has
    less free, naming both numbers."""
    folder = Path(folder)
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise OutOfSpace(
            f"{what} needs {size_text(needed)} in {folder} but only {size_text(free)} is free there; "
            "free some space (or pass another --cache_dir) and run the same command again"
        )


def size_text(n: float) -> str:
    """A byte count as people read it: 1000 bytes, 512 KiB, 1020 MiB, 23.4 GiB."""
    if n < 1024:
        return f"{int(n)} bytes"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024:
            return f"{n:.3g} {unit}" if n < 1000 else f"{n:.0f} {unit}"  # .3g writes 1020 as 1.02e+03
    return f"{n / 1024:.3g} TiB"


def write_atomic(path: Path, write, previous: Path | None = None) -> None:
    """write(tmp_path) then rename: a reader never sees a half-written file. With previous, the file
    it replaces is kept there. A full disk raises its OSError naming path, with no partial file left."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        if previous is not None and path.exists():
            os.replace(path, previous)
        os.replace(tmp, path)
    except Exception as e:
        raise_named(e, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def raise_named(error: Exception, path: Path):
    """Raise error again, or, where a full disk is behind it, its OSError naming path (the file it
    stopped; a failed write names none, and torch.save's RuntimeError only chains it)."""
    if (full := disk_full(error)) is None:
        raise error
    raise OSError(full.errno, full.strerror, str(path)) from None


def write_json_atomic(path: Path, obj) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, default=float)))


def recorded_config(cfg, **extra) -> dict:
    """The config a run records in final_info.json: every field, with the lr and the step count as
    resolved, then extra (what only training knows). Sweeps compare runs by it."""
    return dataclasses.asdict(cfg) | dict(lr=cfg.resolved_lr, steps=cfg.total_steps) | extra


def comparable_config(cfg) -> dict:
    """recorded_config less the fields two copies of one run may differ in (their role PLACE:
    where it is kept and how it is watched)."""
    place = fields_with(cfg, PLACE)
    return {k: v for k, v in recorded_config(cfg).items() if k not in place}


def differing_options(recorded: dict, cfg) -> list[str]:
    """'field: recorded there, wanted now' for each field of a recorded config (a run directory's,
    or a results JSON's record of it) that cfg sets otherwise; where a run is kept is no difference."""
    wanted = comparable_config(cfg)
    differ, _ = config_differences([recorded, wanted], ignore=fields_with(cfg, PLACE))
    return [f"{k}: {recorded[k]!r} there, {wanted[k]!r} now" for k in differ]


class RunDir:
    """One run directory's final_info.json, read by state() and rewritten atomically on every
    change: the training block (the recorded config and the training results), one block per eval,
    and the summary, kept current with them."""

    def __init__(self, path: Path, layer: int):
        self.path = Path(path)
        self.info_path = self.path / "final_info.json"
        self.training_key = training_key(layer)
        self.info: dict = {}

    def state(self, evals: list[str]) -> str:
        """'new', 'resume' (checkpoint or pending evals) or 'finished'. Rejects unusable dirs."""
        out = self.path
        if out.exists() and not out.is_dir():
            raise UsageError(f"out_dir {out} is a file, not a directory")
        parent = out if out.exists() else out.parent
        if not os.access(parent if parent.exists() else Path.cwd(), os.W_OK):
            raise UsageError(f"out_dir {out} is not writable")
        if not self.info_path.exists():
            return "resume" if any((out / name).exists() for name in (CHECKPOINT, PREVIOUS_CHECKPOINT)) else "new"
        try:
            self.info = json.loads(self.info_path.read_text())
        except ValueError:
            raise UsageError(f"{self.info_path} is not valid JSON; move it away or pass --overwrite") from None
        if self.trained and not self.pending(evals):
            return "finished"
        return "resume"

    @property
    def trained(self) -> bool:
        return "final_info" in self.info.get(self.training_key, {})

    def pending(self, evals: list[str]) -> list[str]:
        """The evals of these that have no result yet (or an error)."""
        return [name for name in evals if not eval_done(self.info.get(by_name(name).block))]

    def config_differences(self, cfg) -> list[str]:
        """'field: recorded there, wanted now' for each recorded config field that cfg sets otherwise."""
        return differing_options(self.info[self.training_key]["config"], cfg)

    def record_training(self, config: dict, final: dict) -> None:
        self.info[self.training_key] = dict(config=config, final_info=final)
        self.write()

    def record_eval(self, block: str, result: dict) -> None:
        """One eval's result, skip or error into its block, with the summary, in one atomic write."""
        self.info[block] = result
        self.write_summary()

    def write_summary(self) -> None:
        self.info["summary"] = summarize(self.info)
        self.write()

    def write(self) -> None:
        write_json_atomic(self.info_path, self.info)


def read_info(out: Path) -> dict:
    path = out / "final_info.json"
    return json.loads(path.read_text()) if path.exists() else {}


def write_seeds_aggregate(out: Path, runs: dict) -> dict:
    """A multi-seed run's own final_info.json from its seeds' ({seed: run dir}; schema.aggregate)."""
    info = aggregate({s: read_info(r) for s, r in runs.items()}, {s: r.name for s, r in runs.items()})
    write_json_atomic(out / "final_info.json", info)
    return info


def remove_leftovers(out: Path) -> None:
    """The temporary files and folders of atomic writes (.<name>.tmp<pid>) that a killed process
    left in out; called by the process that holds out, so none of them is being written."""
    for stale in Path(out).glob(".*.tmp*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def clear_run(out: Path) -> None:
    """Remove what a previous run wrote (only our own files)."""
    for name in ("final_info.json", "training_log.jsonl", CHECKPOINT, PREVIOUS_CHECKPOINT, "split.json"):
        (out / name).unlink(missing_ok=True)
    for name in ("sae", "evals"):
        shutil.rmtree(out / name, ignore_errors=True)
    for png in out.glob("*.png"):
        png.unlink()


CHECKPOINT, PREVIOUS_CHECKPOINT = "checkpoint.pt", "checkpoint.prev.pt"
CHECKPOINT_KEYS = {"trainer", "step", "elapsed_s", "config"}


def previous_checkpoint(path: Path) -> Path:
    return Path(path).with_name(PREVIOUS_CHECKPOINT)


def save_checkpoint(path: Path, state: dict) -> None:
    """state (tensors and plain values only) to path, atomically; the checkpoint it replaces is kept
    as checkpoint.prev.pt, for a resume to fall back on should this one be damaged. A full disk
    raises its OSError (torch.save's own error only chains it), with no partial file left."""
    import torch

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # through Python's file object, so that a failed write is an OSError torch chains
            torch.save(state, f)

    write_atomic(path, write, previous=previous_checkpoint(path))


def load_checkpoint(path: Path, device) -> dict | None:
    """The state of readable_checkpoint(path, device), or None."""
    found = readable_checkpoint(path, device)
    return found[1] if found else None


def readable_checkpoint(path: Path, device) -> tuple[Path, dict] | None:
    """(file, state) of the newest readable checkpoint: path, else the one before it; None when
    neither is there or readable (training starts at step 0). A damaged file is named in one line,
    with what is used instead. A checkpoint holding anything but tensors and plain values (a
    pickled object: code) is refused with UsageError, never run: a run directory is data."""
    import pickle

    import torch

    path = Path(path)
    for candidate in (path, previous_checkpoint(path)):
        if not candidate.exists():
            continue
        try:
            state = torch.load(candidate, map_location=device, weights_only=True)
            if isinstance(state, dict) and CHECKPOINT_KEYS <= state.keys():
                return candidate, state
            why = "not a training checkpoint"
        except pickle.UnpicklingError as e:
            if "GLOBAL" in str(e):  # weights_only met a class or function to import: code, not data
                raise UsageError(
                    f"{candidate} holds more than tensors and plain values, so it was not loaded (a run directory is data, "
                    "not code); delete it to train from the start, or pass --overwrite"
                ) from None
            why = "unreadable"
        except Exception as e:  # truncated or garbage: the zip reader, the unpickler or EOF
            why = f"unreadable ({type(e).__name__})"
        instead = previous_checkpoint(path)
        fallback = (
            f"resuming from the previous checkpoint, {instead}"
            if candidate == path and instead.exists()
            else "training starts again from step 0"
        )
        print(f"warning: checkpoint {candidate} is damaged ({why}); {fallback}", file=sys.stderr)
    return None


def to_saelens(sae, scale: float = 1.0):
    """experiment.AutoEncoderTopK (SAEBench's TopKSAE) as a sae_lens TopKSAE on raw activations:
    training ran on x / scale, so the biases are multiplied by scale (the latent values scale with
    it; decoder rows stay unit). The format save_sae writes and the evals load."""
    from sae_lens import TopKSAE as LensTopKSAE
    from sae_lens import TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    lens = LensTopKSAE(
        TopKSAEConfig(
            d_in=sae.cfg.d_in,
            d_sae=sae.cfg.d_sae,
            k=int(sae.k),
            dtype="float32",
            device="cpu",
            apply_b_dec_to_input=True,
            normalize_activations="none",
            metadata=SAEMetadata(
                model_name=sae.cfg.model_name, hook_name=sae.cfg.hook_name, hook_layer=sae.cfg.hook_layer, prepend_bos=True
            ),
        )
    )
    lens.load_state_dict(
        {
            "W_enc": sae.W_enc.detach().cpu().float(),
            "W_dec": sae.W_dec.detach().cpu().float(),
            "b_enc": sae.b_enc.detach().cpu().float() * scale,
            "b_dec": sae.b_dec.detach().cpu().float() * scale,
        }
    )
    return lens


def save_sae(lens_sae, out: Path) -> Path:
    """A sae_lens SAE into out/sae (SAELens's on-disk format: cfg.json + sae_weights.safetensors)."""
    target = out / "sae"
    tmp = out / f".sae.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    lens_sae.save_model(tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def load_lens_sae(path: Path):
    from sae_lens import SAE

    return SAE.load_from_disk(str(path), device="cpu")


@contextlib.contextmanager
def stop_requests():
    """Within the block, SIGINT / SIGTERM set stop["signal"] instead of raising, so the loop can
    finish its step and write a checkpoint."""
    stop: dict = {}
    handlers = {sig: signal.signal(sig, lambda signum, frame: stop.setdefault("signal", signum)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def read_log(path: Path, before_step: int) -> list[dict] | None:
    """The training_log.jsonl records of steps before before_step (what a resume keeps); None when
    the log cannot give them (a line that is not a record, before a later one or among those kept:
    damaged, not just cut off by a stop). A cut-off last line is dropped: it is past the checkpoint."""
    if not path.exists() or before_step == 0:
        return []
    records, lines = [], path.read_bytes().splitlines()
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
            kept = record["step"] < before_step
        except (ValueError, TypeError, KeyError):
            if i == len(lines) - 1:
                break
            return None
        if kept:
            records.append(record)
    return records


def rewrite_log(path: Path, records: list[dict]) -> None:
    write_atomic(path, lambda tmp: tmp.write_text("".join(json.dumps(r) + "\n" for r in records)))


def resume_hint() -> str:
    return (
        f"python {' '.join(['experiment.py', *sys.argv[1:]]) if sys.argv[0].endswith('experiment.py') else 'experiment.py <same options>'}"
    )


@contextlib.contextmanager
def stage(doing: str, kept):
    """Ctrl-C inside the block becomes Interrupted, and a full disk OutOfSpace, each saying what
    was being done, what is kept (kept: a sentence, or a function that says it at the time) and
    that the same command continues."""
    try:
        yield
    except KeyboardInterrupt:
        kept = kept() if callable(kept) else kept
        raise Interrupted(f"interrupted while {doing}; {kept}. The same command continues: {resume_hint()}") from None
    except Exception as e:
        if (full := disk_full(e)) is None:
            raise
        kept = kept() if callable(kept) else kept
        raise OutOfSpace(
            f"out of disk space while {doing} (writing {full.filename or 'a file'}); {kept}, and no partial file was left. "
            f"Free some space, then the same command continues: {resume_hint()}"
        ) from None


def dose_summary(records: list[dict]) -> dict:
    """The term's dose over the logged steps where it was on: lambda2's mean (the dose an arm got,
    at the log's granularity), s = recon / P (median, range), the term's mean share of the loss, and
    its gradient on W_dec against the rest's (mean, range)."""
    if not records:
        return {}
    scale, grad = sorted(r["ortho_scale"] for r in records), [r["ortho_grad_share"] for r in records if r.get("ortho_grad_share")]
    return dict(
        ortho_lambda_mean=sum(r["ortho_lambda"] for r in records) / len(records),
        ortho_scale=scale[len(scale) // 2],
        ortho_scale_range=[scale[0], scale[-1]],
        ortho_share_mean=sum(r["ortho_share"] for r in records) / len(records),
        ortho_grad_share_mean=sum(grad) / len(grad) if grad else None,
        ortho_grad_share_range=[min(grad), max(grad)] if grad else None,
    )
