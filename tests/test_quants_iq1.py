"""IQ1_S and IQ1_M of the native core against ggml, bit for bit: quantized bytes (ggml_quantize_chunk with importance
weights, as llama-quantize runs it; IQ1_M also without, as ggml allows) on random rows with several kinds of weights,
on the adversarial rows and on stories260K's weights; dequantized values against ggml's dequantize_row_* and
gguf-py's; the AVX2 dot products against ggml's AVX2 vec_dots (the other matrix checks: tests/test_matmul.py).

ggml builds its IQ1 neighbour tables (iq2xs_init_impl) once per process, which takes this build ~40 s of CPU: every
ggml quantization here runs in this one module, after one explicit ggml_quantize_init. ggml aborts the process on
input whose errors overflow (an assertion after reading past its arrays): each adversarial row runs in a forked child,
and a row ggml dies on is only required not to crash ours."""
from __future__ import annotations

import os

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

import native
from tests.helpers import assert_dequantized_as_ggml, ggml_cpu, ggml_vec_dots, kernels
from tests.test_quants_imatrix import ggml_quantize, weights
from tests.test_quants_k_oracle import N_PER_ROW, Ggml, adversarial_matrix

TYPES = [T.IQ1_S, T.IQ1_M]


@pytest.fixture(scope="module")
def ggml():
    g = Ggml()
    g.lib.ggml_quantize_init(int(T.IQ1_S))  # the grid tables IQ1_S and IQ1_M share; forked children inherit them
    return g


def ggml_quantize_forked(lib, t: T, x: np.ndarray, qw: np.ndarray | None) -> bytes | None:
    """ggml_quantize_chunk of the rows x in a forked child: their bytes, or None when ggml aborted."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(r)
        try:
            os.write(w, ggml_quantize(lib, t, x, qw).tobytes())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 1 << 16):
        data += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    return data if os.WIFEXITED(status) and data else None


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_random_rows_equal_ggml(ggml, t):
    x = np.random.default_rng(5).standard_normal((12, N_PER_ROW), dtype=np.float32)
    for kind in ("squares", "lognormal", "sparse", "ones", "zeros", "extreme", "one column"):
        qw = weights(kind, N_PER_ROW)
        ours = native.quantize(int(t), x, 2, imatrix=qw)
        np.testing.assert_array_equal(ours, ggml_quantize(ggml.lib, t, x, qw), err_msg=f"{t.name}, {kind} weights")


def test_iq1_m_without_weights_equals_ggml(ggml):
    x = np.random.default_rng(6).standard_normal((12, N_PER_ROW), dtype=np.float32)
    np.testing.assert_array_equal(native.quantize(int(T.IQ1_M), x, 2), ggml_quantize(ggml.lib, T.IQ1_M, x, None))


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_real_weights_equal_ggml(ggml, stories_rows, t):
    x = stories_rows[::4]
    assert len(x) >= 24
    qw = weights("squares", N_PER_ROW)
    np.testing.assert_array_equal(native.quantize(int(t), x, 2, imatrix=qw), ggml_quantize(ggml.lib, t, x, qw))


@pytest.mark.parametrize("t,kind", [(T.IQ1_S, "squares"), (T.IQ1_M, "squares"), (T.IQ1_M, None)],
                         ids=["IQ1_S", "IQ1_M", "IQ1_M-no-weights"])
def test_adversarial_rows_equal_ggml(ggml, t, kind):
    x, cases = adversarial_matrix()
    qw = weights(kind, N_PER_ROW) if kind else None
    ours = native.quantize(int(t), x, 2, imatrix=qw)
    theirs = ggml_quantize_forked(ggml.lib, t, x, qw)
    if theirs is not None:
        bad = [cases[i] for i in np.flatnonzero((ours != np.frombuffer(theirs, np.uint8).reshape(ours.shape)).any(1))]
        assert not bad, f"{t.name}: rows differ from ggml: {bad[:10]}"
        return
    bad, aborted = [], []  # some row makes ggml abort: row by row, to compare the others
    for i, case in enumerate(cases):
        row = ggml_quantize_forked(ggml.lib, t, x[i:i + 1], qw)
        if row is None:
            aborted.append(case)
        elif row != ours[i].tobytes():
            bad.append(case)
    assert not bad, f"{t.name}: rows differ from ggml: {bad[:10]}"
    assert len(aborted) < len(cases) // 4, aborted


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_dequantize_equals_ggml_and_gguf_py(ggml, t):
    x, _ = adversarial_matrix()
    assert_dequantized_as_ggml(ggml.lib, t, native.quantize(int(t), x, 2, imatrix=weights("lognormal", N_PER_ROW)),
                               N_PER_ROW)


def test_table_rows():
    assert native.TRAITS[int(T.IQ1_S)] == ("iq1_s", 256, 50)
    assert native.TRAITS[int(T.IQ1_M)] == ("iq1_m", 256, 56)


def test_iq1_s_needs_an_importance_matrix():
    with pytest.raises(ValueError, match="iq1_s needs an importance matrix"):
        native.quantize(int(T.IQ1_S), np.ones((1, 256), np.float32))


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_simd_dot_products_are_ggml_s_bits(t):
    """With AVX2 both sides, the matrix products equal ggml's vec_dot (its AVX2 build) bit for bit on the same bytes."""
    if not native.cpu_features().get("f16c_avx2"):
        pytest.skip("no AVX2")
    rows, cols = 16, 4096
    rng = np.random.default_rng(int(t))
    w = native.quantize(int(t), rng.standard_normal((rows, cols), dtype=np.float32),
                        imatrix=rng.random(cols, dtype=np.float32))
    x = rng.standard_normal((2, cols), dtype=np.float32)
    want = ggml_vec_dots(ggml_cpu(), f"{t.name.lower()}_q8_K", w, native.activations(int(t), x)[1], cols)
    with kernels(scalar=False):
        np.testing.assert_array_equal(native.matmul(int(t), w, rows, cols, x, 2), want)