"""IQ4_NL, IQ4_XS, TQ1_0 and TQ2_0 of the native core against ggml, bit for bit: quantized bytes without an
importance matrix (ggml_quantize_chunk, as llama-quantize runs it; with one: tests/test_quants_imatrix.py) on random
and adversarial rows, and dequantized values against ggml's dequantize_row_* and gguf-py's numpy dequantizers. The
matrix kernels are in tests/test_matmul.py (against ggml's vec_dots)."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

import native
from tests.helpers import assert_dequantized_as_ggml, ggml_cpu, ggml_vec_dots, kernels
from tests.test_quants_imatrix import ggml_quantize
from tests.test_quants_k_oracle import N_PER_ROW, adversarial_matrix

TYPES = [T.IQ4_NL, T.IQ4_XS, T.TQ1_0, T.TQ2_0]


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_random_and_adversarial_rows_equal_ggml(ggml, t):
    x, cases = adversarial_matrix()
    x = np.concatenate([np.random.default_rng(9).standard_normal((64, N_PER_ROW), dtype=np.float32), x])
    cases = ["random"] * 64 + cases
    ours, theirs = native.quantize(int(t), x, 3), ggml_quantize(ggml.lib, t, x, None)
    bad = [cases[i] for i in np.flatnonzero((ours != theirs).any(axis=1))]
    assert not bad, f"{t.name}: rows differ from ggml: {bad[:10]}"


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_dequantize_equals_ggml_and_gguf_py(ggml, t):
    x, _ = adversarial_matrix()
    # NaN where a huge scale meets a zero quant, on both sides
    assert_dequantized_as_ggml(ggml.lib, t, ggml_quantize(ggml.lib, t, x, None), N_PER_ROW)


def test_table_rows():
    assert native.TRAITS[int(T.IQ4_NL)] == ("iq4_nl", 32, 18)
    assert native.TRAITS[int(T.IQ4_XS)] == ("iq4_xs", 256, 136)
    assert native.TRAITS[int(T.TQ1_0)] == ("tq1_0", 256, 54)
    assert native.TRAITS[int(T.TQ2_0)] == ("tq2_0", 256, 66)


@pytest.mark.parametrize("t", [t for t in TYPES if t != T.IQ4_XS], ids=lambda t: t.name)
def test_simd_dot_products_are_ggml_s_bits(t):
    """With AVX2 both sides, the matrix products equal ggml's vec_dot (its AVX2 build) bit for bit on the same bytes."""
    if not native.cpu_features().get("f16c_avx2"):
        pytest.skip("no AVX2")
    rows, cols = 16, 4096
    rng = np.random.default_rng(int(t))
    w = native.quantize(int(t), rng.standard_normal((rows, cols), dtype=np.float32))
    x = rng.standard_normal((2, cols), dtype=np.float32)
    name = f"{t.name.lower()}_{'q8_0' if t == T.IQ4_NL else 'q8_K'}"
    want = ggml_vec_dots(ggml_cpu(), name, w, native.activations(int(t), x)[1], cols)
    with kernels(scalar=False):
        np.testing.assert_array_equal(native.matmul(int(t), w, rows, cols, x, 2), want)

def test_iq4_xs_dot_products_are_the_super_block_order():
    """IQ4_XS follows llama.cpp's tiled prompt path, not ggml's vec_dot: per super-block the exact integer
    Σ scale·value·q8, then fma(d_x·d_y, that, acc), super-blocks in order (quants_iq.c). Scalar and SIMD kernels, one
    token or a tile of them, give the bits of that order computed here from gguf-py's dequantizer (the blocks with d
    set to 1 give the integers scale·value; the fused step in float64, exact before its rounding to float32), and stay
    within 1e-6 of ggml's vec_dot (its AVX2 build)."""
    from gguf.quants import dequantize
    rows, cols, n = 16, 4096, 9
    rng = np.random.default_rng(23)
    w = native.quantize(int(T.IQ4_XS), rng.standard_normal((rows, cols), dtype=np.float32))
    x = rng.standard_normal((n, cols), dtype=np.float32)
    aq = native.activations(int(T.IQ4_XS), x)[1]
    blocks = w.reshape(rows, -1, 136).copy()
    dx = blocks[:, :, :2].copy().view(np.float16)[..., 0].astype(np.float32)
    blocks[:, :, :2] = np.frombuffer(np.float16(1).tobytes(), np.uint8)
    ints = dequantize(blocks.reshape(rows, -1), T.IQ4_XS).astype(np.int64).reshape(rows, -1, 256)
    act = aq.reshape(n, -1, 292)
    dy = act[:, :, :4].copy().view(np.float32)[..., 0]
    q8 = act[:, :, 4:260].copy().view(np.int8).astype(np.int64)
    isum = np.einsum("rbk,tbk->trb", ints, q8).astype(np.float32)
    want = np.zeros((n, rows), np.float32)
    for b in range(cols // 256):
        d = dy[:, None, b] * dx[None, :, b]
        want = (d.astype(np.float64) * isum[:, :, b] + want).astype(np.float32)
    for scalar in (True, False):
        with kernels(scalar=scalar):
            np.testing.assert_array_equal(native.matmul(int(T.IQ4_XS), w, rows, cols, x, 2), want)
            alone = np.stack([native.matmul(int(T.IQ4_XS), w, rows, cols, x[j:j + 1], 1)[0] for j in range(n)])
            np.testing.assert_array_equal(alone, want)
    theirs = ggml_vec_dots(ggml_cpu(), "iq4_xs_q8_K", w, aq, cols)
    scale = np.abs(np.einsum("rbk,tbk->trb", ints, np.abs(q8)) * np.abs(dx)[None] * np.abs(dy)[:, None]).sum(2)
    assert (np.abs(want.astype(np.float64) - theirs) / scale).max() <= 1e-6
