"""Runs llama.cpp's convert_hf_to_gguf.py on a Qwen1 folder with a stand-in for the folder's remote tokenizer code.

    python tests/qwen1_tokenizer_shim.py SPEC.json path/to/convert_hf_to_gguf.py ARGS...

Qwen1's tokenizer is code in the checkpoint (tokenization_qwen.py's QWenTokenizer, a transformers 4 PreTrainedTokenizer
around a tiktoken Encoding), which transformers 5 cannot load. llama.cpp's converter (QwenModel.set_vocab, its
_set_vocab_qwen and get_vocab_base_pre) uses only this of the object `AutoTokenizer.from_pretrained(folder,
trust_remote_code=True)` returns: `mergeable_ranks` (qwen.tiktoken's ranks), `special_tokens` (text -> id),
`get_vocab()` and `encode(text)`. This shim is exactly that much: SPEC.json names the folder and gives the split regex
and special tokens in order as tokenization_qwen.py defines them (PAT_STR, special_tokens; the test reads them from that
file); the object built from them answers those four as QWenTokenizer does, with the `tiktoken` package:

* mergeable_ranks: qwen.tiktoken read by tiktoken's load_tiktoken_bpe (QWenTokenizer's own loader: base64 -> rank);
* special_tokens: the i-th special token -> len(mergeable_ranks) + i;
* get_vocab(): mergeable_ranks (QWenTokenizer.get_vocab returns just that);
* encode(text): QWenTokenizer.tokenize (NFC, then the Encoding, special tokens disallowed as tiktoken's default) mapped
  back to ids; PreTrainedTokenizer.encode adds no BOS/EOS for it (build_inputs_with_special_tokens is the default).

`transformers.AutoTokenizer.from_pretrained` returns it for that folder only (any other call goes to transformers).
Everything else — tensor names, shapes, types, metadata, the vocabulary and merges written from these ranks — is the
converter's own code, run unchanged as __main__.
"""
from __future__ import annotations

import json
import os
import runpy
import sys
import unicodedata


class QwenTokenizerStandIn:
    def __init__(self, folder: str, pat_str: str, special_tokens: list[str]):
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe
        self.mergeable_ranks = load_tiktoken_bpe(os.path.join(folder, "qwen.tiktoken"))
        self.special_tokens = {t: len(self.mergeable_ranks) + i for i, t in enumerate(special_tokens)}
        self._encoding = tiktoken.Encoding("Qwen", pat_str=pat_str, mergeable_ranks=self.mergeable_ranks,
                                           special_tokens=self.special_tokens)

    def get_vocab(self) -> dict[bytes, int]:
        return self.mergeable_ranks

    def encode(self, text: str) -> list[int]:
        return self._encoding.encode(unicodedata.normalize("NFC", text))


def install(spec: dict) -> None:
    import transformers
    folder = os.path.realpath(spec["folder"])
    original = transformers.AutoTokenizer.from_pretrained

    def from_pretrained(path, *args, **kwargs):
        if os.path.realpath(str(path)) == folder:
            return QwenTokenizerStandIn(folder, spec["pat_str"], spec["special_tokens"])
        return original(path, *args, **kwargs)

    transformers.AutoTokenizer.from_pretrained = from_pretrained


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as f:
        install(json.load(f))
    script = sys.argv[2]
    sys.argv = sys.argv[2:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")
