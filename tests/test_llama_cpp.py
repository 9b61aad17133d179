"""Interop with llama.cpp itself (llama-cpp-python 0.3.36): it loads every file we convert, its logits match the
reference implementations, and its tokenizer on our vocabulary metadata matches HF `tokenizers` / `sentencepiece`."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from converter.convert import convert_model
from fixtures import load_hf_model, make_checkpoint, tokenizer_corpus
from tests.codeshell_reference import codeshell_logits

llama_cpp = pytest.importorskip("llama_cpp") if os.environ.get("CI") != "true" else __import__("llama_cpp")

PROMPT = [5, 17, 42, 99, 100, 7, 300, 11, 2, 250, 199, 3, 8, 64, 77, 123, 9, 31, 400, 21]
GGML_F32 = 0


def llama_logits(path, ids) -> np.ndarray:
    """All-position logits from llama.cpp, with an f32 KV cache so that only the model file differs."""
    llm = llama_cpp.Llama(str(path), n_ctx=64, n_batch=64, logits_all=True, verbose=False, n_threads=2,
                          type_k=GGML_F32, type_v=GGML_F32)
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


class _Fp16TableGelu(torch.nn.Module):
    """ggml's CPU GELU reads a table indexed by the fp16 bits of its input: emulate it in the HF reference."""

    def __init__(self, act):
        super().__init__()
        self.act = act

    def forward(self, x):
        return self.act(x.half().float()).half().float()


def reference_logits(arch, folder, ids) -> np.ndarray:
    if arch == "codeshell":
        return codeshell_logits(folder, ids, gelu_fp16_table=True)
    model = load_hf_model(arch, folder)
    if arch == "gpt2":
        for block in model.transformer.h:
            block.mlp.act = _Fp16TableGelu(block.mlp.act)
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


@pytest.fixture(scope="module")
def models(tmp_path_factory, shared_fixtures):
    root = tmp_path_factory.mktemp("interop")
    return {arch: make_checkpoint(arch, root / arch) for arch in ("codeshell", "llama", "mistral", "qwen2", "gpt2")}


@pytest.mark.parametrize("arch", ["codeshell", "llama", "mistral", "qwen2", "gpt2"])
def test_llama_cpp_logits_match_reference(models, tmp_path, arch):
    folder = models[arch]
    ref = reference_logits(arch, folder, PROMPT)
    f32 = tmp_path / "f32.gguf"
    convert_model(folder, outtype="f32", outfile=f32)
    got = llama_logits(f32, PROMPT)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < 1e-3
    # The f16 file loads too and stays close (its weights are rounded, so the tolerance is the cast's).
    f16 = tmp_path / "f16.gguf"
    convert_model(folder, outtype="f16", outfile=f16)
    assert np.abs(llama_logits(f16, PROMPT) - ref).max() < 2e-2


def test_llama_cpp_loads_phantom_wte_codeshell(tmp_path, shared_fixtures):
    """The real CodeShell-7B layout (no wte, only lm_head): llama.cpp takes token embeddings from `output`."""
    folder = make_checkpoint("codeshell", tmp_path / "cs", phantom_wte=True)
    out = tmp_path / "m.gguf"
    convert_model(folder, outtype="f32", outfile=out)
    assert np.abs(llama_logits(out, PROMPT) - codeshell_logits(folder, PROMPT, gelu_fp16_table=True)).max() < 1e-3


def test_llama_cpp_loads_real_stories260k(tmp_path, shared_fixtures):
    """The real trained model: llama.cpp's greedy continuation of our conversion is a story."""
    out = tmp_path / "stories.gguf"
    convert_model(shared_fixtures / "stories260K", outtype="f32", outfile=out)
    llm = llama_cpp.Llama(str(out), n_ctx=128, verbose=False, n_threads=2)
    text = llm("Once upon a time", max_tokens=20, temperature=0.0)["choices"][0]["text"]
    assert text.startswith(", there was a little girl named Lily")


def test_codeshell_token_ids_match_hf_tokenizers(models, tmp_path, shared_fixtures):
    from tokenizers import Tokenizer
    tok_json = shared_fixtures / "codeshell" / "tokenizer.json"
    specials = [a["content"] for a in json.loads(tok_json.read_text())["added_tokens"]]
    corpus = tokenizer_corpus(2000, specials=specials)
    assert sum(any(s in text for s in specials) for text in corpus) >= 50
    out = tmp_path / "vocab.gguf"
    convert_model(models["codeshell"], outfile=out, vocab_only=True)
    llm = llama_cpp.Llama(str(out), vocab_only=True, verbose=False)
    hf = Tokenizer.from_file(str(tok_json))
    mismatches = [s for s in corpus
                  if llm.tokenize(s.encode(), add_bos=False, special=True) != hf.encode(s, add_special_tokens=False).ids]
    assert mismatches == []


def test_llama_token_ids_match_sentencepiece(models, tmp_path, shared_fixtures):
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=str(shared_fixtures / "llama-spm" / "tokenizer.model"))
    corpus = tokenizer_corpus(2000)
    out = tmp_path / "vocab.gguf"
    convert_model(models["llama"], outfile=out, vocab_only=True)
    llm = llama_cpp.Llama(str(out), vocab_only=True, verbose=False)
    # sentencepiece treats its text literally, so llama.cpp is asked not to parse special tokens either
    mismatches = [s for s in corpus if llm.tokenize(s.encode(), add_bos=False, special=False) != sp.encode(s)]
    assert mismatches == []
    assert llm.tokenize(b"Hello", add_bos=True)[0] == 1
