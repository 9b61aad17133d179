"""`toolkit quantize --prune-layers L0,L1,...` against llama.cpp's llama_model_quantize given the same layers
(llama-cpp-python 0.3.36's prune_layers): the same file, byte for byte — pruned blocks left out, the later ones
renumbered, the block count rewritten last, the mixture's counters over the kept tensors, and an importance matrix
read under the names before pruning; llama.cpp loads the result."""
from __future__ import annotations

import ctypes
import os

import pytest

from quantizer import imatrix
from quantizer.quantize import quantize_file
from quantizer.types import parse_file_type
from tests.helpers import run_toolkit
from tests.test_quantize_file import llama_cpp_quantize
from tests.test_quantize_imatrix import assert_same_but_imatrix_keys, matrix_shapes, write_random_imatrix
from tests.test_quantize_override_kv import llama8

llama_cpp = __import__("llama_cpp") if os.environ.get("CI") == "true" else pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return llama8(tmp_path_factory)


def theirs(model, out, ftype: int, layers: list[int], m: imatrix.ImportanceMatrix | None = None) -> None:
    arr = (ctypes.c_int32 * (len(layers) + 1))(*layers, -1)
    params = dict(prune_layers=ctypes.cast(arr, ctypes.POINTER(ctypes.c_int32)))
    keep = []
    if m is not None:
        keep = [(k, v) for k, v in m.weights.items()]
        entries = (llama_cpp.llama_model_imatrix_data * (len(keep) + 1))()
        for i, (k, v) in enumerate(keep):
            entries[i].name, entries[i].data, entries[i].size = (
                k.encode(), v.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), v.size)
        params["imatrix"] = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    llama_cpp_quantize(model, out, ftype, **params)


@pytest.mark.parametrize("type_name,layers", [("Q4_K_M", [3]), ("Q3_K_M", [0, 5, 6]), ("Q4_0", [7])])
def test_pruned_files_equal_llama_model_quantize(model, tmp_path, type_name, layers):
    ft = parse_file_type(type_name)
    quantize_file(model, tmp_path / "ours.gguf", ft, nthreads=2, prune_layers=layers, info=lambda m: None,
                  warn=lambda m: None)
    theirs(model, tmp_path / "theirs.gguf", int(ft.ftype), layers)
    assert (tmp_path / "ours.gguf").read_bytes() == (tmp_path / "theirs.gguf").read_bytes()
    llm = llama_cpp.Llama(str(tmp_path / "ours.gguf"), n_ctx=32, verbose=False, n_threads=2)
    assert llm.n_ctx() >= 32
    del llm


def test_with_an_importance_matrix(model, tmp_path):
    path = tmp_path / "m.imatrix.gguf"
    write_random_imatrix(matrix_shapes(model), path)
    m = imatrix.load(path)
    ft = parse_file_type("Q4_K_S")
    quantize_file(model, tmp_path / "ours.gguf", ft, nthreads=2, prune_layers=[1, 2], imatrix=m,
                  info=lambda s: None, warn=lambda s: None)
    theirs(model, tmp_path / "theirs.gguf", int(ft.ftype), [1, 2], m)
    assert_same_but_imatrix_keys(tmp_path / "ours.gguf", tmp_path / "theirs.gguf", m)


def test_bad_layer_list_is_one_line(model, tmp_path):
    r = run_toolkit("quantize", "--prune-layers", "1,x", model, tmp_path / "x.gguf", "Q4_K_M")
    assert r.returncode == 1 and "comma-separated layer numbers" in r.stderr, r.stderr
