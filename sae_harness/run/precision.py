"""Which floating-point precision each part of a run computes in, chosen by what is fast on this
machine, once per process.

CPUs differ: with AMX or AVX-512-BF16 a bfloat16 matmul runs several times faster than a float32
one; with AVX2 only, PyTorch emulates it about 200x slower. So `auto` (every dtype option's
default) times one matmul in both precisions here and takes bfloat16 only where it is measurably
faster; CUDA always takes bfloat16. An explicit bfloat16 or float32 still wins, with one line at
start when it was measured to be over SLOW_RATIO times slower than the other.

What it decides (`Precision`, recorded in final_info.json):
- llm: the language model's forward during activation extraction (`--llm_dtype`);
- sae: the SAE's training matmuls, the encoder under autocast and the orthogonality term's Gram and
  gradient products (`--sae_dtype`); the master weights and the optimiser stay float32;
- evals: the language model inside the SAEBench evals. Not an option: float32 on CPU on every
  machine, so that eval scores compare across machines; on CUDA the profile's (bfloat16 for
  gemma-2-2b, as the seed ran it);
- the exact co-firing counts (the term, its diagnostics, the held-out separation eval): int8 x int8
  -> int32 products where those are measured fast (AMX, VNNI), else float32 (`int8_counts`).
"""

import functools
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from sae_harness.run import profiles

CHOICES = ("auto", "bfloat16", "float32")
FASTER = 1.1
"""auto takes bfloat16 when a bfloat16 matmul is at least this many times faster than float32."""
SLOW_RATIO = 10.0
"""An explicit choice measured this many times slower than the other gets a line at start."""

# The probe: a first small product (an emulated bfloat16 or int8 kernel costs several ms on it, a
# native one well under 1 ms) decides on its own when the low precision is many times slower;
# otherwise a product of the kind the run computes decides: for bfloat16 a 256-token slice of the
# encoder's 640 x 4096; for int8 one row block of the co-firing counts, 0/1 masks of TopK density
# (512 latents x 1,024 tokens @ 1,024 tokens x 4,096 latents), in both dtypes. Random dense int8
# operands misjudge it: on an AMX CPU they read int8 ~1.5x slower than float32, while the counts
# themselves run ~5x faster in int8.
SCREEN_SHAPE = (32, 256, 512)
PROBE_SHAPES = {torch.bfloat16: (256, 640, 4096), torch.int8: (512, 1024, 4096)}
MASK_DENSITY = 64 / 4096
"""The probe's 0/1 masks fire like the default TopK (k / width)."""
SCREEN_SLOW = 4.0


def time_matmul(dtype: torch.dtype, shape: tuple[int, int, int], repeat: int, masks: bool = False) -> float:
    """Fastest of `repeat` timings, in seconds, of an (m, k) @ (k, n) product in dtype on the CPU
    (int8: torch._int_mm, int8 x int8 -> int32, as the exact co-firing counts use it), after one
    warm-up call (oneDNN builds a kernel per new shape). The fastest, not the median: another process
    only ever adds time, and one preempted call of a 0.1 ms product reads 40x slower. masks: operands
    are 0/1 firing masks (MASK_DENSITY), else Gaussian (int8 always gets 0/1 operands)."""
    m, k, n = shape
    gen = torch.Generator().manual_seed(0)
    if masks or dtype == torch.int8:
        a, b = (torch.rand(m, k, generator=gen) < MASK_DENSITY), (torch.rand(k, n, generator=gen) < MASK_DENSITY)
    else:
        a, b = torch.randn(m, k, generator=gen), torch.randn(k, n, generator=gen)
    a, b = a.to(dtype), b.to(dtype)
    product = (lambda: torch._int_mm(a, b)) if dtype == torch.int8 else (lambda: a @ b)
    product()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        product()
        times.append(time.perf_counter() - t)
    return min(times)


def measure_speedup(dtype: torch.dtype, timer=time_matmul) -> float:
    """float32 seconds / dtype seconds of a matmul on this CPU (> 1: dtype is faster).
    timer(dtype, shape, repeat, masks) -> seconds. A few milliseconds where dtype is native, ~20 ms where
    it is emulated.

    The screen runs on one thread: with every thread, a small float32 product on a CPU whose other core
    is busy waits on the busy thread (measured: 7.8 ms instead of 0.1 ms, on an AMX CPU with AVX2
    kernels forced), the screen then reads an emulated bfloat16 as "about as fast" and the large probe
    runs in emulation, 35 s. On one thread, the fastest of 3 calls, the screen read 0.013-0.02 there
    (busy or not); a native bfloat16 reads 0.5-1.0 and goes on to the probe."""
    masks = dtype == torch.int8  # the counts' float32 route multiplies the same 0/1 masks
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        screen = timer(torch.float32, SCREEN_SHAPE, 3, masks) / timer(dtype, SCREEN_SHAPE, 3, masks)
    finally:
        torch.set_num_threads(threads)
    if screen < 1 / SCREEN_SLOW:
        return screen
    shape = PROBE_SHAPES[dtype]
    return timer(torch.float32, shape, 5, masks) / timer(dtype, shape, 5, masks)


