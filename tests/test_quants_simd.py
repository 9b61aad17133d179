"""SIMD quantizers against the scalar reference and ggml, bit for bit (zero tolerance)."""
from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import kernels


# ------------------------------------------------------------------------------------------------ k-quants (AVX2)
# quants_k_avx2.c against the scalar reference (native.set_force_scalar) and against ggml's ggml_quantize_chunk,
# byte for byte. The data builders and the ggml harness are those of tests/test_quants_k_oracle.py.

_K_TYPES = [10, 11, 12, 13, 14]  # Q2_K, Q3_K, Q4_K, Q5_K, Q6_K
_K_NAMES = {10: "q2_K", 11: "q3_K", 12: "q4_K", 13: "q5_K", 14: "q6_K"}


@pytest.fixture(scope="module")
def k_oracle():
    """tests.test_quants_k_oracle, imported here so that a missing llama_cpp skips only these tests."""
    import importlib

    return importlib.import_module("tests.test_quants_k_oracle")


@pytest.fixture(scope="module")
def k_ggml(k_oracle):
    return k_oracle.Ggml()


@pytest.fixture(scope="module")
def k_random(k_oracle):
    return k_oracle.random_matrix()  # 512 x 2048 = 1M elements


@pytest.fixture(scope="module")
def k_adversarial(k_oracle):
    return k_oracle.adversarial_matrix()


def _k_quantize(t, x, simd: bool, nthreads: int = 2):
    import native

    with kernels(scalar=not simd):
        return native.quantize(t, np.ascontiguousarray(x, dtype=np.float32), nthreads)


def _k_check(k_oracle, k_ggml, t, x, names=None):
    import native

    if not native.cpu_features().get("f16c_avx2"):
        pytest.skip("CPU without AVX2/F16C: the SIMD k-quant paths are not used")
    simd = _k_quantize(t, x, simd=True)
    scalar = _k_quantize(t, x, simd=False)
    with np.errstate(all="ignore"):
        want = k_ggml.quantize(t, x)
    k_oracle.assert_same_blocks(t, simd, scalar, names)
    k_oracle.assert_same_blocks(t, simd, want, names)


@pytest.mark.parametrize("t", _K_TYPES, ids=lambda t: _K_NAMES[t])
def test_k_simd_random_matches_scalar_and_ggml(k_oracle, k_ggml, k_random, t):
    _k_check(k_oracle, k_ggml, t, k_random)


@pytest.mark.parametrize("t", _K_TYPES, ids=lambda t: _K_NAMES[t])
def test_k_simd_adversarial_matches_scalar_and_ggml(k_oracle, k_ggml, k_adversarial, t):
    x, names = k_adversarial
    _k_check(k_oracle, k_ggml, t, x, names)


@pytest.mark.parametrize("t", _K_TYPES, ids=lambda t: _K_NAMES[t])
def test_k_simd_grid_midpoints_matches_scalar_and_ggml(k_oracle, k_ggml, t):
    """Values half a grid step off ggml's own levels: rounding ties everywhere."""
    x = k_oracle.grid_midpoints(k_ggml, t, k_oracle.random_matrix(3)[:256])
    _k_check(k_oracle, k_ggml, t, x)


@pytest.mark.parametrize("nblocks", [1, 2, 3, 5])
@pytest.mark.parametrize("t", _K_TYPES, ids=lambda t: _K_NAMES[t])
def test_k_simd_odd_block_counts(k_oracle, k_ggml, t, nblocks):
    """Rows of 1..5 super-blocks: Q4_K/Q5_K fit two super-blocks together, the odd last one alone."""
    rng = np.random.default_rng(40 + nblocks)
    x = rng.standard_normal((48, nblocks * 256)).astype(np.float32)
    x[::3] *= np.float32(1e-3)
    x[1::4] += np.float32(3)
    x[2::5] = -np.abs(x[2::5])
    _k_check(k_oracle, k_ggml, t, x)


@pytest.mark.parametrize("t", _K_TYPES, ids=lambda t: _K_NAMES[t])
def test_k_simd_extreme_magnitudes(k_oracle, k_ggml, t):
    """Sub-blocks of 1e-38..1e38 (inf/NaN intermediates in the fits), big offsets with tiny noise (quotients far
    beyond the rounding trick's range in the final pass), sparse rows."""
    rng = np.random.default_rng(77)
    rows, n = 96, 1280
    base = rng.standard_normal((rows, n))
    with np.errstate(all="ignore"):
        a = base * np.repeat(10.0 ** rng.uniform(-38, 38, (rows, n // 16)), 16, axis=1)
        b = base * 1e-4 + np.repeat(rng.standard_normal((rows, n // 32)) * 1e6, 32, axis=1)
        c = np.where(rng.random((rows, n)) < 0.9, 0.0, base * 10.0 ** rng.uniform(-40, 38, (rows, 1)))
        x = np.concatenate([a, b, c]).astype(np.float32)
    x = np.nan_to_num(x, posinf=3.4e38, neginf=-3.4e38)
    _k_check(k_oracle, k_ggml, t, x)


# ------------------------------------------------------------------------------------------------ grid types
# The IQ2 and IQ3 quantizers' shared search (quants_grid*.c: every step of a scale search in a lane, the neighbour
# search 8 or 16 neighbours at a time) on the scalar path and at every instruction-set level the CPU has, against
# ggml's ggml_quantize_chunk byte for byte, with an importance matrix (IQ2_S and the IQ3 types also without).

_GRID_TYPES = {16: "IQ2_XXS", 17: "IQ2_XS", 22: "IQ2_S", 18: "IQ3_XXS", 21: "IQ3_S"}


@pytest.mark.parametrize("t", list(_GRID_TYPES), ids=_GRID_TYPES.get)
def test_grid_search_forms_equal_ggml(ggml, t):
    import native
    from tests.helpers import ISA_NAMES, isa_level, isa_levels
    from tests.test_quants_imatrix import ggml_quantize, weights

    rng = np.random.default_rng(t)
    x = (rng.standard_normal((24, 512)) * rng.lognormal(0, 2, (24, 1))).astype(np.float32)
    x[3, 40:72] = 0      # a zero sub-block
    x[5] = np.abs(x[5])  # no signs to flip
    x[7, ::3] *= 1e-9    # tiny magnitudes beside ordinary ones
    forms = [("scalar", lambda: kernels(scalar=True))] + [(ISA_NAMES[v], lambda v=v: isa_level(v)) for v in isa_levels()]
    for qw in [weights("squares", 512), weights("sparse", 512)] + [None] * (t in (22, 18, 21)):
        want = ggml_quantize(ggml.lib, t, x, qw)
        for name, form in forms:
            with form():
                got = native.quantize(t, x, 2, imatrix=qw)
            bad = np.flatnonzero((got != want).any(axis=1)).tolist()
            assert not bad, f"{_GRID_TYPES[t]} {name}, {'no' if qw is None else 'a'} matrix: rows {bad} differ"
