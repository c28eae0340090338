"""Precision chosen by measurement (sae_harness/run/precision.py): the choice follows a stand-in timing,
an explicit value wins with one line when it is slow, and both paths (bfloat16, float32) run end to
end on a tiny model."""

import json

import pytest
import torch
from conftest import tiny_args

import experiment as E
from sae_harness.run import data, precision


def stand_in_timer(float32_s: float, low_s: float, calls: list):
    """A timer that says a float32 matmul takes float32_s and any other dtype low_s, on every shape."""

    def timer(dtype, shape, repeat, masks):
        calls.append((dtype, shape, masks))
        return float32_s if dtype == torch.float32 else low_s

    return timer


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.int8])
def test_measure_speedup_follows_the_timer_and_stops_early_when_emulated(dtype):
    calls = []
    assert precision.measure_speedup(dtype, stand_in_timer(1.0, 200.0, calls)) == pytest.approx(1 / 200)
    assert {shape for _, shape, _ in calls} == {precision.SCREEN_SHAPE}  # the large probe is never run
    calls.clear()
    assert precision.measure_speedup(dtype, stand_in_timer(3.0, 1.0, calls)) == pytest.approx(3.0)
    masks = dtype == torch.int8  # the counts' probe: both dtypes on the same 0/1 masks
    assert {(torch.float32, precision.PROBE_SHAPES[dtype], masks), (dtype, precision.PROBE_SHAPES[dtype], masks)} <= set(calls)


def test_the_screen_runs_on_one_thread_and_the_probe_on_all():
    """A small product on every thread waits on a busy core and misreads an emulated dtype as fast."""
    threads_seen, before = {}, torch.get_num_threads()

    def timer(dtype, shape, repeat, masks):
        threads_seen.setdefault(shape, set()).add(torch.get_num_threads())
        return 1.0

    torch.set_num_threads(2)
    try:
        precision.measure_speedup(torch.bfloat16, timer)
        assert threads_seen[precision.SCREEN_SHAPE] == {1}
        assert threads_seen[precision.PROBE_SHAPES[torch.bfloat16]] == {2}
        assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(before)


def test_time_matmul_takes_the_fastest_call(monkeypatch):
    """A call preempted by another process must not decide the dtype: the fastest call counts."""
    clock = iter([0.0, 5.0, 10.0, 11.0, 20.0, 23.0])  # three calls: 5 s, 1 s, 3 s
    monkeypatch.setattr(precision.time, "perf_counter", lambda: next(clock))
    assert precision.time_matmul(torch.float32, (4, 4, 4), 3) == 1.0


def test_the_int8_probe_times_firing_masks_and_the_dtypes_multiply_the_same_ones():
    m, k, n = 64, 128, 256
    seen = {}
    real_int_mm = torch._int_mm

    def spy_int_mm(a, b):
        seen["int8"] = (a, b)
        return real_int_mm(a, b)

    torch._int_mm, saved = spy_int_mm, torch._int_mm
    try:
        precision.time_matmul(torch.int8, (m, k, n), 1)
    finally:
        torch._int_mm = saved
    a, b = seen["int8"]
    assert set(a.unique().tolist()) <= {0, 1} and 0 < a.float().mean() < 0.1  # TopK-sparse masks, not dense signs
    assert a.shape == (m, k) and b.shape == (k, n)


@pytest.fixture
def speedup(monkeypatch):
    """Set the measured float32 / low-precision speedups: speedup(bf16=..., int8=...)."""

    def set_speedups(bf16: float, int8: float = 1.0):
        values = {torch.bfloat16: bf16, torch.int8: int8}
        monkeypatch.setattr(precision, "cpu_speedup", lambda dtype: values[dtype])

    return set_speedups


@pytest.mark.parametrize("bf16, expected", [(1 / 200, torch.float32), (1.05, torch.float32), (3.0, torch.bfloat16)])
def test_auto_takes_bfloat16_only_where_measured_faster(speedup, bf16, expected):
    speedup(bf16)
    cpu = torch.device("cpu")
    assert precision.choose("auto", cpu) == expected
    assert precision.choose("float32", cpu) == torch.float32 and precision.choose("bfloat16", cpu) == torch.bfloat16  # explicit wins
    assert precision.choose("auto", torch.device("cuda")) == torch.bfloat16  # CUDA: not measured


def test_int8_counts_follow_their_own_measurement(speedup):
    speedup(bf16=1 / 200, int8=1 / 100)
    assert not precision.int8_counts(torch.device("cpu"))
    speedup(bf16=1 / 200, int8=2.0)  # a CPU with VNNI but no native bfloat16
    assert precision.int8_counts(torch.device("cpu"))
    assert not precision.int8_counts(torch.device("cuda"))


