"""`toolkit quantize --override-kv KEY=TYPE:VALUE` against llama.cpp's llama_model_quantize given the same overrides
(llama-cpp-python 0.3.36's kv_overrides): the same file, byte for byte — new and replaced keys in their place, ints
written as uint32 magnitudes and floats as float32 (llama.cpp's choice), an override the mixture rules read
(block_count) — and the parse errors as one line."""
from __future__ import annotations

import ctypes
import os

import pytest

from converter.convert import convert_model
from fixtures import make_checkpoint
from quantizer.quantize import parse_kv_override, quantize_file
from quantizer.types import parse_file_type
from tests.helpers import run_toolkit
from tests.test_quantize_file import llama_cpp_quantize

llama_cpp = __import__("llama_cpp") if os.environ.get("CI") == "true" else pytest.importorskip("llama_cpp")


def llama8(tmp_path_factory):
    """An 8-layer Llama with GQA and rows of 256, f16 (tied embeddings keep it small)."""
    root = tmp_path_factory.mktemp("llama8")
    folder = make_checkpoint("llama", root / "llama", hidden_size=256, intermediate_size=512, num_hidden_layers=8,
                             num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=True)
    out = root / "llama-f16.gguf"
    convert_model(folder, outtype="f16", outfile=out)
    return out


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return llama8(tmp_path_factory)


def theirs(model, out, ftype: int, items: list[str]) -> None:
    arr = (llama_cpp.llama_model_kv_override * (len(items) + 1))()
    for k, item in enumerate(items):
        key, _, rest = item.partition("=")
        kind, _, value = rest.partition(":")
        arr[k].key = key.encode()
        if kind == "int":
            arr[k].tag, arr[k].value.val_i64 = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT, int(value)
        elif kind == "float":
            arr[k].tag, arr[k].value.val_f64 = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_FLOAT, float(value)
        elif kind == "bool":
            arr[k].tag, arr[k].value.val_bool = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_BOOL, value == "true"
        else:
            arr[k].tag, arr[k].value.val_str = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR, value.encode()
    arr[len(items)].key = b""
    llama_cpp_quantize(model, out, ftype, kv_overrides=ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_kv_override)))


@pytest.mark.parametrize("items", [
    ["general.name=str:hello", "llama.rope.freq_base=float:5000.3", "my.count=int:-7", "my.flag=bool:true"],
    ["llama.block_count=int:16", "general.file_type=int:3"],  # 16 layers for the ffn_down/attn_v rules
], ids=["new-and-replaced", "read-by-the-rules"])
def test_overrides_match_llama_model_quantize(model, tmp_path, items):
    ft = parse_file_type("Q4_K_M")
    quantize_file(model, tmp_path / "ours.gguf", ft, nthreads=2, kv_overrides=[parse_kv_override(i) for i in items],
                  info=lambda m: None, warn=lambda m: None)
    theirs(model, tmp_path / "theirs.gguf", int(ft.ftype), items)
    assert (tmp_path / "ours.gguf").read_bytes() == (tmp_path / "theirs.gguf").read_bytes()


def test_parse_errors_are_one_line(model, tmp_path):
    for bad, message in [("general.name", "expected KEY=TYPE:VALUE"), ("a=int:x", "is not an int"),
                         ("a=float:one", "is not a float"), ("a=bool:yes", "true or false"),
                         ("a=list:1", "int, float, bool or str"), ("a=str:" + "x" * 128, "127 bytes")]:
        r = run_toolkit("quantize", "--override-kv", bad, model, tmp_path / "x.gguf", "Q4_K_M")
        assert r.returncode == 1 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not (tmp_path / "x.gguf").exists()
