"""Matrix products of the native core (native.matmul / tk_matmul): y[n][rows] = x[n][cols] · W[rows][cols]ᵀ.

The kernels convert the activations to the weight type's vec_dot_type (Q8_0, Q8_1, Q8_K, F16, BF16 or F32) as ggml
does, then take integer dot products within blocks. Two references, both in float64 with the weights dequantized by
native.dequantize:

* exact: the activations as the kernel sees them (converted, then dequantized), so only float rounding of the kernel
  separates the two. Tolerance FLOAT_RTOL · ‖x_j‖ · ‖w_r‖. For Q4_1/Q5_1 the Q8_1 block sum s is stored as fp16;
  the reference uses that stored s, as the kernel (and ggml) do.
* true: the float32 activations themselves. The activation conversion adds an error e with |Σ w_i e_i| ≤ ‖w‖·‖e‖
  (Cauchy-Schwarz); ACT_BOUND bounds ‖e‖/‖x‖ for each vec_dot_type:
    F32  0
    F16  2^-11 (relative rounding of every element)
    BF16 2^-8
    Q8_0/Q8_1  |e_i| ≤ d/2 + |q_i|·|d - fp16(d)| ≤ (0.5 + 127·2^-11)·amax/127 per block of 32, so
               ‖e_b‖ ≤ √32 · 0.00443 · amax ≤ 0.025 ‖x_b‖
    Q8_K  |e_i| ≤ amax/254 per block of 256 (d kept in f32): ‖e_b‖ ≤ 16/254 · amax ≤ 0.063 ‖x_b‖
  so |y - W·x| ≤ (ACT_BOUND + FLOAT_RTOL) · ‖x_j‖ · ‖w_r‖. (Observed on random data: 2e-4..1e-3 for the 8-bit
  activations, far below the worst case; 1e-8..4e-8 against the exact reference.)

SIMD (AVX2) and scalar kernels agree within SIMD_RTOL · ‖x_j‖ · ‖w_r‖ (their float sums run in a different order);
any thread count gives bit-identical results. Where llama-cpp-python is installed, every row is also compared with
ggml's own vec_dot functions (libggml-cpu) on the same quantized activations (tolerance 1e-6; with the AVX2 build of
llama-cpp-python 0.3.36 the SIMD results are bit-identical, the scalar ones differ from ggml's *_generic only where
that build contracts to FMA; Q4_0 aside, whose every kernel gives the bits of ggml's repacked Q4_0 gemv instead).
Both sides get bytes made here (native.quantize, native.activations), never by the oracle build. That build must be
the AVX2 one `make install` makes (checked at session start, tests/oracle.py): in a build with AVX512-VNNI, GCC 12
miscompiles ggml_vec_dot_q5_0_q8_0_generic (0.985 relative error here).
"""
from __future__ import annotations


import numpy as np
import pytest

import native
from tests import helpers
from tests.helpers import ISA_NAMES, isa_level, isa_levels

F32, F16, BF16 = 0, 1, 30
Q8_0, Q8_1, Q8_K = 8, 9, 15
NAMES = {F32: "F32", F16: "F16", BF16: "BF16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", Q8_0: "Q8_0",
         10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 20: "IQ4_NL", 23: "IQ4_XS",
         34: "TQ1_0", 35: "TQ2_0", 18: "IQ3_XXS", 21: "IQ3_S", 19: "IQ1_S", 29: "IQ1_M",
         16: "IQ2_XXS", 17: "IQ2_XS", 22: "IQ2_S"}
TYPES = list(NAMES)
VEC_DOT_TYPE = {F32: F32, F16: F16, BF16: BF16, 2: Q8_0, 3: Q8_1, 6: Q8_0, 7: Q8_1, 8: Q8_0,
                10: Q8_K, 11: Q8_K, 12: Q8_K, 13: Q8_K, 14: Q8_K, 20: Q8_0, 23: Q8_K, 34: Q8_K, 35: Q8_K, 18: Q8_K, 21: Q8_K,
                19: Q8_K, 29: Q8_K, 16: Q8_K, 17: Q8_K, 22: Q8_K}
