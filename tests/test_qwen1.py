"""Qwen1 (`QWenLMHeadModel`: Qwen-7B/14B/72B-Chat) end to end, against independent oracles: the real `qwen.tiktoken` with
the `tiktoken` package (token ids), a torch reference written from the model's own modeling_qwen.py (logits; checked
against that code under transformers 4.33, where it runs, to 9e-7 relative) and llama.cpp loading our files."""
from __future__ import annotations

import os

import numpy as np
import pytest

from converter.convert import convert_model
from converter.pyliterals import assigned_values
from fixtures import tokenizer_corpus
from fixtures.qwen1 import make_qwen1_checkpoint
from runtime.api import Llama
from runtime.sampling import SamplingParams
from runtime.tokenizer import Tokenizer
from tests.helpers import fields, llama_cpp_logit_diff, quantized, tensors
from tests.qwen_reference import qwen1_logits
from common.ggufio import GGUFFile

PROMPT = [int(t) for t in np.random.default_rng(7).integers(0, 151643, 64)]
CHATML = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


@pytest.fixture(scope="module")
def qwen(tmp_path_factory, shared_fixtures):
    root = tmp_path_factory.mktemp("qwen1")
    folder = make_qwen1_checkpoint(root / "ckpt", matrix_std=0.02)
    out = {"folder": folder}
    for outtype in ("f32", "f16"):
        out[outtype] = root / f"{outtype}.gguf"
        convert_model(folder, outtype=outtype, outfile=out[outtype], info=lambda m: None)
    return out


def tiktoken_encoding(folder):
    """The tokenizer as tokenization_qwen.py builds it, with the tiktoken package (its ranks, regex and specials)."""
    tiktoken = pytest.importorskip("tiktoken") if os.environ.get("CI") != "true" else __import__("tiktoken")
    from tiktoken.load import load_tiktoken_bpe
    ranks = load_tiktoken_bpe(str(folder / "qwen.tiktoken"))
    values = assigned_values(folder / "tokenization_qwen.py")
    specials = {t: len(ranks) + i for i, t in enumerate(values["special_tokens"][0])}
    return tiktoken.Encoding("qwen", pat_str=values["PAT_STR"][0], mergeable_ranks=ranks, special_tokens=specials)


def test_metadata_and_tensors(qwen):
    """The keys and tensors llama.cpp's converter writes for the same checkpoint (tests/test_llama_cpp_converter.py
    compares whole files with it), except two keys where its output does not load in llama.cpp itself: the norm
    epsilon goes to attention.layer_norm_rms_epsilon (llama.cpp's qwen reads that key) and feed_forward_length is
    written (from ffn_hidden_size, which its converter does not look up); and the sampling defaults of
    generation_config.json, as it writes them."""
    from gguf import GGUFReader
    r = GGUFReader(qwen["f16"])
    f = fields(r)
    want = {"qwen.block_count": 2, "qwen.context_length": 6144, "qwen.embedding_length": 64,
            "qwen.attention.head_count": 4, "qwen.rope.freq_base": 10000.0, "qwen.feed_forward_length": 256,
            "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "qwen2", "tokenizer.ggml.bos_token_id": 151643,
            "tokenizer.ggml.eos_token_id": 151643, "tokenizer.ggml.unknown_token_id": 151643}
    assert {k: f[k] for k in want} == want
    assert abs(f["qwen.attention.layer_norm_rms_epsilon"] - 1e-6) < 1e-12
    assert f["general.sampling.top_k"] == 0 and abs(f["general.sampling.top_p"] - 0.8) < 1e-7
    assert not [k for k in f if k.startswith("qwen.") and k[5:] not in
                ("block_count", "context_length", "embedding_length", "attention.head_count", "rope.freq_base",
                 "feed_forward_length", "attention.layer_norm_rms_epsilon")]
    types = f["tokenizer.ggml.token_type"]
    assert len(types) == 151936 and types.count(1) == 151643 and types.count(3) == 208 and types.count(5) == 85
    assert len(f["tokenizer.ggml.merges"]) == 151387
    assert f["tokenizer.ggml.merges"][:3] == ["Ġ Ġ", "ĠĠ ĠĠ", "i n"]
    t = {name: (shape, type_name) for name, (shape, type_name, _) in tensors(r).items()}
    assert len(t) == 19
    assert t["blk.0.attn_qkv.weight"] == ((192, 64), "F16") and t["blk.0.ffn_gate.weight"] == ((128, 64), "F16")
    assert t["blk.0.ffn_down.weight"] == ((64, 128), "F16") and t["output.weight"] == ((151936, 64), "F16")
    assert t["blk.0.attn_qkv.bias"] == ((192,), "F32") and t["output_norm.weight"] == ((64,), "F32")


