"""k-quants (Q2_K..Q6_K, Q8_K) of the native core against ggml itself, bit for bit.

Oracles: libggml-base.so shipped with llama-cpp-python (ggml_quantize_chunk with no imatrix, quantize_row_q8_K_ref,
dequantize_row_*), and gguf-py's numpy dequantizers. Tolerance is zero: quantized bytes must be identical and
dequantized float32 arrays equal element for element.

The native code is exercised through its Python API (native.quantize/dequantize), on whichever path the CPU selects;
tests/test_quants_simd.py checks the SIMD and scalar paths against each other.
"""
from __future__ import annotations

import ctypes
import os

import numpy as np
import pytest

import native

if os.environ.get("CI") == "true":
    import llama_cpp
else:
    llama_cpp = pytest.importorskip("llama_cpp")

from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize


Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K = 10, 11, 12, 13, 14, 15
NAMES = {Q2_K: "q2_K", Q3_K: "q3_K", Q4_K: "q4_K", Q5_K: "q5_K", Q6_K: "q6_K", Q8_K: "q8_K"}
BLOCK_BYTES = {Q2_K: 84, Q3_K: 110, Q4_K: 144, Q5_K: 176, Q6_K: 210, Q8_K: 292}
# byte offsets of the fp16 super-block scales (fp32 for Q8_K), used to keep random blocks finite
HALF_FIELDS = {Q2_K: (80, 82), Q3_K: (108,), Q4_K: (0, 2), Q5_K: (0, 2), Q6_K: (208,), Q8_K: ()}
WEIGHT_TYPES = [Q2_K, Q3_K, Q4_K, Q5_K, Q6_K]
ALL_TYPES = WEIGHT_TYPES + [Q8_K]
QK_K = 256

_f = ctypes.c_void_p
_i64 = ctypes.c_int64


# ------------------------------------------------------------------------------------------------ oracles