BLOCK = {t: native.TRAITS[t][1] for t in TYPES}
# types whose quantizers are slow (a grid search per group) and tested bit for bit elsewhere: random blocks here
RANDOM_BLOCKS = {18, 21, 19, 29, 16, 17, 22}

FLOAT_RTOL = 1e-5
SIMD_RTOL = 1e-5
ACT_BOUND = {F32: 0.0, F16: 2.0 ** -11, BF16: 2.0 ** -8, Q8_0: 0.025, Q8_1: 0.025, Q8_K: 0.063}

HAS_SIMD = bool(native.cpu_features().get("f16c_avx2"))


def matmul(t, w, rows, cols, x, nthreads=2, simd=None):
    if simd is None:
        return native.matmul(t, w, rows, cols, x, nthreads)
    with helpers.kernels(scalar=not simd):
        return native.matmul(t, w, rows, cols, x, nthreads)


def min_cols(t: int) -> int:
    """Smallest row length the type takes (the vec_dot_type's block too)."""
    return max(BLOCK[t], native.TRAITS[VEC_DOT_TYPE[t]][1])


def weights(t: int, rows: int, cols: int, seed: int):
    """(buffer holding W as type t, W dequantized in float64). Rows get different scales and offsets."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    w *= rng.uniform(0.05, 3.0, (rows, 1)).astype(np.float32)
    w += rng.uniform(-0.5, 0.5, (rows, 1)).astype(np.float32)
    if t == F32:
        return w, w.astype(np.float64)
    if t == F16:
        h = w.astype(np.float16)
        return h, h.astype(np.float64)
    if t in RANDOM_BLOCKS:
        # random bytes are valid blocks of these types (every grid index, sign and scale), given a finite fp16 d
        size = native.TRAITS[t][2]
        q = rng.integers(0, 256, (rows, cols // 256, size), dtype=np.uint8)
        q[:, :, :2] = rng.uniform(0.001, 0.05, (rows, cols // 256, 1)).astype(np.float16).view(np.uint8)
        if t == 29:  # IQ1_M: its fp16 scale is the top nibbles of the four 16-bit scale words (bytes 48..55)
            sc = q[:, :, 48:56].copy().view(np.uint16)
            d = rng.uniform(0.001, 0.05, (rows, cols // 256, 1)).astype(np.float16).view(np.uint16)
            nibbles = (d >> (4 * np.arange(4, dtype=np.uint16))) & 0xF
            q[:, :, 48:56] = ((sc & 0x0FFF) | (nibbles << 12)).astype(np.uint16).view(np.uint8)
        q = q.reshape(rows, -1)
    else:
        q = native.quantize(t, w, 2)
    return q, native.dequantize(t, q, cols).astype(np.float64)


def activations(n: int, cols: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1000)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    x[:, : cols // 3] *= 4.0  # uneven magnitudes across blocks
    return x


def seen_activations(t: int, x: np.ndarray):
    """The activations as the kernel sees them (float64), and their raw vec_dot_type bytes (None for F32/F16)."""
    at = VEC_DOT_TYPE[t]
    cols = x.shape[1]
    if at == F32:
        return x.astype(np.float64), None
    if at == F16:
        return x.astype(np.float16).astype(np.float64), None
    at_, q = native.activations(t, x)  # the bytes the kernel multiplies with (llama.cpp's CPU rounding)
    assert at_ == at
    return native.dequantize(at, q, cols).astype(np.float64), q


def exact_reference(t: int, wq, wd: np.ndarray, x: np.ndarray) -> np.ndarray:
    xs, aq = seen_activations(t, x)
    y = xs @ wd.T
    if t in (3, 7):  # Q4_1/Q5_1 · Q8_1: the kernel takes m·s with s = fp16(d·Σq) as stored
        rows, n, cols = wd.shape[0], x.shape[0], x.shape[1]
        nb = cols // 32
        bsz = native.TRAITS[t][2]
        m = np.ascontiguousarray(wq.reshape(rows, nb, bsz)[:, :, 2:4]).view(np.float16)[..., 0].astype(np.float64)
        a = aq.reshape(n, nb, 36)
        dy = np.ascontiguousarray(a[:, :, 0:2]).view(np.float16)[..., 0].astype(np.float64)
        s = np.ascontiguousarray(a[:, :, 2:4]).view(np.float16)[..., 0].astype(np.float64)
        sq = np.ascontiguousarray(a[:, :, 4:]).view(np.int8).sum(-1).astype(np.float64)
        y += (s - dy * sq) @ m.T
    return y


def scale(wd: np.ndarray, x: np.ndarray) -> np.ndarray:
    """‖x_j‖·‖w_r‖ for every output."""
    return np.linalg.norm(x.astype(np.float64), axis=1)[:, None] * np.linalg.norm(wd, axis=1)[None, :] + 1e-30


def shapes(t: int):
    """(rows, cols, n): smallest row length, odd row counts, n = 1, 7, 64, long rows."""
    c = min_cols(t)
    out = [(37, c, 7), (5, c, 1), (333, 2048, 1), (61, 4096, 64), (130, 2 * c if c > 1 else 96, 7)]
    if c == 1:
        out += [(19, 33, 3), (11, 4099, 2)]  # float types: row lengths off the vector width (tails)
    return out


CASES = [pytest.param(t, r, c, n, id=f"{NAMES[t]}-{r}x{c}-n{n}") for t in TYPES for (r, c, n) in shapes(t)]


@pytest.mark.parametrize("t,rows,cols,n", CASES)
@pytest.mark.parametrize("simd", [False, True], ids=["scalar", "simd"])
def test_matches_reference(t, rows, cols, n, simd):
    if simd and not HAS_SIMD:
        pytest.skip("CPU without AVX2/F16C")
    seed = t * 1000 + rows + cols + n
    wq, wd = weights(t, rows, cols, seed)
    x = activations(n, cols, seed)
    y = matmul(t, wq, rows, cols, x, simd=simd)
    assert y.shape == (n, rows) and y.dtype == np.float32
    sc = scale(wd, x)
    # exact activations: float rounding only
    err = np.abs(y - exact_reference(t, wq, wd, x)) / sc
    assert err.max() <= FLOAT_RTOL, f"{NAMES[t]}: max relative error {err.max():.3g} vs exact activations"
    # true activations: within the activation conversion's bound
    err = np.abs(y - x.astype(np.float64) @ wd.T) / sc
    bound = ACT_BOUND[VEC_DOT_TYPE[t]] + FLOAT_RTOL
    assert err.max() <= bound, f"{NAMES[t]}: max relative error {err.max():.3g} > {bound:.3g}"


@pytest.mark.skipif(not HAS_SIMD, reason="CPU without AVX2/F16C")
@pytest.mark.parametrize("t", TYPES, ids=[NAMES[t] for t in TYPES])
def test_simd_matches_scalar(t):
    for rows, cols, n in [(333, 4096, 3), (37, min_cols(t), 64)]:
        wq, wd = weights(t, rows, cols, 7 + t)
        x = activations(n, cols, 7 + t)
        a = matmul(t, wq, rows, cols, x, simd=True)
        b = matmul(t, wq, rows, cols, x, simd=False)
        err = np.abs(a.astype(np.float64) - b) / scale(wd, x)
        assert err.max() <= SIMD_RTOL, f"{NAMES[t]}: SIMD vs scalar {err.max():.3g}"


@pytest.mark.parametrize("t", TYPES, ids=[NAMES[t] for t in TYPES])
def test_threads_give_identical_results(t):
    rows, cols, n = 333, 2048, 7  # 333 rows: not a multiple of any thread count below
    wq, _ = weights(t, rows, cols, 11 + t)
    x = activations(n, cols, 11 + t)
    one = matmul(t, wq, rows, cols, x, nthreads=1)
    for nt in (2, 3, 8, 64):
        assert np.array_equal(matmul(t, wq, rows, cols, x, nthreads=nt), one), f"{NAMES[t]} with {nt} threads"
    rows, cols = 1001, 4096  # generation (n = 1): enough work for several threads
    wq, _ = weights(t, rows, cols, 12 + t)
    x1 = activations(1, cols, 12 + t)
    one = matmul(t, wq, rows, cols, x1, nthreads=1)
    for nt in (2, 5):
        assert np.array_equal(matmul(t, wq, rows, cols, x1, nthreads=nt), one), f"{NAMES[t]} n=1, {nt} threads"


def test_rows_are_independent_of_batch():
    """An activation row gives the same outputs alone or among others (generation vs prompt processing)."""
    for t in (2, 12, 14, F16):
        wq, _ = weights(t, 45, 512, 3)
        x = activations(9, 512, 3)
        full = matmul(t, wq, 45, 512, x)
        for j in (0, 4, 8):
            assert np.array_equal(matmul(t, wq, 45, 512, x[j:j + 1])[0], full[j])


@pytest.mark.skipif(not HAS_SIMD, reason="CPU without AVX2/F16C")
@pytest.mark.parametrize("level", isa_levels(), ids=ISA_NAMES.get)
@pytest.mark.parametrize("t", TYPES, ids=[NAMES[t] for t in TYPES])
def test_tiles_match_one_token_kernels(t, level):
    """Prompt processing runs tiles (several weight rows × several tokens at once) where the type has them; every
    output must still be bit for bit the one-token kernel's, on each instruction-set level the CPU offers. Shapes
    leave partial tiles on both sides, and an odd number of blocks above one (IQ4_NL's kernels end on one block of
    their own)."""
    # float types: rows of whole 32s (AVX512 F16's four-chain kernels) and of other lengths (its 16-lane ones: chunks
    # of 4 past the last 32 and elements past the last chunk of 4), for the packed tile, the few-token tiles and one
    floats = [(19, 96, 13), (17, 160, 6), (19, 183, 13), (17, 61, 6), (23, 46, 3)] if min_cols(t) == 1 else []
    with isa_level(level):
        for rows, cols, n in [(37, min_cols(t) * 2, 11), (8, min_cols(t), 4), (130, 2048, 9), (13, min_cols(t), 2),
                              (9, min_cols(t) * 2, 3), (21, min_cols(t), 7), (6, min_cols(t), 8),
                              (10, min_cols(t), 6), (11, min_cols(t) * 3, 5)] + floats:
            wq, _ = weights(t, rows, cols, 5 + t)
            x = activations(n, cols, 5 + t)
            full = matmul(t, wq, rows, cols, x, simd=True)
            for j in range(n):
                one = matmul(t, wq, rows, cols, x[j:j + 1], nthreads=1, simd=True)[0]
                assert np.array_equal(one, full[j]), f"{NAMES[t]} {rows}x{cols}, token {j} of {n}"


@pytest.mark.parametrize("t", TYPES, ids=[NAMES[t] for t in TYPES])
def test_token_passes_match_one_pass(t):
    """Many tokens go over the rows in passes that stay in L2 (each pass repacks the row tiles): a matrix taken in
    several passes (an L2 of one byte: passes of 4 token tiles) gives every output of one pass, bit for bit, and the
    one-token kernel's, with partial tiles on both sides."""
    rows, cols, n = 37, min_cols(t) * 2, 61
    wq, _ = weights(t, rows, cols, 7 + t)
    x = activations(n, cols, 7 + t)
    one_pass = matmul(t, wq, rows, cols, x)
    native.set_l2_bytes(1)
    try:
        passes = matmul(t, wq, rows, cols, x)
        threads = matmul(t, wq, rows, cols, x, nthreads=3)
    finally:
        native.set_l2_bytes(0)
    assert np.array_equal(passes, one_pass), NAMES[t]
    assert np.array_equal(threads, one_pass), NAMES[t]
    for j in (0, n // 2, n - 1):
        assert np.array_equal(matmul(t, wq, rows, cols, x[j:j + 1], nthreads=1)[0], one_pass[j]), f"{NAMES[t]} {j}"


def test_weight_buffers():
    """Weights may come as any buffer: uint8 rows, a flat slice of a bigger buffer (as an mmap'd GGUF tensor),
    bytes, float16 / float32 arrays, BF16 as uint16."""
    rows, cols = 20, 256
    x = activations(2, cols, 5)
    wq, wd = weights(12, rows, cols, 5)
    want = matmul(12, wq, rows, cols, x)
    blob = np.zeros(wq.nbytes + 100, dtype=np.uint8)
    blob[37:37 + wq.nbytes] = wq.reshape(-1)
    assert np.array_equal(native.matmul(12, blob[37:37 + wq.nbytes], rows, cols, x), want)
    assert np.array_equal(native.matmul(12, wq.tobytes(), rows, cols, x), want)
    assert np.array_equal(native.matmul(12, memoryview(wq.tobytes()), rows, cols, x), want)
    # 1-D activations give a 1-D result
    assert np.array_equal(native.matmul(12, wq, rows, cols, x[0]), want[0])
    # BF16: raw uint16 or the quantizer's bytes
    w = np.random.default_rng(1).standard_normal((rows, cols)).astype(np.float32)
    b = native.quantize(BF16, w)
    assert np.array_equal(native.matmul(BF16, b.view(np.uint16), rows, cols, x), native.matmul(BF16, b, rows, cols, x))
    # F16 as float16 or its bytes; F32 as float32 or bytes
    h = w.astype(np.float16)
    assert np.array_equal(native.matmul(F16, h, rows, cols, x), native.matmul(F16, h.view(np.uint8), rows, cols, x))
    assert np.array_equal(native.matmul(F32, w, rows, cols, x), native.matmul(F32, w.view(np.uint8), rows, cols, x))
    # float64 / non-contiguous activations are converted
    assert np.array_equal(native.matmul(12, wq, rows, cols, x.astype(np.float64)), want)
    xt = np.asfortranarray(x)
    assert np.array_equal(native.matmul(12, wq, rows, cols, xt), want)


def test_empty_shapes():
    wq, _ = weights(2, 4, 64, 1)
    assert native.matmul(2, wq, 4, 64, np.zeros((0, 64), np.float32)).shape == (0, 4)
    assert native.matmul(2, b"", 0, 64, np.ones((3, 64), np.float32)).shape == (3, 0)


def test_bad_arguments():
    wq, _ = weights(2, 4, 64, 1)
    x = activations(1, 64, 1)
    with pytest.raises(ValueError):
        native.matmul(99, wq, 4, 64, x)  # unknown type
    with pytest.raises(ValueError):
        native.matmul(Q8_1, np.zeros(4 * 72, np.uint8), 4, 64, x)  # activation-only types have no product
    with pytest.raises(ValueError):
        native.matmul(2, wq, 5, 64, x)  # weight buffer too small for 5 rows
    with pytest.raises(ValueError):
        native.matmul(2, wq, 4, 64, activations(1, 48, 1))  # x columns differ
    with pytest.raises(ValueError):
        native._core.matmul(2, wq, 4, 64, x, 1, np.empty((1, 3), np.float32), 1)  # output too small
    with pytest.raises(ValueError):
        native._core.matmul(12, np.zeros(4 * 144 // 2, np.uint8), 4, 128, activations(1, 128, 1),
                            1, np.empty((1, 4), np.float32), 1)  # 128 is not a multiple of 256
    with pytest.raises((TypeError, ValueError)):
        native._core.matmul(2, wq, 4, 64, x, 1, np.empty((1, 8), np.float32)[:, ::2], 1)  # not contiguous


# ------------------------------------------------------------------------------------------------ ggml's vec_dots
# Same weight bytes, same activation bytes: ggml's optimized (AVX2 in this build) and generic (scalar reference)
# vec_dot functions against ours, row by row.

@pytest.fixture(scope="module")
def ggml_cpu():
    return helpers.ggml_cpu()


_GGML_NAMES = {2: "q4_0_q8_0", 3: "q4_1_q8_1", 6: "q5_0_q8_0", 7: "q5_1_q8_1", 8: "q8_0_q8_0",
               10: "q2_K_q8_K", 11: "q3_K_q8_K", 12: "q4_K_q8_K", 13: "q5_K_q8_K", 14: "q6_K_q8_K",
               20: "iq4_nl_q8_0", 23: "iq4_xs_q8_K", 34: "tq1_0_q8_K", 35: "tq2_0_q8_K", 18: "iq3_xxs_q8_K",
               21: "iq3_s_q8_K", 19: "iq1_s_q8_K", 29: "iq1_m_q8_K"}


def test_q4_0_is_ggml_repacked_gemv(ggml_cpu):
    """Q4_0 follows llama.cpp's own Q4_0 path on x86 CPUs, its repacked gemv/gemm (per block the integer sum, then one
    fused multiply-add by d_x·d_y, blocks in order), not ggml's vec_dot: the scalar kernel, the SIMD one-token kernels
    (one and two rows) and every level's tiles give ggml_gemv_q4_0_8x8_q8_0's bits, the few-token tiles (2 and 4 tokens,
    read from the rows as they are) too. Odd block counts leave tails."""
    for rows, cols, n in [(16, 4096, 1), (24, 96, 9), (40, 2080, 17), (40, 2080, 4), (40, 96, 3), (24, 64, 2)]:
        wq, _ = weights(2, rows, cols, 31 + cols)
        x = activations(n, cols, 31 + cols)
        want = helpers.ggml_q4_0_gemv(ggml_cpu, wq, seen_activations(2, x)[1], cols)
        assert np.array_equal(matmul(2, wq, rows, cols, x, simd=False), want), f"scalar {rows}x{cols}"
        if not HAS_SIMD:
            continue
        for level in isa_levels():
            with isa_level(level):
                got = matmul(2, wq, rows, cols, x, simd=True)
                alone = np.stack([matmul(2, wq, rows, cols, x[j:j + 1], simd=True)[0] for j in range(n)])
            assert np.array_equal(got, want), f"level {level} {rows}x{cols}, {n} tokens"
            assert np.array_equal(alone, want), f"level {level} {rows}x{cols}, tokens one by one"


@pytest.mark.parametrize("t", list(_GGML_NAMES), ids=[NAMES[t] for t in _GGML_NAMES])
def test_against_ggml_vec_dot(ggml_cpu, t):
    rows, cols, n = 24, 4096, 3
    wq, wd = weights(t, rows, cols, 21 + t)
    x = activations(n, cols, 21 + t)
    _, aq = seen_activations(t, x)
    sc = scale(wd, x)
    for simd, name in ((True, _GGML_NAMES[t]), (False, f"{_GGML_NAMES[t]}_generic")):
        if simd and not HAS_SIMD:
            continue
        want = helpers.ggml_vec_dots(ggml_cpu, name, wq, aq, cols)
        got = matmul(t, wq, rows, cols, x, simd=simd)
        err = np.abs(got.astype(np.float64) - want) / sc
        assert err.max() <= 1e-6, f"{NAMES[t]} vs ggml_vec_dot_{name}: {err.max():.3g}"