"""Legacy types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) and BF16: our bytes against gguf-py's numpy quantizers and ggml's own
reference (libggml-base from llama-cpp-python), our dequantization against gguf-py's; on random and adversarial rows,
through the SIMD and the scalar paths."""
from __future__ import annotations

import ctypes
import os

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants as gq

import native

llama_cpp = __import__("llama_cpp") if os.environ.get("CI") == "true" else pytest.importorskip("llama_cpp")

LEGACY = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]


def ggml_quantize(t: T, x: np.ndarray) -> np.ndarray:
    lib = ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so"))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.zeros((x.shape[0], native.row_size(int(t), x.shape[1])), np.uint8)
    lib.ggml_quantize_chunk(int(t), x.ctypes.data, out.ctypes.data, 0, x.shape[0], x.shape[1], None)
    return out


def adversarial_rows(n: int = 256) -> np.ndarray:
    rng = np.random.default_rng(7)
    i = np.arange(n, dtype=np.float32)
    rows = [
        np.zeros(n), np.full(n, 3.25), np.full(n, -7.0), np.full(n, 1e-30), np.full(n, -1e30),
        np.where(i % 2 == 0, 2.0, -2.0),                       # ties for the largest magnitude, + first
        np.where(i % 2 == 0, -2.0, 2.0),                       # ties, - first
        np.where(i % 32 == 31, -1.0, 0.0), np.where(i % 32 == 0, 1.0, 0.0),
        (i % 16) - 8.0, (i % 16) - 7.5, (i % 32) / 31.0,       # exactly on the quantization grid / half steps
        ((i % 16) - 8.0) * 1e-30, ((i % 16) - 8.0) * 1e30, ((i % 32) - 16.0) / 16.0 * 2.5,
        rng.integers(-8, 8, n) + 0.5, rng.integers(-16, 16, n) + 0.5, (rng.integers(-127, 128, n)) / 127.0,
        rng.standard_normal(n) * 1e-30, rng.standard_normal(n) * 1e30, rng.standard_normal(n) * 1e-38,
        np.where(i < 31, 0.0, 5.0), np.where(i % 32 == 5, -0.0, 0.0), np.full(n, -0.0),
        rng.standard_normal(n) * np.where(i % 64 < 32, 1e-3, 1e3),
    ]
    return np.array(rows, dtype=np.float32)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return {"random": rng.standard_normal((512, 2048)).astype(np.float32), "adversarial": adversarial_rows()}


@pytest.fixture(params=[False, True], ids=["simd", "scalar"])
def path(request):
    native.set_force_scalar(request.param)
    yield
    native.set_force_scalar(False)


@pytest.mark.parametrize("t", LEGACY, ids=lambda t: t.name)
@pytest.mark.parametrize("kind", ["random", "adversarial"])
def test_bytes_equal_gguf_py_and_ggml(data, path, t, kind):
    x = data[kind]
    ours = native.quantize(int(t), x, 2)
    ggml = ggml_quantize(t, x)
    np.testing.assert_array_equal(ours, ggml)
    gguf_py = gq.quantize(x, t).reshape(ours.shape)
    # The two oracles disagree on exactly one row: all negative zeros, where ggml's strict scan keeps max = +0 (so
    # d = -0) and gguf-py's vectorised max gives d = +0 for Q4_0/Q5_0. We follow ggml, the format's owner.
    agree = (gguf_py == ggml).all(axis=1)
    expected_disagreement = np.array([np.all((r == 0) & np.signbit(r)) for r in x]) & (t in (T.Q4_0, T.Q5_0))
    np.testing.assert_array_equal(~agree, expected_disagreement)
    np.testing.assert_array_equal(ours[agree], gguf_py[agree])


@pytest.mark.parametrize("t", LEGACY, ids=lambda t: t.name)
@pytest.mark.parametrize("kind", ["random", "adversarial"])
def test_dequantize_equals_gguf_py(data, t, kind):
    q = native.quantize(int(t), data[kind], 2)
    ours = native.dequantize(int(t), q, data[kind].shape[1])
    ref = gq.dequantize(q, t)
    np.testing.assert_array_equal(ours, ref.reshape(ours.shape))


def test_bf16_equals_gguf_py(data):
    for x in data.values():
        ours = native.quantize(int(T.BF16), x, 2)
        np.testing.assert_array_equal(ours.reshape(-1), gq.quantize(x, T.BF16).view(np.uint8).reshape(-1))
        np.testing.assert_array_equal(native.dequantize(int(T.BF16), ours, x.shape[1]),
                                      gq.dequantize(gq.quantize(x, T.BF16), T.BF16).reshape(x.shape))


def test_f16_and_bf16_sources_quantize_like_their_f32_values(data):
    """The fused path (F16/BF16 rows widened in the core) equals quantizing the widened f32 rows."""
    x = data["random"][:64]
    h = x.astype(np.float16)
    for t in (int(T.Q4_0), int(T.Q4_K), int(T.Q6_K)):
        np.testing.assert_array_equal(native.quantize(t, h, 2), native.quantize(t, h.astype(np.float32), 2))
        b = gq.quantize(x, T.BF16).view(np.uint16).reshape(x.shape)
        widened = (b.astype(np.uint32) << 16).view(np.float32)
        np.testing.assert_array_equal(native.quantize(t, b, 2, src_type=native.BF16), native.quantize(t, widened, 2))


def test_nonfinite_input_is_reported():
    x = np.ones((4, 64), np.float32)
    x[2, 5] = np.nan
    with pytest.raises(native.NonFiniteError):
        native.quantize(int(T.Q4_0), x, 2)
    x[2, 5] = np.inf
    with pytest.raises(native.NonFiniteError):
        native.quantize(int(T.Q8_0), x.astype(np.float16), 2)


def test_bad_row_length_is_rejected():
    with pytest.raises(ValueError, match="not a multiple"):
        native.quantize(int(T.Q4_K), np.ones((2, 64), np.float32))
