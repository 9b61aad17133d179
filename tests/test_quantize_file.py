"""`toolkit quantize` on whole files against llama.cpp's own `llama_model_quantize` (llama-cpp-python 0.3.36): same
tensor order, types and bytes, same metadata, for every type name; llama.cpp loads and runs the result; CLI and errors."""
from __future__ import annotations

import ctypes
import os
import resource
import shutil
import subprocess

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from converter.convert import convert_model
from fixtures import make_checkpoint
from quantizer.policy import Options, requires_imatrix
from quantizer.quantize import quantize_file
from quantizer.types import FILE_TYPES, parse_file_type
from tests.helpers import REPO, TOOLKIT, run_toolkit
from common.ggufio import GGUFFile

llama_cpp = __import__("llama_cpp") if os.environ.get("CI") == "true" else pytest.importorskip("llama_cpp")

# the types that need an importance matrix are in tests/test_quantize_imatrix.py
TYPE_NAMES = [f.name for f in FILE_TYPES
              if not requires_imatrix("blk.0.ffn_up.weight", f.default, f) and f.name != "IQ3_XS"]  # (IQ3_XXS tensors)


def llama_cpp_quantize(inp, out, ftype: int, **params) -> None:
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = ftype
    p.nthread = 2
    for k, v in params.items():
        setattr(p, k, v)
    assert llama_cpp.llama_model_quantize(str(inp).encode(), str(out).encode(), ctypes.byref(p)) == 0


def assert_same_file_content(ours, theirs):
    a, b = GGUFFile(ours), GGUFFile(theirs)
    assert [e.info.name for e in a.tensors] == [e.info.name for e in b.tensors]
    for ea, eb in zip(a.tensors, b.tensors):
        assert ea.info.ggml_type == eb.info.ggml_type, ea.info.name
        assert ea.info.shape == eb.info.shape, ea.info.name
        assert np.array_equal(a.data(ea), b.data(eb)), f"{ea.info.name} ({ea.info.ggml_type.name}) differs"
    assert list(a.kv) == list(b.kv)
    for k in a.kv:
        va, vb = a.kv[k].value, b.kv[k].value
        assert a.kv[k].vtype == b.kv[k].vtype, k
        assert (np.array_equal(va, vb) if isinstance(va, np.ndarray) else va == vb), k


@pytest.fixture(scope="module")
def f16_models(tmp_path_factory, shared_fixtures):
    """f16 GGUFs: CodeShell with its real tokenizer (64-wide rows: the fallback rules), a 256-wide 8-layer CodeShell
    and Llama (the k-quant mixtures, GQA), and the real stories260K."""
    root = tmp_path_factory.mktemp("qmodels")
    specs = {
        "codeshell": ("codeshell", {}),
        "codeshell256": ("codeshell", dict(n_embd=256, n_head=4, num_query_groups=2, n_inner=1024, n_layer=8)),
        "llama256": ("llama", dict(hidden_size=256, intermediate_size=768, num_hidden_layers=8,
                                   num_attention_heads=8, num_key_value_heads=2)),
    }
    out = {}
    for name, (arch, overrides) in specs.items():
        folder = make_checkpoint(arch, root / name, **overrides)
        out[name] = root / f"{name}-f16.gguf"
        convert_model(folder, outtype="f16", outfile=out[name])
    out["stories260K"] = root / "stories-f16.gguf"
    convert_model(shared_fixtures / "stories260K", outtype="f16", outfile=out["stories260K"])
    return out


@pytest.mark.parametrize("model", ["codeshell", "codeshell256", "llama256", "stories260K"])
def test_every_type_matches_llama_quantize_and_loads(f16_models, tmp_path, model):
    inp = f16_models[model]
    # the IQ1/IQ2/IQ3 files (grid searches: a minute for these models) on the Llama only, for CI time; their CodeShell
    # rules are llama.cpp's generic ones, which the other types check here
    for name in (n for n in TYPE_NAMES if model == "llama256" or n[:3] not in ("IQ1", "IQ2", "IQ3")):
        ft = parse_file_type(name)
        ours, theirs = tmp_path / f"ours-{name}.gguf", tmp_path / f"theirs-{name}.gguf"
        quantize_file(inp, ours, ft, nthreads=2, info=lambda m: None, warn=lambda m: None)
        llama_cpp_quantize(inp, theirs, int(ft.ftype))
        assert_same_file_content(ours, theirs)
        llm = llama_cpp.Llama(str(ours), n_ctx=64, verbose=False, n_threads=2)
        tokens = llm.tokenize(b"Once upon a time", add_bos=True)
        out = llm.create_completion("Once upon a time", max_tokens=4, temperature=0.0)
        assert out["usage"]["completion_tokens"] >= 1 and len(tokens) > 1
        del llm
        theirs.unlink()
        ours.unlink()