class Ggml:
    """ctypes view of libggml-base.so from llama-cpp-python."""

    def __init__(self):
        lib = ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so"))
        lib.ggml_quantize_chunk.restype = ctypes.c_size_t
        lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, _f, _f, _i64, _i64, _i64, _f]
        for t in ALL_TYPES:
            for name in (f"quantize_row_{NAMES[t]}_ref", f"dequantize_row_{NAMES[t]}"):
                fn = getattr(lib, name)
                fn.restype = None
                fn.argtypes = [_f, _f, _i64]
        self.lib = lib

    def quantize(self, t: int, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        nrows, n = x.shape
        out = np.zeros((nrows, n // QK_K * BLOCK_BYTES[t]), np.uint8)
        if t == Q8_K:  # not a storage type: ggml_quantize_chunk does not handle it
            getattr(self.lib, "quantize_row_q8_K_ref")(x.ctypes.data, out.ctypes.data, x.size)
        else:
            size = self.lib.ggml_quantize_chunk(t, x.ctypes.data, out.ctypes.data, 0, nrows, n, None)
            assert size == out.size
        return out

    def dequantize(self, t: int, q: np.ndarray, n_per_row: int) -> np.ndarray:
        q = np.ascontiguousarray(q, dtype=np.uint8)
        out = np.empty((q.size // BLOCK_BYTES[t] * QK_K // n_per_row, n_per_row), np.float32)
        getattr(self.lib, f"dequantize_row_{NAMES[t]}")(q.ctypes.data, out.ctypes.data, out.size)
        return out


# ------------------------------------------------------------------------------------------------ ours


class Binding:
    """Our native core through its Python API (rows split over threads)."""

    nthreads = 3

    def quantize(self, t: int, x: np.ndarray) -> np.ndarray:
        return native.quantize(t, np.ascontiguousarray(x, dtype=np.float32), self.nthreads)

    def dequantize(self, t: int, q: np.ndarray, n_per_row: int) -> np.ndarray:
        return native.dequantize(t, q, n_per_row, self.nthreads)


@pytest.fixture(scope="session")
def ours():
    return Binding()


# ------------------------------------------------------------------------------------------------ data

N_PER_ROW = 2048  # 8 super-blocks per row


def random_matrix(seed: int = 0) -> np.ndarray:
    """512 x 2048 standard normal: 1M elements."""
    return np.random.default_rng(seed).standard_normal((512, N_PER_ROW), dtype=np.float32)


def adversarial_matrix(seed: int = 1) -> tuple[np.ndarray, list[str]]:
    """One case per row of 2048 elements (8 super-blocks); returns the matrix and the case name of each row."""
    rng = np.random.default_rng(seed)
    n = N_PER_ROW
    rows: list[tuple[str, np.ndarray]] = []

    def add(name, v):
        rows.append((name, np.asarray(v, dtype=np.float32).reshape(n)))

    def randn(scale=1.0):
        return rng.standard_normal(n).astype(np.float32) * np.float32(scale)

    add("zeros", np.zeros(n))
    for c in (1.5, -2.25, 1e-3, -7.0, 0.1, 65504.0, 1e-8):
        add(f"const {c}", np.full(n, c))
    for pos in (0, 5, 255, 1000, 2047):
        v = randn()
        v[pos] = 1000.0
        add(f"outlier +1000 at {pos}", v)
        v = randn()
        v[pos] = -1e6
        add(f"outlier -1e6 at {pos}", v)
    # ties for the largest magnitude, each sign first, in every sub-block
    for first in (1.0, -1.0):
        v = randn(0.3)
        for b in range(0, n, 16):
            v[b + 3], v[b + 11] = first * 2.0, -first * 2.0
        add(f"ties {first:+.0f} first (16)", v)
        v = randn(0.3)
        for b in range(0, n, 32):
            v[b + 7], v[b + 30] = first * 3.0, -first * 3.0
        add(f"ties {first:+.0f} first (32)", v)
        v = np.tile(np.array([first, -first], np.float32), n // 2)
        add(f"alternating +-1, {first:+.0f} first", v)
    # values on rounding boundaries
    add("eighths", rng.integers(-16, 17, n) / 8.0)
    add("eighths small range", rng.integers(-3, 4, n) / 8.0)
    add("half-integers", rng.integers(-8, 8, n) + 0.5)
    add("integers -4..3", rng.integers(-4, 4, n))
    add("integers 0..3", rng.integers(0, 4, n))
    add("integers 0..15", rng.integers(0, 16, n))
    add("integers -32..31", rng.integers(-32, 32, n))
    add("integers -128..127", rng.integers(-128, 128, n))
    add("ramp", np.arange(n) % 256 - 127.5)
    add("tenths", rng.integers(-10, 11, n) / 10.0)
    add("two values", np.where(rng.random(n) < 0.5, 0.25, 0.75))
    # tiny and huge scales
    for s in (1e-30, 1e-16, 1e-15, 2e-15, 1e-10, 1e-5, 1e5, 1e10, 1e18, 1e30):
        add(f"randn*{s:g}", randn(s))
    add("denormals", randn(1e-40))
    add("smallest denormals", rng.integers(-3, 4, n).astype(np.float32) * np.float32(1.4e-45))
    add("denormals + normal", np.where(rng.random(n) < 0.9, randn(1e-42), randn()))
    v = randn()
    v[rng.random(n) < 0.5] = 1e-16
    add("half below GROUP_MAX_EPS", v)
    # sub-blocks of very different magnitudes: small ones get 0 scales after quantization (skip path)
    for sub in (16, 32):
        v = randn()
        scales = np.float32(10.0) ** rng.integers(-20, 6, n // sub).astype(np.float32)
        add(f"mixed magnitudes per {sub}", v * np.repeat(scales, sub))
        v = randn(1e-3)
        v[::QK_K] = 1e4
        add(f"one big per block, small rest ({sub})", v)
        sign = np.repeat(rng.choice(np.array([-1, 1, 0], np.float32), n // sub), sub)
        add(f"signed sub-blocks {sub}", np.where(sign == 0, randn(), np.abs(randn()) * sign))
        add(f"positive sub-blocks {sub} + offset", np.abs(randn()) + np.repeat(rng.random(n // sub) * 5, sub))
        add(f"negative sub-blocks {sub} - offset", -np.abs(randn()) - np.repeat(rng.random(n // sub) * 5, sub))
        zeros = np.repeat(rng.random(n // sub) < 0.4, sub)
        add(f"zero sub-blocks {sub}", np.where(zeros, 0.0, randn()))
    add("all positive", np.abs(randn()))
    add("all negative", -np.abs(randn()))
    add("positive offset", randn() + 10)
    add("negative offset", randn() - 10)
    add("uniform 0..1", rng.random(n))
    add("exponential", rng.exponential(size=n))
    add("laplace heavy tail", rng.laplace(size=n) ** 3)
    for pos in (0, 17, 300, 2047):
        for val in (1.0, -3.5, 1e-20, 1e20):
            v = np.zeros(n)
            v[pos] = val
            add(f"single {val:g} at {pos}", v)
    add("sparse", np.where(rng.random(n) < 0.05, randn(), 0.0))
    add("fp16 max region", randn(3e4))
    # fuzz: per sub-block log-uniform scale and random offset
    for i in range(40):
        sub = 16 if i % 2 else 32
        scales = np.float32(10.0) ** rng.uniform(-8, 8, n // sub).astype(np.float32)
        offs = np.repeat(rng.standard_normal(n // sub) * rng.choice([0, 0, 1, 3]), sub)
        add(f"fuzz {i}", (randn() + offs) * np.repeat(scales, sub))
    names = [r[0] for r in rows]
    m = np.stack([r[1] for r in rows]).astype(np.float32)
    assert np.isfinite(m).all()
    return m, names


def grid_midpoints(ggml: Ggml, t: int, x: np.ndarray, seed: int = 2) -> np.ndarray:
    """x quantized and dequantized by ggml, then about two thirds of the elements moved half a grid step up or down:
    re-quantizing such data lands many values exactly on rounding ties, where x/d and x·(1/d) (or a different
    grouping of a product) round differently."""
    rng = np.random.default_rng(seed)
    y = ggml.dequantize(t, ggml.quantize(t, x), x.shape[1])
    sub = {Q4_K: 32, Q5_K: 32, Q8_K: QK_K}.get(t, 16)
    levels = np.sort(y.reshape(-1, sub), axis=1)
    gaps = np.diff(levels, axis=1)
    gaps[gaps <= 0] = np.inf
    step = gaps.min(axis=1)
    step[~np.isfinite(step)] = 0
    sign = rng.choice(np.array([-1, 0, 1], np.float32), y.shape)
    return (y + sign * np.repeat(step / 2, sub).reshape(y.shape)).astype(np.float32)


# ------------------------------------------------------------------------------------------------ helpers


def assert_same_blocks(t: int, got: np.ndarray, want: np.ndarray, names: list[str] | None = None):
    g = got.reshape(-1, BLOCK_BYTES[t])
    w = want.reshape(-1, BLOCK_BYTES[t])
    bad = np.flatnonzero((g != w).any(axis=1))
    if bad.size:
        blocks_per_row = got.shape[-1] // BLOCK_BYTES[t]
        where = [f"block {b} (row {b // blocks_per_row}"
                 + (f" '{names[b // blocks_per_row]}'" if names else "") + ")" for b in bad[:8]]
        first = bad[0]
        diff = np.flatnonzero(g[first] != w[first])
        pytest.fail(f"{NAMES[t]}: {bad.size} of {g.shape[0]} blocks differ, e.g. {', '.join(where)}; "
                    f"first bad block differs at byte offsets {diff[:16].tolist()}")


def assert_same_floats(what: str, got: np.ndarray, want: np.ndarray, n_block: int = QK_K):
    g = got.reshape(-1, n_block)
    w = want.reshape(-1, n_block)
    same = (g == w) | (np.isnan(g) & np.isnan(w))
    bad = np.flatnonzero(~same.all(axis=1))
    if bad.size:
        i = bad[0]
        j = np.flatnonzero(~same[i])[0]
        pytest.fail(f"{what}: {bad.size} of {g.shape[0]} blocks differ; block {i} element {j}: {g[i, j]!r} vs {w[i, j]!r}")
    np.testing.assert_array_equal(got, want)


def gguf_deq(t: int, q: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        return gguf_dequantize(q, GGMLQuantizationType(t)).astype(np.float32, copy=False)


# ------------------------------------------------------------------------------------------------ tests


@pytest.fixture(scope="module")
def random_data():
    return random_matrix()


@pytest.fixture(scope="module")
def adversarial_data():
    return adversarial_matrix()


@pytest.mark.parametrize("t", ALL_TYPES, ids=lambda t: NAMES[t])
def test_quantize_random_matches_ggml(ours, ggml, random_data, t):
    assert_same_blocks(t, ours.quantize(t, random_data), ggml.quantize(t, random_data))


@pytest.mark.parametrize("t", ALL_TYPES, ids=lambda t: NAMES[t])
def test_quantize_adversarial_matches_ggml(ours, ggml, adversarial_data, t):
    x, names = adversarial_data
    with np.errstate(all="ignore"):
        want = ggml.quantize(t, x)
    assert_same_blocks(t, ours.quantize(t, x), want, names)


@pytest.mark.parametrize("t", ALL_TYPES, ids=lambda t: NAMES[t])
def test_quantize_grid_midpoints_matches_ggml(ours, ggml, t):
    x = grid_midpoints(ggml, t, random_matrix(3)[:256])
    assert_same_blocks(t, ours.quantize(t, x), ggml.quantize(t, x))


@pytest.mark.parametrize("t", ALL_TYPES, ids=lambda t: NAMES[t])
@pytest.mark.parametrize("data", ["random", "adversarial"])
def test_dequantize_matches_ggml_and_gguf_py(ours, ggml, random_data, adversarial_data, t, data):
    x = random_data if data == "random" else adversarial_data[0]
    q = ggml.quantize(t, x)
    got = ours.dequantize(t, q, x.shape[1])
    assert_same_floats(f"{NAMES[t]} vs ggml", got, ggml.dequantize(t, q, x.shape[1]))
    if t != Q8_K:  # gguf-py has no Q8_K
        assert_same_floats(f"{NAMES[t]} vs gguf-py", got, gguf_deq(t, q))


@pytest.mark.parametrize("t", ALL_TYPES, ids=lambda t: NAMES[t])
def test_dequantize_arbitrary_blocks(ours, ggml, t):
    """Random block bytes (with finite scales): every bit pattern of quants and sub-block scales decodes as ggml's."""
    rng = np.random.default_rng(100 + t)
    nb = 4096
    q = rng.integers(0, 256, (nb, BLOCK_BYTES[t]), dtype=np.uint8)
    for off in HALF_FIELDS[t]:
        h = (rng.standard_normal(nb) * np.float32(10.0) ** rng.integers(-6, 4, nb)).astype(np.float16)
        q[:, off:off + 2] = h.view(np.uint8).reshape(nb, 2)
    if t == Q8_K:
        q[:, 0:4] = rng.standard_normal(nb).astype(np.float32).view(np.uint8).reshape(nb, 4)
    q = q.reshape(16, -1)
    got = ours.dequantize(t, q, q.shape[1] // BLOCK_BYTES[t] * QK_K)
    assert_same_floats(f"{NAMES[t]} vs ggml", got, ggml.dequantize(t, q, got.shape[1]))
    if t != Q8_K:
        assert_same_floats(f"{NAMES[t]} vs gguf-py", got, gguf_deq(t, q))


def test_q8_K_fields_match(ours, ggml, random_data, adversarial_data):
    """Q8_K's fp32 d and its int16 bsums (sums of 16-quant groups), field by field."""
    dt = np.dtype([("d", "<f4"), ("qs", "i1", QK_K), ("bsums", "<i2", QK_K // 16)])
    assert dt.itemsize == BLOCK_BYTES[Q8_K]
    for x in (random_data, adversarial_data[0]):
        got = ours.quantize(Q8_K, x).reshape(-1).view(dt)
        want = ggml.quantize(Q8_K, x).reshape(-1).view(dt)
        np.testing.assert_array_equal(got["d"].view(np.uint32), want["d"].view(np.uint32))
        np.testing.assert_array_equal(got["bsums"], want["bsums"])
        np.testing.assert_array_equal(got["qs"], want["qs"])
        # bsums really are the group sums
        np.testing.assert_array_equal(got["bsums"], got["qs"].astype(np.int32).reshape(-1, 16, 16).sum(-1))


@pytest.mark.parametrize("t", ALL_TYPES, ids=lambda t: NAMES[t])
def test_single_block_rows(ours, ggml, t):
    """Rows of exactly one super-block (no state may leak between blocks or rows)."""
    x = np.random.default_rng(7).standard_normal((64, QK_K)).astype(np.float32)
    x[::3] *= np.float32(1e-3)
    x[1::5] += np.float32(4)
    assert_same_blocks(t, ours.quantize(t, x), ggml.quantize(t, x))
