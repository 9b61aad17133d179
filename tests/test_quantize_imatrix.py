"""`toolkit quantize --imatrix` against llama.cpp.

(a) In CI: importance matrices written here (random sums and per-expert counts, llama-imatrix's GGUF layout) are read
by quantizer.imatrix and handed, as read, to llama.cpp's own llama_model_quantize (llama-cpp-python 0.3.36, its
imatrix parameter): same tensor types and bytes for every type name, on an 8-layer Llama (the Q4_0/Q5_0 ffn_down rule
that only applies with a matrix) and a Mixtral (one weight slice per expert).
(b) When bench-data has llama.cpp b11434's binaries (not in CI): matrices computed by llama-imatrix in both of its
formats, and whole output files byte for byte equal to llama-quantize's with the same --imatrix and
--include-weights/--exclude-weights options (which tests the reading and normalisation, and the quantize.imatrix.*
keys)."""
from __future__ import annotations

import ctypes
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFWriter

from converter.convert import convert_model
from fixtures import make_checkpoint
from quantizer import imatrix
from quantizer.quantize import quantize_file
from quantizer.types import FILE_TYPES, parse_file_type
from tests.helpers import REPO, run_toolkit
from tests.test_quantize_file import llama_cpp_quantize
from common.errors import UserError
from common.ggufio import GGUFFile

llama_cpp = __import__("llama_cpp") if os.environ.get("CI") == "true" else pytest.importorskip("llama_cpp")

BIN = REPO / "bench-data" / "llama.cpp" / "bin"
# IQ2_XS and IQ2_S files (mostly IQ2_XS tensors, whose bytes test_quants_iq2 checks against ggml's, under the IQ2_XXS
# and IQ2_M files' rules) are left out for CI time: they equal llama-quantize's too
QUANT_TYPES = [f.name for f in FILE_TYPES if f.name not in ("F16", "BF16", "F32", "IQ2_XS", "IQ2_S")]
IMATRIX_KEYS = (imatrix.KEY_FILE, imatrix.KEY_DATASET, imatrix.KEY_N_ENTRIES, imatrix.KEY_N_CHUNKS)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("imodels")
    specs = {
        "llama256": ("llama", dict(hidden_size=256, intermediate_size=512, num_hidden_layers=8,
                                   num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=True)),
        "mixtral256": ("mixtral", dict(hidden_size=256, intermediate_size=256, num_hidden_layers=2,
                                       num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=True)),
    }
    out = {}
    for name, (arch, overrides) in specs.items():
        out[name] = root / f"{name}-f16.gguf"
        convert_model(make_checkpoint(arch, root / name, **overrides), outtype="f16", outfile=out[name])
    return out


def matrix_shapes(model: Path) -> dict[str, tuple[int, int]]:
    """{tensor name: (experts, columns)} for every matrix llama-imatrix would see (not the embeddings)."""
    with GGUFFile(model) as g:
        return {e.info.name: (e.info.shape[0] if len(e.info.shape) == 3 else 1, e.info.shape[-1])
                for e in g.tensors if len(e.info.shape) >= 2 and e.info.name != "token_embd.weight"}


def write_random_imatrix(shapes: dict[str, tuple[int, int]], path: Path, seed: int = 0) -> None:
    """llama-imatrix's GGUF layout: <name>.in_sum2 (experts x columns) and <name>.counts (experts), the imatrix.* keys;
    some experts never routed to (count 0)."""
    rng = np.random.default_rng(seed)
    w = GGUFWriter(path, arch=None)
    w.add_type("imatrix")
    w.add_array("imatrix.datasets", ["random.txt"])
    w.add_uint32("imatrix.chunk_count", 7)
    w.add_uint32("imatrix.chunk_size", 512)
    for name, (experts, cols) in shapes.items():
        counts = rng.integers(0, 40, experts).astype(np.float32) if experts > 1 else np.array([96], np.float32)
        sums = (rng.standard_normal((experts, cols)) ** 2 * 10 * counts[:, None]).astype(np.float32)
        w.add_tensor(f"{name}.in_sum2", sums.reshape(-1) if experts == 1 else sums)
        w.add_tensor(f"{name}.counts", counts)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def llama_cpp_quantize_with(model: Path, out: Path, ftype: int, m: imatrix.ImportanceMatrix) -> None:
    """llama_model_quantize given the matrix as llama-quantize hands it over (name, data, size; null-terminated)."""
    arrays = {k: np.ascontiguousarray(v, np.float32) for k, v in m.weights.items()}
    entries = (llama_cpp.llama_model_imatrix_data * (len(arrays) + 1))()
    for i, (name, a) in enumerate(arrays.items()):
        entries[i].name = name.encode()
        entries[i].data = a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        entries[i].size = a.size
    llama_cpp_quantize(model, out, ftype, imatrix=ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data)))


