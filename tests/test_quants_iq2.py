"""IQ2_XXS, IQ2_XS and IQ2_S of the native core against ggml, bit for bit: quantized bytes with an importance matrix
(and IQ2_S also without one; ggml_quantize_chunk, as llama-quantize runs it) on random, adversarial and real
(stories260K's weights) rows, the refusal of IQ2_XXS/IQ2_XS without a matrix, dequantized values against ggml's
dequantize_row_* and gguf-py's numpy dequantizers, and the matrix kernels (AVX2 and scalar) against ggml's AVX2 vec_dots.

ggml aborts (GGML_ASSERT in iq2_find_best_neighbour) when every distance to a grid point overflows, which the
adversarial rows of random values times 1e18 and 1e30 reach: those rows are checked only for not crashing ours."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

import native
from tests.helpers import assert_dequantized_as_ggml, ggml_cpu, ggml_vec_dots, kernels, rows_differing
from tests.test_quants_imatrix import ggml_quantize, weights
from tests.test_quants_k_oracle import N_PER_ROW, adversarial_matrix

TYPES = [T.IQ2_XXS, T.IQ2_XS, T.IQ2_S]
GGML_ABORTS = ("randn*1e+18", "randn*1e+30")


@pytest.fixture(scope="module")
def rows():
    """16 random rows, then the adversarial rows ggml quantizes without aborting; and every row's case name."""
    x, cases = adversarial_matrix()
    keep = np.array([c not in GGML_ABORTS for c in cases])
    x = np.concatenate([np.random.default_rng(9).standard_normal((16, N_PER_ROW), dtype=np.float32), x[keep]])
    return x, ["random"] * 16 + [c for c, k in zip(cases, keep) if k]


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_rows_equal_ggml_with_a_matrix(ggml, rows, t):
    x, cases = rows
    for kind in ("squares", "sparse", "zeros"):
        qw = weights(kind, N_PER_ROW)
        bad = rows_differing(native.quantize(int(t), x, 2, imatrix=qw), ggml_quantize(ggml.lib, t, x, qw), cases)
        assert not bad, f"{t.name}, {kind} weights: rows differ from ggml: {bad[:10]}"


def test_iq2_s_rows_equal_ggml_without_a_matrix(ggml, rows):
    x, cases = rows
    bad = rows_differing(native.quantize(int(T.IQ2_S), x, 2), ggml_quantize(ggml.lib, T.IQ2_S, x, None), cases)
    assert not bad, f"IQ2_S: rows differ from ggml: {bad[:10]}"


@pytest.mark.parametrize("t", [T.IQ2_XXS, T.IQ2_XS], ids=lambda t: t.name)
def test_the_types_ggml_needs_weights_for_refuse_without(t):
    with pytest.raises(ValueError, match=f"{t.name.lower()} needs an importance matrix"):
        native.quantize(int(t), np.ones((2, 256), np.float32), 1)


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_real_weights_equal_ggml(ggml, stories_rows, t):
    x = stories_rows[::3]
    assert len(x) >= 30
    qw = weights("lognormal", N_PER_ROW)
    np.testing.assert_array_equal(native.quantize(int(t), x, 2, imatrix=qw), ggml_quantize(ggml.lib, t, x, qw))


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_rows_that_make_ggml_abort_quantize_all_the_same(t):
    x, cases = adversarial_matrix()
    huge = x[[c in GGML_ABORTS for c in cases]]
    qw = weights("squares", N_PER_ROW)
    np.testing.assert_array_equal(native.quantize(int(t), huge, 1, imatrix=qw),
                                  native.quantize(int(t), huge, 2, imatrix=qw))


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_dequantize_equals_ggml_and_gguf_py(ggml, rows, t):
    x, _ = rows
    assert_dequantized_as_ggml(ggml.lib, t, ggml_quantize(ggml.lib, t, x, weights("squares", N_PER_ROW)), N_PER_ROW)
    # every grid entry, sign group and scale: random blocks (fp16 scales kept below 1; IQ2_XS grid indices are 9
    # bits of 16, so random bytes reach all of them; IQ2_S's 10-bit ones through qh)
    blocks = np.random.default_rng(int(t)).integers(0, 256, (512, native.TRAITS[int(t)][2]), dtype=np.uint8)
    blocks[:, 1] &= 0x3B
    assert_dequantized_as_ggml(ggml.lib, t, blocks, 256)


def test_table_rows():
    assert native.TRAITS[int(T.IQ2_XXS)] == ("iq2_xxs", 256, 66)
    assert native.TRAITS[int(T.IQ2_XS)] == ("iq2_xs", 256, 74)
    assert native.TRAITS[int(T.IQ2_S)] == ("iq2_s", 256, 82)


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_dot_products_are_ggml_s_avx2_bits(t):
    """The matrix products (AVX2 and scalar paths) equal ggml's vec_dot (its AVX2 build) bit for bit on the same
    bytes, one token alone and several batched."""
    if not native.cpu_features().get("f16c_avx2"):
        pytest.skip("no AVX2")
    rows, cols, n = 16, 4096, 5
    rng = np.random.default_rng(int(t))
    w = native.quantize(int(t), rng.standard_normal((rows, cols), dtype=np.float32), imatrix=weights("squares", cols))
    x = rng.standard_normal((n, cols), dtype=np.float32)
    want = ggml_vec_dots(ggml_cpu(), f"{t.name.lower()}_q8_K", w, native.activations(int(t), x)[1], cols)
    for scalar in (False, True):  # the scalar kernels follow the AVX2 float order
        with kernels(scalar):
            np.testing.assert_array_equal(native.matmul(int(t), w, rows, cols, x, 2), want)
            np.testing.assert_array_equal(native.matmul(int(t), w, rows, cols, x[2:3], 1), want[2:3])