"""What the gemma-2-2b profile costs on a GPU, without the hub. Not a test; needs CUDA.

    python benchmarks/gemma2_cost.py --steps 300

A randomly initialised Gemma 2 2B (google/gemma-2-2b's architecture and sizes, random weights) is
saved to a local folder and goes through the profile's own extraction (layer 12 resid_post) and
training (16,384 latents, k 320, batch 2048), for --steps steps of plain TopK and of the default
(progressive) variant. Prints tokens/s and peak GPU memory of each phase, then one JSON line.

Random weights make these costs, not results: the activations are not Gemma 2's, so nothing here
says how well an SAE learns them. Text: BBC News through a character-level stand-in tokenizer
(Gemma 2's own is on the hub); a forward's cost per token does not depend on the token ids.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench import report  # noqa: E402  (benchmarks/, on the path when run as a script)

import experiment as E  # noqa: E402
from sae_harness.run import cli, data, standins  # noqa: E402
from sae_harness.run.tracking import Tracker  # noqa: E402


def gib(n_bytes: int) -> float:
    return n_bytes / 2**30


def phase(fn):
    """(result, seconds, peak GPU memory in GiB allocated by torch during fn)."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.synchronize()
    t = time.perf_counter()
    result = fn()
    torch.cuda.synchronize()
    return result, time.perf_counter() - t, gib(torch.cuda.max_memory_allocated())


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="training steps of each variant (batch 2048 tokens)")
    parser.add_argument("--workdir", default="", help="where the model folder, cache and runs go (default: a temporary folder)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gemma2_cost.py measures the gemma-2-2b profile on a GPU; no CUDA device is visible here")
    device = torch.device("cuda")
    results, rows = dict(device=torch.cuda.get_device_name(), steps=args.steps), []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        model_dir = work / "gemma-2-2b-random"
        model, build_s, _ = phase(lambda: standins.random_gemma2_2b(device))
        results["lm_parameters"] = sum(p.numel() for p in model.parameters())
        model.save_pretrained(model_dir)
        standins.char_tokenizer().save_pretrained(model_dir)
        del model
        rows.append(
            (
                "random Gemma 2 2B built and saved",
                f"{results['lm_parameters'] / 1e9:.2f} B parameters",
                f"{build_s:.1f} s to build on the GPU",
            )
        )

        def config(variant):
            argv = ["--out_dir", str(work / variant), "--profile", "gemma-2-2b", "--lm_name", str(model_dir), "--text_source", "bbc"]
            argv += ["--tokens", str(args.steps * 2048), "--evals", "none", "--cache_dir", str(work / "cache"), "--variant", variant]
            cfg = E.parse_args(argv)
            cli.validate(cfg)
            return cfg

        cfg = config("none")
        buffer, extract_s, extract_mem = phase(lambda: data.activation_buffer(cfg, device, data.text_split(cfg)[0]))
        results.update(extraction_tokens_per_s=cfg.tokens / extract_s, extraction_peak_gib=extract_mem, extraction_s=extract_s)
        rows.append(
            (
                f"extraction, layer {cfg.layer}, {cfg.tokens:,} tokens, {cfg.llm_batch_size} x {cfg.context_length} per forward",
                f"{cfg.tokens / extract_s:,.0f} tok/s",
                f"peak {extract_mem:.1f} GiB (model load included)",
            )
        )
        for variant in ("none", "progressive"):
            cfg = config(variant)
            out = Path(cfg.out_dir)
            out.mkdir(parents=True)
            (_, final), seconds, mem = phase(lambda cfg=cfg, out=out: E.train(cfg, buffer, device, out, Tracker("", "", {}, out)))
            first = json.loads((out / "training_log.jsonl").read_text().splitlines()[0])
            results[variant] = dict(
                train_tokens_per_s=final["tokens"] / final["seconds"],
                train_seconds=final["seconds"],
                peak_gib=mem,
                ortho_share_at_p0=first["ortho_share"],
                final_fvu=final["fvu"],
                ortho_impl=final["ortho_impl"],  # "fast" unless it disagreed with the reference on this GPU
            )
            rows.append(
                (
                    f"training, {variant}, {cfg.total_steps} steps of {cfg.batch_size}, F {cfg.dict_size}, k {cfg.k}",
                    f"{final['tokens'] / final['seconds']:,.0f} tok/s ({final['seconds']:.1f} s)",
                    f"peak {mem:.1f} GiB; term's share of the loss at p=0: {first['ortho_share']:.3f}",
                )
            )
        results["progressive_vs_none_train_ratio"] = results["progressive"]["train_seconds"] / results["none"]["train_seconds"]
    report(results, rows)


if __name__ == "__main__":
    main(sys.argv[1:])