def assert_same_but_imatrix_keys(ours: Path, theirs: Path, m: imatrix.ImportanceMatrix) -> None:
    """Same tensors and keys, ours with llama-quantize's quantize.imatrix.* keys appended (the library call does not
    add them: the tool does)."""
    a, b = GGUFFile(ours), GGUFFile(theirs)
    kv = {k: a.kv[k].value for k in a.kv if k.startswith("quantize.")}
    assert kv == {imatrix.KEY_FILE: m.path, imatrix.KEY_DATASET: m.datasets[0], imatrix.KEY_N_ENTRIES: len(m.weights),
                  imatrix.KEY_N_CHUNKS: m.chunk_count}
    assert [e.info.name for e in a.tensors] == [e.info.name for e in b.tensors]
    for ea, eb in zip(a.tensors, b.tensors):
        assert ea.info.ggml_type == eb.info.ggml_type, ea.info.name
        assert np.array_equal(a.data(ea), b.data(eb)), f"{ea.info.name} ({ea.info.ggml_type.name}) differs"
    assert [k for k in a.kv if k not in IMATRIX_KEYS] == list(b.kv)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["llama256", "mixtral256"])
def test_every_type_matches_llama_model_quantize_given_the_matrix(models, tmp_path, model):
    path = tmp_path / "random.imatrix.gguf"
    write_random_imatrix(matrix_shapes(models[model]), path)
    m = imatrix.load(path)
    assert m.chunk_count == 7 and m.datasets == ["random.txt"]
    names = QUANT_TYPES if model == "llama256" else ["Q4_0", "Q5_1", "Q3_K_M", "Q4_K_M", "IQ1_M"]
    for name in names:
        ft = parse_file_type(name)
        ours, theirs = tmp_path / f"ours-{name}.gguf", tmp_path / f"theirs-{name}.gguf"
        quantize_file(models[model], ours, ft, nthreads=2, imatrix=m, info=lambda s: None, warn=lambda s: None)
        llama_cpp_quantize_with(models[model], theirs, int(ft.ftype), m)
        assert_same_but_imatrix_keys(ours, theirs, m)
        ours.unlink()
        theirs.unlink()


# -- llama.cpp b11434's llama-imatrix and llama-quantize (bench-data; not in CI) -------------------------------------

CALIBRATION = " ".join(
    "Once upon a time there was a little girl named Lily who liked to play in the park with her big red ball.".split()
    * 40)


@pytest.fixture(scope="module")
def computed(models, tmp_path_factory):
    """llama-imatrix's matrices for the two models, in both formats: {(model, "gguf"|"dat"): path}."""
    if not (BIN / "llama-imatrix").exists() or not (BIN / "llama-quantize").exists():
        pytest.skip(f"llama.cpp's binaries are absent from {BIN} (build them with ../shared/tools/build-llama-cpp.sh)")
    root = tmp_path_factory.mktemp("imatrices")
    text = root / "calibration.txt"
    text.write_text(CALIBRATION)
    out = {}
    for model, path in models.items():
        for fmt in ("gguf", "dat"):
            out[model, fmt] = root / f"{model}.imatrix.{fmt}"
            subprocess.run([BIN / "llama-imatrix", "-m", path, "-f", text, "-o", out[model, fmt], "--output-format",
                            fmt, "-c", "64", "--chunks", "3", "-t", "2"], check=True, capture_output=True)
    return out


def both_quantize(tmp_path: Path, model: Path, type_name: str, *options: str) -> tuple[bytes, bytes]:
    """The output files of llama-quantize and toolkit quantize with the same arguments."""
    theirs, ours = tmp_path / "theirs.gguf", tmp_path / "ours.gguf"
    subprocess.run([BIN / "llama-quantize", *options, model, theirs, type_name, "2"], check=True, capture_output=True)
    run_toolkit("quantize", *options, str(model), str(ours), type_name, "2", check=True)
    return ours.read_bytes(), theirs.read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("model,fmt,types", [
    ("llama256", "gguf", ["Q4_0", "Q5_0", "Q2_K", "Q3_K_L", "Q4_K_S", "Q5_K_M", "Q6_K", "IQ1_S", "IQ1_M", "IQ3_XXS",
                          "IQ3_M"]),
    ("llama256", "dat", ["Q4_K_M", "Q5_1", "IQ3_XS"]),
    ("mixtral256", "gguf", ["Q4_1", "Q3_K_S", "Q4_K_M", "IQ3_S", "IQ3_M"]),
])
def test_files_equal_llama_quantize_with_a_computed_matrix(models, computed, tmp_path, model, fmt, types):
    for type_name in types:
        ours, theirs = both_quantize(tmp_path, models[model], type_name, "--imatrix", str(computed[model, fmt]))
        assert ours == theirs, type_name


@pytest.mark.slow
@pytest.mark.parametrize("options", [
    ["--include-weights", "ffn_down"],
    ["--include-weights", "attn_v", "--include-weights", "blk.1."],
    ["--exclude-weights", "attn"],
    ["--include-weights", "no such tensor"],  # nothing left: quantized as without a matrix, no imatrix keys
], ids=["include", "include-twice", "exclude", "include-none"])
def test_weight_selection_equals_llama_quantize(models, computed, tmp_path, options):
    ours, theirs = both_quantize(tmp_path, models["llama256"], "Q4_K_M", "--imatrix",
                                 str(computed["llama256", "gguf"]), *options)
    assert ours == theirs