def test_token_ids_equal_tiktoken(qwen):
    """2000 strings of every kind (and ChatML special tokens) give tiktoken's ids."""
    enc = tiktoken_encoding(qwen["folder"])
    with GGUFFile(qwen["f32"]) as g:
        tok = Tokenizer.from_gguf(g)
    bad = []
    for text in tokenizer_corpus(2000, specials=CHATML):
        want = enc.encode(text, allowed_special="all")
        got = tok.encode(text, add_bos=False, parse_special=True)
        if got != want:
            bad.append((text, got, want))
        elif tok.decode(got) != text and all(c.isprintable() or c in "\n\t\r " for c in text):
            bad.append((text, "decode", tok.decode(got)))
    assert not bad, f"{len(bad)} of 2000 differ, first: {bad[0]!r}"


def test_special_tokens_of_the_tokenizer_code(qwen):
    enc = tiktoken_encoding(qwen["folder"])
    with GGUFFile(qwen["f32"]) as g:
        tok = Tokenizer.from_gguf(g)
    text = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n你好<|im_end|>\n<extra_3>"
    assert tok.encode(text, add_bos=False, parse_special=True) == enc.encode(text, allowed_special="all")
    assert enc.encode("<|im_end|>", allowed_special="all") == [151645]


@pytest.mark.slow
@pytest.mark.parametrize("outtype,tol", [("f32", 1e-4), ("f16", 1e-2)])
def test_logits_match_modeling_qwen(qwen, outtype, tol):
    llm = Llama(str(qwen[outtype]), n_ctx=128, logits_all=True, verbose=False, type_k=0, type_v=0)
    llm.eval(PROMPT)
    tokens = list(PROMPT)
    for _ in range(16):
        tokens.append(int(np.argmax(llm.scores[-1])))
        llm.eval([tokens[-1]])
    ref = qwen1_logits(qwen["folder"], tokens)
    assert np.abs(llm.scores - ref).max() / np.abs(ref).max() < tol


@pytest.mark.slow
@pytest.mark.parametrize("type_name", ["F32", "F16", "Q8_0", "Q4_K"])
def test_llama_cpp_agrees(qwen, tmp_path, type_name):
    llama_cpp = __import__("llama_cpp") if os.environ.get("CI") == "true" else pytest.importorskip("llama_cpp")
    path = quantized(qwen["f32"], tmp_path, type_name)
    assert llama_cpp_logit_diff(llama_cpp, path, PROMPT[:32]) < 2e-3
    ref = llama_cpp.Llama(str(path), n_ctx=128, verbose=False, n_threads=2, type_k=0, type_v=0)
    theirs = [t for t, _ in zip(ref.generate(PROMPT[:8], temp=0.0, top_k=1), range(32))]
    mine = list(Llama(str(path), n_ctx=128, verbose=False, type_k=0, type_v=0).session.generate(
        PROMPT[:8], 32, SamplingParams(temp=0.0), ignore_eos=True))
    assert mine == theirs


def test_chat_uses_chatml(qwen):
    """The file carries no template (as llama.cpp's converter writes it); the runtime takes ChatML for qwen."""
    from runtime.chat import chat_format, prompt_tokens
    with GGUFFile(qwen["f32"]) as g:
        tok = Tokenizer.from_gguf(g)
        assert g.value("tokenizer.chat_template") is None
    ids = prompt_tokens(chat_format("qwen", None), tok, [{"role": "user", "content": "hi"}])
    assert ids == tiktoken_encoding(qwen["folder"]).encode("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
                                                           allowed_special="all")
