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


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
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