def test_a_slow_explicit_choice_gets_one_line(speedup):
    speedup(1 / 200)
    cpu = torch.device("cpu")
    slow = precision.resolve("bfloat16", "auto", cpu, "gemma-3-270m")
    (line,) = slow.warnings()
    assert "--llm_dtype bfloat16" in line and "200x slower" in line
    assert precision.resolve("auto", "auto", cpu, "gemma-3-270m").warnings() == []
    speedup(3.0)  # float32 asked for where bfloat16 is 3x faster: not over the 10x line
    assert precision.resolve("float32", "float32", cpu, "gemma-3-270m").warnings() == []


def test_evals_run_in_float32_on_cpu_and_as_the_profile_says_on_cuda(speedup):
    speedup(3.0)
    assert precision.resolve("auto", "auto", torch.device("cpu"), "gemma-2-2b").evals == "float32"
    assert precision.eval_dtype("gemma-2-2b", torch.device("cuda")) == "bfloat16"
    assert precision.eval_dtype("gemma-3-270m", torch.device("cuda")) == "float32"


def test_the_activation_cache_is_keyed_by_the_forwards_precision(speedup):
    cfg = E.Config(out_dir="x", profile="gemma-3-270m", device="cpu", lm_name="m", layer=1, text_source="bbc", tokens=100)
    speedup(1 / 200)
    auto_slow = data.cache_path(E.Config(**{**cfg.__dict__, "llm_dtype": "auto"}))
    as_float32 = data.cache_path(E.Config(**{**cfg.__dict__, "llm_dtype": "float32"}))
    as_bfloat16 = data.cache_path(E.Config(**{**cfg.__dict__, "llm_dtype": "bfloat16"}))
    assert auto_slow == as_float32 != as_bfloat16
    speedup(3.0)
    assert data.cache_path(E.Config(**{**cfg.__dict__, "llm_dtype": "auto"})) == as_bfloat16


def test_the_encoder_runs_in_the_chosen_precision():
    sae = E.AutoEncoderTopK(64, 256, 8, "m", 1, device="cpu", seed=0)
    x = torch.randn(32, 64)
    full = sae.forward_train(x, torch.float32).pre_BF
    low = sae.forward_train(x, torch.bfloat16).pre_BF
    assert full.dtype == low.dtype == torch.float32
    assert not torch.equal(full, low)  # bfloat16 rounding, so the product did run in bfloat16 ...
    torch.testing.assert_close(low, full, rtol=0.05, atol=0.05)  # ... and it is the same product


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_each_precision_runs_end_to_end_and_is_recorded(tmp_path, tiny_lm, capsys, monkeypatch, dtype):
    """Extraction, training (encoder and orthogonality term) in one precision, asked for
    explicitly; the choice and the machine are printed once and recorded in final_info.json."""
    seen = []
    model, tokenizer = tiny_lm
    monkeypatch.setattr(
        data,
        "load_language_model",
        lambda cfg, device: (seen.append(precision.choose(cfg.llm_dtype, device)) or model.to(seen[-1]), tokenizer),
    )
    assert E.main(tiny_args(tmp_path, "run_1", "--llm_dtype", dtype, "--sae_dtype", dtype)) == 0
    assert seen == [getattr(torch, dtype)]
    out = capsys.readouterr().out
    assert out.count("precision: extraction") == 1
    info = json.loads((tmp_path / "run_1" / "final_info.json").read_text())
    record = info["training results for layer 1"]["final_info"]["precision"]
    assert (record["llm"], record["sae"], record["evals"]) == (dtype, dtype, "float32")
    assert record["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert record["cpu_model"] == precision.cpu_model() and record["cpu_model"] != "unknown"  # Linux: /proc/cpuinfo's model name
    assert record["bf16_speedup"] > 0 and record["int8_speedup"] > 0
    assert record["threads"] == torch.get_num_threads()
    assert record["requested"] == {"llm_dtype": dtype, "sae_dtype": dtype}
    cache = info["training results for layer 1"]["final_info"]["activation_cache"]
    assert json.loads((tmp_path / "cache" / cache.split("/")[-1] / "meta.json").read_text())["key"]["dtype"] == dtype


@pytest.mark.slow
def test_auto_runs_no_low_precision_matmul_where_it_is_slow(tmp_path, tiny_lm, speedup):
    """On a CPU where bfloat16 and int8 products are emulated (as on AVX2), auto keeps every
    product of a run (extraction, training, the term, the held-out separation eval) in float32."""
    from torch.utils._python_dispatch import TorchDispatchMode

    products = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default, torch.ops.aten._int_mm.default}
    products |= {torch.ops.aten.matmul.default, torch.ops.aten.linear.default, torch.ops.aten.baddbmm.default}
    seen = []

    class RecordProducts(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in products:
                seen.append((func, {a.dtype for a in args if isinstance(a, torch.Tensor)}))
            return func(*args, **(kwargs or {}))

    speedup(bf16=1 / 200, int8=1 / 100)
    with RecordProducts():
        assert E.main(tiny_args(tmp_path, "run_1", "--evals", "separation")) == 0
    assert len(seen) > 100  # the mode did see the run's products
    assert {dtype for _, dtypes in seen for dtype in dtypes} == {torch.float32}