@functools.cache
def cpu_speedup(dtype: torch.dtype) -> float:
    """measure_speedup(dtype), measured once per process."""
    return measure_speedup(dtype)


def int8_counts(device: torch.device) -> bool:
    """Whether exact co-firing counts are int8 x int8 -> int32 products (on a CPU where they beat
    float32: AMX, AVX-512-VNNI), else float32 products (exact below 2^24 tokens)."""
    return torch.device(device).type == "cpu" and cpu_speedup(torch.int8) >= FASTER


def device_of(cfg) -> torch.device:
    """The device a config runs on (cfg.device: auto, cpu or cuda)."""
    cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if cuda else "cpu")


def choose(requested: str, device: torch.device) -> torch.dtype:
    """The dtype for a `requested` option value (auto, bfloat16, float32) on device."""
    if requested not in CHOICES:
        raise ValueError(f"precision must be one of {', '.join(CHOICES)}, got {requested!r}")
    if requested != "auto":
        return getattr(torch, requested)
    if torch.device(device).type == "cuda":
        return torch.bfloat16
    return torch.bfloat16 if cpu_speedup(torch.bfloat16) >= FASTER else torch.float32


def name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class Precision:
    device: str
    cpu_capability: str
    """torch.backends.cpu.get_cpu_capability(): AVX2, AVX512, AMX, ..."""
    cpu_model: str
    """The CPU's model name (/proc/cpuinfo, else platform.processor()): runs in bfloat16 on two CPU kinds are not bit-identical."""
    bf16_speedup: float | None
    """float32 / bfloat16 seconds of a matmul on this CPU, measured (None on CUDA)."""
    int8_speedup: float | None
    """float32 / int8 seconds of a matmul on this CPU, measured (None on CUDA): the co-firing counts' dtype."""
    threads: int
    """torch's intra-op threads in this run: CPU reductions split their sums by thread, so a run with
    another count (sweep.py --parallel 2 gives each run cores / 2) differs from this one in the last
    bits, and training carries that on (a synth run's final loss by ~0.1%)."""
    llm: str
    sae: str
    evals: str
    requested: dict
    """The option values asked for: {"llm_dtype": ..., "sae_dtype": ...}."""

    def line(self) -> str:
        how = (
            "CUDA"
            if self.bf16_speedup is None
            else f"CPU {self.cpu_capability}, measured here: a bfloat16 matmul {speed_words(self.bf16_speedup)} than float32, int8 {speed_words(self.int8_speedup)}"
        )
        chosen = f"extraction {self.llm}, SAE {self.sae}, evals {self.evals}"
        return f"precision: {chosen} ({how}; {', '.join(f'--{k} {v}' for k, v in self.requested.items())})"

    def warnings(self) -> list[str]:
        """One line per explicit choice measured over SLOW_RATIO times slower than the other."""
        if self.bf16_speedup is None:
            return []
        out = []
        for option, chosen in (("llm_dtype", self.llm), ("sae_dtype", self.sae)):
            if self.requested[option] == "auto":
                continue
            slowdown = 1 / self.bf16_speedup if chosen == "bfloat16" else self.bf16_speedup
            if slowdown > SLOW_RATIO:
                other = "float32" if chosen == "bfloat16" else "bfloat16"
                out.append(
                    f"warning: --{option} {chosen} was asked for, but a {chosen} matmul measured {slowdown:.0f}x slower than "
                    f"{other} on this CPU ({self.cpu_capability}): expect a run many times longer (--{option} auto picks {other} here)"
                )
        return out

    def record(self) -> dict:
        return asdict(self)


def cpu_model() -> str:
    """The CPU's model name, as /proc/cpuinfo gives it (Linux), else platform.processor(), else "unknown"."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def speed_words(speedup: float) -> str:
    return f"{speedup:.2g}x faster" if speedup >= 1 else f"{1 / speedup:.3g}x slower"


def eval_dtype(profile: str, device: torch.device) -> str:
    """The evals' language-model dtype: float32 on CPU; on CUDA bfloat16 for gemma-2-2b (the seed's)."""
    return "bfloat16" if torch.device(device).type == "cuda" and profile == profiles.GEMMA2 else "float32"


def resolve(llm_dtype: str, sae_dtype: str, device: torch.device, profile: str) -> Precision:
    """Every precision of a run on device (the evals' from the rule in the module docstring)."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    return Precision(
        device=device.type,
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        cpu_model=cpu_model(),
        bf16_speedup=None if cuda else round(cpu_speedup(torch.bfloat16), 4),
        int8_speedup=None if cuda else round(cpu_speedup(torch.int8), 4),
        threads=torch.get_num_threads(),
        llm=name(choose(llm_dtype, device)),
        sae=name(choose(sae_dtype, device)),
        evals=eval_dtype(profile, device),
        requested=dict(llm_dtype=llm_dtype, sae_dtype=sae_dtype),
    )
