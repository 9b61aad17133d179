"""llama.cpp's grammar sampler (through llama-cpp-python's low-level API on a vocabulary-only GGUF) as the oracle of
which tokens a GBNF grammar allows, and of which strings it accepts."""
from __future__ import annotations

import ctypes

import numpy as np

TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])


class LlamaVocab:
    """A llama.cpp vocabulary loaded without weights."""

    def __init__(self, path: str):
        import llama_cpp
        self.lib = llama_cpp
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)

    def grammar(self, text: str, root: str = "root") -> "LlamaGrammarSampler | None":
        """The grammar sampler, or None when llama.cpp refuses the grammar."""
        smpl = self.lib.llama_sampler_init_grammar(self.vocab, text.encode(), root.encode())
        return LlamaGrammarSampler(self, smpl) if smpl else None

    def close(self) -> None:
        self.lib.llama_model_free(self.model)


class LlamaGrammarSampler:
    def __init__(self, vocab: LlamaVocab, smpl):
        self.v, self.smpl = vocab, smpl

    def mask(self, ids: np.ndarray | None = None) -> np.ndarray:
        """Which of `ids` (default: the whole vocabulary) the grammar allows now."""
        lib = self.v.lib
        ids = np.arange(self.v.n_vocab) if ids is None else np.asarray(ids)
        arr = (lib.llama_token_data * ids.size)()
        view = np.frombuffer(arr, dtype=TOKEN_DATA)
        view["id"], view["logit"] = ids, 0.0
        cur = lib.llama_token_data_array(data=arr, size=ids.size, selected=-1, sorted=False)
        lib.llama_sampler_apply(self.smpl, ctypes.byref(cur))
        return np.isfinite(view["logit"])

    def accept(self, token_id: int) -> None:
        self.v.lib.llama_sampler_accept(self.smpl, int(token_id))

    def free(self) -> None:
        self.v.lib.llama_sampler_free(self.smpl)


def byte_tokens(pieces: list[bytes]) -> dict[int, int]:
    """byte value → the id of a token whose piece is that one byte."""
    out: dict[int, int] = {}
    for tid, p in enumerate(pieces):
        if len(p) == 1 and p[0] not in out:
            out[p[0]] = tid
    return out


def llama_accepts(vocab: LlamaVocab, grammar: str, text: str, byte_ids: dict[int, int], eog_id: int) -> bool:
    """Whether llama.cpp's grammar accepts the whole of `text`, fed one byte token at a time, then the end."""
    smpl = vocab.grammar(grammar)
    assert smpl is not None, "llama.cpp refused the grammar"
    try:
        for b in text.encode("utf-8"):
            tid = byte_ids[b]
            if not smpl.mask(np.array([tid]))[0]:
                return False
            smpl.accept(tid)
        return bool(smpl.mask(np.array([eog_id]))[0])
    finally:
        smpl.free()
