"""IQ3_XXS and IQ3_S of the native core against ggml, bit for bit: quantized bytes with and without an importance
matrix (ggml_quantize_chunk, as llama-quantize runs it) on random, adversarial and real (stories260K's weights) rows, and
dequantized values against ggml's dequantize_row_* and gguf-py's numpy dequantizers. The matrix kernels are in
tests/test_matmul.py (against ggml's vec_dots) and below against ggml's AVX2 ones.

ggml aborts (GGML_ASSERT in iq3_find_best_neighbour) when every distance to a grid point overflows to infinity, which
rows of magnitude 1e9 and above reach: those rows are compared only for not crashing ours and decoding finite."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

import native
from tests.helpers import assert_dequantized_as_ggml, ggml_cpu, ggml_vec_dots, kernels, rows_differing
from tests.test_quants_imatrix import ggml_quantize, weights
from tests.test_quants_k_oracle import N_PER_ROW, adversarial_matrix

TYPES = [T.IQ3_XXS, T.IQ3_S]
GGML_SURVIVES = 1e9  # rows below this magnitude: ggml's quantizer does not abort on them


@pytest.fixture(scope="module")
def rows():
    """32 random rows, then the adversarial rows ggml quantizes without aborting; and every row's case name."""
    x, cases = adversarial_matrix()
    keep = np.abs(x).max(axis=1) < GGML_SURVIVES
    rng = np.random.default_rng(9)
    # all-zero sub-blocks of 32 among others (IQ3_S packs the next ones' indices and signs into their place)
    holes = rng.standard_normal((3, N_PER_ROW), dtype=np.float32)
    holes[0, 64:96] = holes[1, :32] = holes[1, 288:320] = holes[2, 224:256] = 0
    x = np.concatenate([rng.standard_normal((32, N_PER_ROW), dtype=np.float32), holes, x[keep]])
    return x, ["random"] * 32 + ["zero sub-blocks"] * 3 + [c for c, k in zip(cases, keep) if k]


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_rows_equal_ggml_without_a_matrix(ggml, rows, t):
    x, cases = rows
    bad = rows_differing(native.quantize(int(t), x, 2), ggml_quantize(ggml.lib, t, x, None), cases)
    assert not bad, f"{t.name}: rows differ from ggml: {bad[:10]}"


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_rows_equal_ggml_with_a_matrix(ggml, rows, t):
    x, cases = rows
    for kind in ("lognormal", "sparse", "zeros"):
        qw = weights(kind, N_PER_ROW)
        bad = rows_differing(native.quantize(int(t), x, 2, imatrix=qw), ggml_quantize(ggml.lib, t, x, qw), cases)
        assert not bad, f"{t.name}, {kind} weights: rows differ from ggml: {bad[:10]}"


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_real_weights_equal_ggml(ggml, stories_rows, t):
    x = stories_rows[::2]
    assert len(x) >= 50
    qw = weights("squares", N_PER_ROW)
    np.testing.assert_array_equal(native.quantize(int(t), x, 2), ggml_quantize(ggml.lib, t, x, None))
    np.testing.assert_array_equal(native.quantize(int(t), x, 2, imatrix=qw), ggml_quantize(ggml.lib, t, x, qw))


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_rows_that_make_ggml_abort_quantize_all_the_same(t):
    """(their scales overflow fp16, as every type's do)"""
    x, _ = adversarial_matrix()
    huge = x[np.abs(x).max(axis=1) >= GGML_SURVIVES]
    assert len(huge) >= 3
    np.testing.assert_array_equal(native.quantize(int(t), huge, 1), native.quantize(int(t), huge, 3))


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_dequantize_equals_ggml_and_gguf_py(ggml, rows, t):
    x, _ = rows
    assert_dequantized_as_ggml(ggml.lib, t, ggml_quantize(ggml.lib, t, x, None), N_PER_ROW)
    # every grid entry, sign group and scale: random blocks (fp16 scales kept below 1)
    blocks = np.random.default_rng(int(t)).integers(0, 256, (512, native.TRAITS[int(t)][2]), dtype=np.uint8)
    blocks[:, 1] &= 0x3B
    assert_dequantized_as_ggml(ggml.lib, t, blocks, 256, gguf_py=False)


def test_table_rows():
    assert native.TRAITS[int(T.IQ3_XXS)] == ("iq3_xxs", 256, 98)
    assert native.TRAITS[int(T.IQ3_S)] == ("iq3_s", 256, 110)


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_simd_dot_products_are_ggml_s_bits(t):
    """The matrix products equal ggml's AVX2 vec_dot bit for bit on the same bytes, one token alone and several
    batched, on our AVX2 kernels and on our scalar ones (which follow the AVX2 float order)."""
    if not native.cpu_features().get("f16c_avx2"):
        pytest.skip("no AVX2")
    rows, cols, n = 16, 4096, 5
    rng = np.random.default_rng(int(t))
    w = native.quantize(int(t), rng.standard_normal((rows, cols), dtype=np.float32))
    x = rng.standard_normal((n, cols), dtype=np.float32)
    want = ggml_vec_dots(ggml_cpu(), f"{t.name.lower()}_q8_K", w, native.activations(int(t), x)[1], cols)
    for scalar in (False, True):
        with kernels(scalar):
            np.testing.assert_array_equal(native.matmul(int(t), w, rows, cols, x, 2), want)
            np.testing.assert_array_equal(native.matmul(int(t), w, rows, cols, x[2:3], 1), want[2:3])


def test_files_with_iq3_xxs_tensors_need_a_matrix(tmp_path):
    """IQ3_XS puts IQ3_XXS in attn_q/attn_k and the middle layers' ffn_gate/ffn_up, which llama.cpp makes only with
    an importance matrix: both refuse without one (ours in one line, writing nothing)."""
    from converter.convert import convert_model
    from fixtures import make_checkpoint
    from quantizer.types import parse_file_type
    from tests.helpers import run_toolkit
    from tests.test_quantize_file import llama_cpp_quantize

    model = tmp_path / "f16.gguf"
    convert_model(make_checkpoint("llama", tmp_path / "m", hidden_size=256, intermediate_size=256, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=4), outtype="f16", outfile=model)
    with pytest.raises(AssertionError):
        llama_cpp_quantize(model, tmp_path / "theirs.gguf", int(parse_file_type("IQ3_XS").ftype))
    r = run_toolkit("quantize", str(model), str(tmp_path / "o.gguf"), "IQ3_XS")
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 1 and "requires an importance matrix" in last and "iq3_xxs" in last, r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "o.gguf").exists()
