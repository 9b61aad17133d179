"""The native F32/F16/BF16 conversion against numpy's casts (the reference the issue names), SIMD and scalar paths."""
import numpy as np
import pytest

import native


def _bf16_of(x: np.ndarray) -> np.ndarray:
    """Reference f32 → bf16, round to nearest even, NaN kept quiet (as ggml and gguf-py do)."""
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    r[nan] = ((u[nan] >> 16) | 64).astype(np.uint16)
    return r


@pytest.fixture(params=[False, True], ids=["simd", "scalar"])
def path(request):
    native.set_force_scalar(request.param)
    yield request.param
    native.set_force_scalar(False)


def _values(n=1 << 18, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n).astype(np.float32) * np.float32(10.0) ** rng.integers(-12, 8, n).astype(np.float32)
    edge = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 65504, 65519.996, 65520, -65520, 6.1035156e-05,
                     6.0975552e-05, 2.0**-24, 2.0**-25, 2.0**-25 * 1.0000001, 2.0**-24 * 1.5, 2.0**-24 * 2.5,
                     1e-40, 3.4028235e38, 1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11], dtype=np.float32)
    x[: edge.size] = edge
    return x


@pytest.mark.parametrize("n", [1, 7, 8, 9, 1000, 1 << 18])
def test_f32_to_f16_matches_numpy(path, n):
    x = _values()[:n]
    out = np.empty(n, np.float16)
    native.convert_into(x, native.F32, out, native.F16)
    with np.errstate(over="ignore"):
        ref = x.astype(np.float16)
    np.testing.assert_array_equal(out.view(np.uint16)[~np.isnan(x)], ref.view(np.uint16)[~np.isnan(x)])
    assert np.isnan(out[np.isnan(x)]).all()


def test_f32_to_bf16_round_nearest_even(path):
    x = _values()
    out = np.empty(x.size, np.uint16)
    native.convert_into(x, native.F32, out, native.BF16)
    np.testing.assert_array_equal(out, _bf16_of(x))


def test_widening_is_exact(path):
    x = _values()
    with np.errstate(over="ignore"):
        h = x.astype(np.float16)
    f = np.empty(x.size, np.float32)
    native.convert_into(h, native.F16, f, native.F32)
    np.testing.assert_array_equal(f[~np.isnan(x)], h.astype(np.float32)[~np.isnan(x)])
    b = _bf16_of(x)
    native.convert_into(b, native.BF16, f, native.F32)
    np.testing.assert_array_equal(f.view(np.uint32), b.astype(np.uint32) << 16)


def test_bf16_to_f16_equals_numpy_cast_through_f32(path):
    b = _bf16_of(_values(seed=3))
    out = np.empty(b.size, np.float16)
    native.convert_into(b, native.BF16, out, native.F16)
    with np.errstate(over="ignore"):
        ref = (b.astype(np.uint32) << 16).view(np.float32).astype(np.float16)
    ok = ~np.isnan(ref)
    np.testing.assert_array_equal(out.view(np.uint16)[ok], ref.view(np.uint16)[ok])


def test_threads_split_gives_same_bytes():
    x = _values(1 << 20, seed=5)
    one, many = np.empty(x.size, np.float16), np.empty(x.size, np.float16)
    native.convert_into(x, native.F32, one, native.F16, nthreads=1)
    native.convert_into(x, native.F32, many, native.F16, nthreads=7)
    np.testing.assert_array_equal(one.view(np.uint16), many.view(np.uint16))


def test_rejects_mismatched_buffers():
    with pytest.raises(ValueError):
        native.convert_into(np.zeros(4, np.float32), native.F32, np.zeros(3, np.float16), native.F16)
    with pytest.raises(ValueError):
        native.convert_into(np.zeros(4, np.float32), 99, np.zeros(4, np.float16), native.F16)
