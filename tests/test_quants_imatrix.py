"""Quantization with an importance matrix (llama-quantize --imatrix) against ggml itself, bit for bit.

Oracle: libggml-base.so shipped with llama-cpp-python (ggml_quantize_chunk given quant_weights). Every type whose
ggml quantizer takes the weights (Q4_0, Q4_1, Q5_0, Q5_1, Q2_K..Q6_K, IQ4_NL, IQ4_XS), and Q8_0, TQ1_0 and TQ2_0,
whose quantizers ignore them, on random and adversarial rows with random, sparse, constant and extreme weights;
through native.quantize on whichever path the CPU selects and on several threads.
"""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

import native
from tests.test_quants_k_oracle import N_PER_ROW, adversarial_matrix

TYPES = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_NL, T.IQ4_XS, T.TQ1_0,
         T.TQ2_0]


def ggml_quantize(lib, t: int, x: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    nrows, n = x.shape
    out = np.zeros((nrows, native.row_size(int(t), n)), np.uint8)
    lib.ggml_quantize_chunk(int(t), x.ctypes.data, out.ctypes.data, 0, nrows, n,
                            None if qw is None else qw.ctypes.data)
    return out


def weights(kind: str, n: int, seed: int = 3) -> np.ndarray:
    """Importance weights as llama-imatrix files hold them (mean squared activations, >= 0), and harder ones."""
    rng = np.random.default_rng(seed)
    w = {
        "squares": rng.standard_normal(n) ** 2,
        "lognormal": np.exp(rng.normal(0, 3, n)),
        "sparse": np.where(rng.random(n) < 0.1, rng.random(n) * 10, 0.0),
        "ones": np.ones(n),
        "zeros": np.zeros(n),
        "extreme": 10.0 ** rng.uniform(-30, 30, n),
        "one column": np.eye(1, n, 77)[0] * 3.0,
    }[kind]
    return np.ascontiguousarray(w, dtype=np.float32)


WEIGHT_KINDS = ["squares", "lognormal", "sparse", "ones", "zeros", "extreme", "one column"]


@pytest.mark.parametrize("kind", WEIGHT_KINDS)
@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_random_rows_equal_ggml(ggml, t, kind):
    x = np.random.default_rng(5).standard_normal((48, N_PER_ROW), dtype=np.float32)
    qw = weights(kind, N_PER_ROW)
    ours = native.quantize(int(t), x, 3, imatrix=qw)
    np.testing.assert_array_equal(ours, ggml_quantize(ggml.lib, t, x, qw))


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_adversarial_rows_equal_ggml(ggml, t):
    x, cases = adversarial_matrix()
    qw = weights("squares", N_PER_ROW)
    ours = native.quantize(int(t), x, 2, imatrix=qw)
    theirs = ggml_quantize(ggml.lib, t, x, qw)
    bad = [cases[i] for i in np.flatnonzero((ours != theirs).any(axis=1))]
    assert not bad, f"{t.name}: rows differ from ggml: {bad[:10]}"


def test_weights_change_the_result_only_for_types_that_use_them():
    x = np.random.default_rng(1).standard_normal((8, 512), dtype=np.float32)
    qw = weights("lognormal", 512)
    for t in TYPES:
        changed = not np.array_equal(native.quantize(int(t), x, 1, imatrix=qw), native.quantize(int(t), x, 1))
        assert changed == (t not in (T.Q8_0, T.TQ1_0, T.TQ2_0)), t.name


def test_imatrix_length_is_checked():
    with pytest.raises(ValueError, match="n_per_row"):
        native.quantize(int(T.Q4_K), np.ones((2, 256), np.float32), 1, imatrix=np.ones(255, np.float32))
