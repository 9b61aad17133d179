"""A GGUF model opened for inference: hyper-parameters and weights, memory-mapped (no copy, no dequantized copy);
the native engine (runtime/arch) reads the tensors in place."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T

import native
from toolkit.errors import UserError
from toolkit.ggufio import GGUFFile, TensorEntry

SUPPORTED_ARCHS = ("llama", "qwen", "qwen2", "qwen3", "gpt2", "codeshell")
# feed_forward_length counts both halves of a fused SwiGLU width (Qwen1: w1 and w2 are each half of it, as llama.cpp reads it)
FFN_HALVED = ("qwen",)


class Weight:
    """A 1-D or 2-D tensor of the file, kept in its stored type."""

    def __init__(self, g: GGUFFile, entry: TensorEntry):
        self.name = entry.info.name
        self.type: T = entry.info.ggml_type
        self.shape = entry.info.shape          # numpy order: (rows, cols) for matrices
        self.data = g.data(entry)              # uint8 view of the mapped file

    @property
    def rows(self) -> int:
        return self.shape[0] if len(self.shape) > 1 else 1

    @property
    def cols(self) -> int:
        return self.shape[-1]


@dataclass(frozen=True)
class HParams:
    arch: str
    n_vocab: int
    n_ctx_train: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    head_dim: int
    n_rot: int
    rope_base: float
    rope_freq_scale: float
    eps: float


def _hparams(g: GGUFFile, arch: str, n_vocab: int) -> HParams:
    def get(key, default=None):
        v = g.value(f"{arch}.{key}", default)
        if v is None:
            raise UserError(f"{g.path.name}: missing {arch}.{key}")
        return v.item() if isinstance(v, np.generic) else v

    n_embd, n_head = int(get("embedding_length")), int(get("attention.head_count"))
    head_dim = int(get("attention.key_length", n_embd // n_head))
    scale = 1.0
    if g.value(f"{arch}.rope.scaling.type") == "linear":
        scale = 1.0 / float(get("rope.scaling.factor", 1.0))
    eps = g.value(f"{arch}.attention.layer_norm_rms_epsilon", g.value(f"{arch}.attention.layer_norm_epsilon"))
    if eps is None:
        raise UserError(f"{g.path.name}: missing the norm epsilon of {arch}")
    return HParams(
        arch=arch, n_vocab=n_vocab, n_ctx_train=int(get("context_length")), n_embd=n_embd,
        n_layer=int(get("block_count")), n_head=n_head, n_head_kv=int(get("attention.head_count_kv", n_head)),
        n_ff=int(get("feed_forward_length")) // (2 if arch in FFN_HALVED else 1), head_dim=head_dim, n_rot=int(get("rope.dimension_count", head_dim)),
        rope_base=float(get("rope.freq_base", 10000.0)), rope_freq_scale=scale, eps=float(eps))


class Model:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.gguf = GGUFFile(self.path, populate=True)
        arch = self.gguf.value("general.architecture")
        if arch not in SUPPORTED_ARCHS:
            self.gguf.close()
            raise UserError(f"unsupported architecture {arch!r}; supported: {', '.join(SUPPORTED_ARCHS)}")
        tokens = self.gguf.value("tokenizer.ggml.tokens")
        if tokens is None:
            raise UserError(f"{self.path.name} has no tokenizer (tokenizer.ggml.tokens)")
        self.weights = {e.info.name: Weight(self.gguf, e) for e in self.gguf.tensors}
        self.hp = _hparams(self.gguf, arch, len(tokens))
        for t in self.weights.values():
            if int(t.type) not in native.TRAITS:
                raise UserError(f"tensor {t.name} has type {t.type.name}, which the runtime does not support")

    def close(self) -> None:
        self.weights.clear()
        self.gguf.close()