def test_command_line_errors(models, tmp_path):
    m = tmp_path / "m.imatrix.gguf"
    write_random_imatrix(dict(matrix_shapes(models["llama256"]), **{"blk.3.attn_q.weight": (1, 128)}), m)
    cases = [
        (["--imatrix", str(tmp_path / "none.gguf")], "does not exist"),
        (["--imatrix", str(m), "--include-weights", "a", "--exclude-weights", "b"], "cannot be used together"),
        (["--include-weights", "ffn"], "need --imatrix"),
        (["--imatrix", str(m)], "imatrix size 128 is different from tensor size 256 for blk.3.attn_q.weight"),
    ]
    for options, message in cases:
        r = run_toolkit("quantize", *options, str(models["llama256"]), str(tmp_path / "o.gguf"), "Q4_K_M")
        last = r.stderr.strip().splitlines()[-1]
        assert r.returncode == 1 and message in last and "Traceback" not in r.stderr, r.stderr
        assert not (tmp_path / "o.gguf").exists()


def test_types_that_need_a_matrix_refuse_to_run_without_one(models, tmp_path):
    """Q2_K_S (its Q2_K tensors): llama.cpp refuses too; a dry run only warns; a matrix lacking a tensor is refused."""
    ft = parse_file_type("Q2_K_S")
    with pytest.raises(AssertionError):
        llama_cpp_quantize(models["llama256"], tmp_path / "theirs.gguf", int(ft.ftype))
    with pytest.raises(UserError, match="requires an importance matrix"):
        quantize_file(models["llama256"], tmp_path / "o.gguf", ft, info=lambda s: None, warn=lambda s: None)
    warnings = []
    quantize_file(models["llama256"], None, ft, dry_run=True, info=lambda s: None, warn=warnings.append)
    assert any("require an importance matrix" in w for w in warnings)
    m = tmp_path / "m.imatrix.gguf"
    write_random_imatrix({k: v for k, v in matrix_shapes(models["llama256"]).items() if "ffn_up" not in k}, m)
    with pytest.raises(UserError, match="no weights for tensor blk.0.ffn_up.weight"):
        quantize_file(models["llama256"], tmp_path / "o.gguf", ft, imatrix=imatrix.load(m), info=lambda s: None,
                      warn=lambda s: None)
    assert not (tmp_path / "o.gguf").exists()


@pytest.mark.parametrize("name", ["IQ1_S", "IQ1_M"])
def test_iq1_files_need_a_matrix(models, tmp_path, name):
    """As llama.cpp, which refuses too; one line on the command line, nothing written."""
    with pytest.raises(AssertionError):
        llama_cpp_quantize(models["llama256"], tmp_path / "theirs.gguf", int(parse_file_type(name).ftype))
    r = run_toolkit("quantize", str(models["llama256"]), str(tmp_path / "o.gguf"), name)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 1 and "requires an importance matrix" in last and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "o.gguf").exists()


@pytest.mark.parametrize("name", ["IQ2_XS", "IQ2_M"])
def test_iq2_files_need_a_matrix(models, tmp_path, name):
    """As llama.cpp, which refuses too; one line on the command line, nothing written. The token embeddings and the
    output need none (llama.cpp's tensor_requires_imatrix; llama-imatrix never has the embeddings)."""
    from gguf import GGMLQuantizationType as T

    from quantizer.policy import requires_imatrix

    ft = parse_file_type(name)
    with pytest.raises(AssertionError):
        llama_cpp_quantize(models["llama256"], tmp_path / "theirs.gguf", int(ft.ftype))
    r = run_toolkit("quantize", str(models["llama256"]), str(tmp_path / "o.gguf"), name)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 1 and "requires an importance matrix" in last and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "o.gguf").exists()
    for t in (T.IQ2_XXS, T.IQ2_XS, T.IQ2_S):
        assert requires_imatrix("blk.3.ffn_down.weight", t, ft)
        assert not requires_imatrix("token_embd.weight", t, ft) and not requires_imatrix("output.weight", t, ft)


def test_damaged_matrices_are_refused(tmp_path):
    bad = {
        "empty.dat": (0).to_bytes(4, "little"),
        "short.dat": (2).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"abc",
        "no-values.dat": (1).to_bytes(4, "little") + (1).to_bytes(4, "little") + b"a" + bytes(8),
    }
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(UserError):
            imatrix.load(tmp_path / name)
    w = GGUFWriter(tmp_path / "nometa.gguf", arch=None)  # no imatrix.* keys
    w.add_tensor("x.in_sum2", np.ones(32, np.float32))
    w.add_tensor("x.counts", np.ones(1, np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    with pytest.raises(UserError, match="metadata"):
        imatrix.load(tmp_path / "nometa.gguf")