def test_mixture_choices_on_a_real_layer_count(f16_models, tmp_path):
    """The 8-layer models exercise use_more_bits: Q4_K_M gives Q6_K to some attn_v/attn_qkv and ffn_down only."""
    out = tmp_path / "q.gguf"
    quantize_file(f16_models["llama256"], out, parse_file_type("Q4_K_M"), nthreads=2, info=lambda m: None)
    types = {e.info.name: e.info.ggml_type for e in GGUFFile(out).tensors}
    assert {types[f"blk.{i}.attn_v.weight"] for i in range(8)} == {T.Q4_K, T.Q6_K}
    assert {types[f"blk.{i}.ffn_down.weight"] for i in range(8)} == {T.Q4_K, T.Q6_K}
    assert types["output.weight"] == T.Q6_K and types["blk.3.attn_q.weight"] == T.Q4_K


@pytest.mark.parametrize("options,params", [
    (Options(pure=True), dict(pure=True)),
    (Options(leave_output_tensor=True), dict(quantize_output_tensor=False)),
    (Options(output_tensor_type=T.Q8_0, token_embedding_type=T.Q4_0), dict(output_tensor_type=8, token_embedding_type=2)),
], ids=["pure", "leave-output", "tensor-types"])
def test_options_match_llama_quantize(f16_models, tmp_path, options, params):
    for name in ("Q4_K_M", "Q3_K_S"):
        ft = parse_file_type(name)
        quantize_file(f16_models["llama256"], tmp_path / "o.gguf", ft, nthreads=2, opts=options, info=lambda m: None)
        llama_cpp_quantize(f16_models["llama256"], tmp_path / "t.gguf", int(ft.ftype), **params)
        assert_same_file_content(tmp_path / "o.gguf", tmp_path / "t.gguf")


def test_requantize(f16_models, tmp_path):
    q8 = tmp_path / "q8.gguf"
    quantize_file(f16_models["llama256"], q8, parse_file_type("Q8_0"), nthreads=2, info=lambda m: None)
    p = run_toolkit("quantize", q8, tmp_path / "x.gguf", "Q4_0")
    assert p.returncode == 1 and "requantizing from type q8_0 is disabled" in p.stderr
    assert not (tmp_path / "x.gguf").exists()
    assert run_toolkit("quantize", "--allow-requantize", q8, tmp_path / "x.gguf", "Q4_0").returncode == 0
    llama_cpp_quantize(q8, tmp_path / "t.gguf", 2, allow_requantize=True)
    assert_same_file_content(tmp_path / "x.gguf", tmp_path / "t.gguf")


# ---- command line ---------------------------------------------------------------------------------------------

def test_cli_positionals_summary_and_default_name(f16_models, tmp_path):
    inp = tmp_path / "m.gguf"
    shutil.copy(f16_models["stories260K"], inp)
    before = inp.read_bytes()
    p = run_toolkit("quantize", inp, "q4_k_m", "2")
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "ggml-model-Q4_K_M.gguf").is_file()
    for text in ("model size", "quant size", "BPW", "fallback quantization", "converting to q8_0",
                 "(required for type q6_K) -> falling back to q8_0", "quantize time"):
        assert text in p.stderr, text
    p = run_toolkit("quantize", inp, tmp_path / "by-id.gguf", "7")  # numeric ftype id: Q8_0
    assert p.returncode == 0, p.stderr
    assert GGUFFile(tmp_path / "by-id.gguf").value("general.file_type") == 7
    assert inp.read_bytes() == before


def test_cli_list_and_dry_run(f16_models, tmp_path):
    p = run_toolkit("quantize", "--list")
    assert p.returncode == 0
    for name in TYPE_NAMES + ["Q4_K", "Q5_K", "Q3_K"]:
        assert name in p.stdout
    assert "4.5" in p.stdout and "6.5625" in p.stdout
    out = tmp_path / "never.gguf"
    p = run_toolkit("quantize", "--dry-run", f16_models["llama256"], out, "Q4_K_M")
    assert p.returncode == 0, p.stderr
    assert "quant size" in p.stderr and "Q6_K" in p.stdout
    assert not out.exists() and list(tmp_path.iterdir()) == []


