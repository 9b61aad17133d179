"""`toolkit quantize --tensor-type PATTERN=TYPE` (and --tensor-type-file) against llama.cpp's llama_model_quantize
given the same overrides (llama-cpp-python 0.3.36's tt_overrides): same tensor types and bytes. The cases cover the
first-match order, patterns as regular expressions searched in the name, the lower-casing of patterns, overrides with
--pure, a manual type that takes a tensor out of the mixture's counters (Q3_K_M's first two attn_v), the shape
fallback after an override, and the output/token-embedding options winning over patterns."""
from __future__ import annotations

import ctypes
import os

import pytest
from gguf import GGMLQuantizationType as T

from converter.convert import convert_model
from fixtures import make_checkpoint
from quantizer.policy import Options
from quantizer.quantize import quantize_file
from quantizer.types import parse_file_type, parse_tensor_type_option
from tests.helpers import run_toolkit
from tests.test_quantize_file import assert_same_file_content, llama_cpp_quantize
from common.ggufio import GGUFFile

llama_cpp = __import__("llama_cpp") if os.environ.get("CI") == "true" else pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("ttmodel")
    folder = make_checkpoint("llama", root / "llama", hidden_size=256, intermediate_size=512, num_hidden_layers=8,
                             num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=True)
    out = root / "llama-f16.gguf"
    convert_model(folder, outtype="f16", outfile=out)
    return out


def theirs(model, out, ftype: int, items: list[str], **params) -> None:
    overrides = [parse_tensor_type_option(i) for i in items]
    arr = (llama_cpp.llama_model_tensor_override * (len(overrides) + 1))()
    for k, (pattern, t) in enumerate(overrides):
        arr[k].pattern = pattern.encode()
        arr[k].type = int(t)
    arr[len(overrides)].pattern = None
    llama_cpp_quantize(model, out, ftype, tt_overrides=ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_tensor_override)),
                       **params)


CASES = [
    ("Q4_K_M", ["attn_q=q8_0"], {}),
    ("Q3_K_M", ["blk\\.0\\.attn_v=q4_0", "ffn_down=q6_k"], {}),       # the counters skip the manual attn_v
    ("Q4_K_M", ["attn_v=q6_K", "attn=q2_k"], {}),                    # first match wins
    ("Q4_K_S", ["ATTN_OUTPUT=iq4_xs", "blk\\.[2-5]\\.ffn_(up|gate)=q5_0"], {}),  # lower-cased; alternation
    ("Q5_K_M", ["ffn=q4_k"], dict(pure=True)),
    ("Q4_0", ["token_embd=q8_0", "blk\\.7\\.=iq4_nl"], dict(output_tensor_type=int(T.Q6_K))),
]


@pytest.mark.parametrize("type_name,items,params", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_overrides_match_llama_model_quantize(model, tmp_path, type_name, items, params):
    ft = parse_file_type(type_name)
    opts = Options(pure=params.get("pure", False), output_tensor_type=T(params["output_tensor_type"])
                   if "output_tensor_type" in params else None,
                   tensor_types=[parse_tensor_type_option(i) for i in items])
    quantize_file(model, tmp_path / "ours.gguf", ft, nthreads=2, opts=opts, info=lambda m: None, warn=lambda m: None)
    theirs(model, tmp_path / "theirs.gguf", int(ft.ftype), items, **params)
    assert_same_file_content(tmp_path / "ours.gguf", tmp_path / "theirs.gguf")


def test_command_line_and_file(model, tmp_path):
    spec = tmp_path / "types.txt"
    spec.write_text("ffn_down=q6_k\n  attn_k=q8_0\tattn_output=iq4_nl\n")
    r = run_toolkit("quantize", "--tensor-type", "attn_q=q5_1", "--tensor-type-file", spec, model,
                    tmp_path / "o.gguf", "Q4_K_M", "2")
    assert r.returncode == 0, r.stderr
    types = {e.info.name: e.info.ggml_type for e in GGUFFile(tmp_path / "o.gguf").tensors}
    assert {types[f"blk.{i}.{n}.weight"] for i in range(8) for n in ("ffn_down",)} == {T.Q6_K}
    assert types["blk.3.attn_q.weight"] == T.Q5_1 and types["blk.3.attn_k.weight"] == T.Q8_0
    assert types["blk.5.attn_output.weight"] == T.IQ4_NL
    for bad, message in [("attn_q", "expected PATTERN=TYPE"), ("=q4_0", "missing tensor name"),
                         ("attn_q=", "missing quantization type"), ("attn_q=q9_9", "unknown tensor type"),
                         ("attn_q(=q4_0", "not a regular expression")]:
        r = run_toolkit("quantize", "--tensor-type", bad, model, tmp_path / "x.gguf", "Q4_K_M")
        assert r.returncode == 1 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not (tmp_path / "x.gguf").exists()