def _fails(args, contains, folder):
    before = sorted(p.name for p in folder.iterdir())
    p = run_toolkit("quantize", *args)
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert p.returncode != 0 and len(errors) == 1 and p.stderr.rstrip().endswith(errors[0]), p.stderr
    assert contains in errors[0] and "Traceback" not in p.stderr
    assert sorted(p.name for p in folder.iterdir()) == before


def test_cli_errors(f16_models, tmp_path):
    inp = tmp_path / "m.gguf"
    shutil.copy(f16_models["stories260K"], inp)
    _fails([inp, tmp_path / "o.gguf", "Q9_X"], "unknown quantization type 'Q9_X'; valid: Q4_0", tmp_path)
    _fails([inp, inp, "Q4_0"], "would overwrite the input", tmp_path)
    _fails([tmp_path / "missing.gguf", tmp_path / "o.gguf", "Q4_0"], "does not exist", tmp_path)
    (tmp_path / "not.gguf").write_bytes(b"this is not a gguf file at all....")
    _fails([tmp_path / "not.gguf", tmp_path / "o.gguf", "Q4_0"], "not a GGUF file", tmp_path)
    trunc = tmp_path / "trunc.gguf"
    trunc.write_bytes(inp.read_bytes()[:-5000])
    _fails([trunc, tmp_path / "o.gguf", "Q4_0"], "is truncated", tmp_path)
    head = tmp_path / "head.gguf"
    head.write_bytes(inp.read_bytes()[:300])
    _fails([head, tmp_path / "o.gguf", "Q4_0"], "corrupt or truncated", tmp_path)
    _fails([inp, tmp_path / "o.gguf", "Q4_0", "zero"], "NTHREADS must be a positive integer", tmp_path)
    _fails([inp, "--output-tensor-type", "q7", tmp_path / "o.gguf", "Q4_0"], "unknown tensor type", tmp_path)


def test_nan_tensor_is_named(f16_models, tmp_path):
    bad = tmp_path / "nan.gguf"
    shutil.copy(f16_models["llama256"], bad)
    with GGUFFile(bad) as g:
        entry = next(e for e in g.tensors if e.info.name == "blk.2.ffn_up.weight")
        offset = entry.offset + 2 * 1000
    with open(bad, "r+b") as f:
        f.seek(offset)
        f.write(np.float16(np.nan).tobytes())
    _fails([bad, tmp_path / "o.gguf", "Q4_K_M"], "tensor blk.2.ffn_up.weight contains NaN/Inf", tmp_path)


def test_write_failure_leaves_nothing(f16_models, tmp_path):
    """A file-size limit makes the write fail part-way (EFBIG), as a full disk would (ENOSPC)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    out = tmp_path / "out"
    out.mkdir()
    p = subprocess.run([*TOOLKIT, "quantize", str(f16_models["llama256"]), str(out / "q.gguf"), "Q8_0"],
                       capture_output=True, text=True, cwd=REPO, preexec_fn=limit)
    assert p.returncode == 1 and "File too large" in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert list(out.iterdir()) == []


def test_file_without_tensors_is_refused_before_any_output(tmp_path):
    """Issue 18: a GGUF with 0 tensors used to be renamed into place, then fail in the summary (ZeroDivisionError)."""
    from gguf import GGUFValueType
    from common.ggufio import KV, encode_header
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(encode_header([KV("general.architecture", GGUFValueType.STRING, "llama")], []))
    _fails([empty, tmp_path / "out.gguf", "Q8_0"], "has no tensors: nothing to quantize", tmp_path)
    _fails([empty, "Q8_0"], "has no tensors", tmp_path)  # the default output name is not taken either


def test_output_appears_only_after_the_report(f16_models, tmp_path):
    """The summary runs before the rename: when it fails, no output is left behind."""
    out = tmp_path / "q.gguf"

    def report(r):
        assert r.bpw_out < r.bpw_in and not out.exists()
        raise RuntimeError("summary failed")
    with pytest.raises(RuntimeError, match="summary failed"):
        quantize_file(f16_models["llama256"], out, parse_file_type("Q8_0"), nthreads=2, info=lambda m: None,
                      report=report)
    assert list(tmp_path.iterdir()) == []
