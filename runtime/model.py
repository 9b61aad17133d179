"""A GGUF model opened for inference: its architecture's recipe (archs/), hyper-parameters and weights, memory-mapped
(no copy, no dequantized copy); the native engine (runtime/arch) reads the tensors in place."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import Keys

import archs
import native
from common.errors import UserError
from common.ggufio import GGUFFile, TensorEntry


class Weight:
    """A 1-D or 2-D tensor of the file, kept in its stored type."""

    def __init__(self, g: GGUFFile, entry: TensorEntry):
        self.name = entry.info.name
        self.type: T = entry.info.ggml_type
        self.shape = entry.info.shape          # numpy order: (rows, cols) for matrices
        self.data = g.data(entry)              # uint8 view of the mapped file

    @property
    def rows(self) -> int:
        """Rows of the matrix the engine sees: a 3-D tensor (experts stacked) is its experts' rows one after the other."""
        return int(np.prod(self.shape[:-1], dtype=np.int64)) if len(self.shape) > 1 else 1

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
    n_expert: int = 0        # mixture of experts: experts per layer, used per token, width of one
    n_expert_used: int = 0
    n_ff_exp: int = 0
    n_swa: int = 0           # sliding window of the sliding layers (0: none), their period, their rope base and scale
    swa_period: int = 0
    rope_base_swa: float = 10000.0
    rope_freq_scale_swa: float = 1.0
    rope_attn_factor: float = 1.0  # cos/sin scale (LongRoPE), and the context beyond which its long factors apply
    n_ctx_orig: int = 0
    attn_scale: float = 0.0  # q·k scale
    attn_softcap: float = 0.0  # soft-capping of attention scores and of logits (0: none)
    final_softcap: float = 0.0


def _hparams(g: GGUFFile, arch: str, recipe: archs.Recipe, n_vocab: int) -> HParams:
    """The hyper-parameters, by gguf-py's key names for `arch`."""
    def get(key: str, default=None):
        v = g.value(key.format(arch=arch), default)
        if v is None:
            raise UserError(f"{g.path.name}: missing {key.format(arch=arch)}")
        return v.item() if isinstance(v, np.generic) else v

    n_embd, n_head = int(get(Keys.LLM.EMBEDDING_LENGTH)), int(get(Keys.Attention.HEAD_COUNT))
    head_dim = int(get(Keys.Attention.KEY_LENGTH, n_embd // n_head))
    scale = 1.0
    if g.value(Keys.Rope.SCALING_TYPE.format(arch=arch)) == "linear":
        scale = 1.0 / float(get(Keys.Rope.SCALING_FACTOR, 1.0))
    eps = g.value(Keys.Attention.LAYERNORM_RMS_EPS.format(arch=arch),
                  g.value(Keys.Attention.LAYERNORM_EPS.format(arch=arch)))
    if eps is None:
        raise UserError(f"{g.path.name}: missing the norm epsilon of {arch}")
    n_ff = int(get(Keys.LLM.FEED_FORWARD_LENGTH))
    n_expert = int(get(Keys.LLM.EXPERT_COUNT, 0))
    extra: dict[str, object] = {}
    if n_expert:
        extra = dict(n_expert=n_expert, n_expert_used=int(get(Keys.LLM.EXPERT_USED_COUNT)),
                       n_ff_exp=int(get(Keys.LLM.EXPERT_FEED_FORWARD_LENGTH, n_ff)))
    for field, key, default in (("attn_softcap", Keys.LLM.ATTN_LOGIT_SOFTCAPPING, recipe.attn_softcap),
                                ("final_softcap", Keys.LLM.FINAL_LOGIT_SOFTCAPPING, recipe.final_softcap)):
        if default is None and g.value(key.format(arch=arch)) is not None:
            raise UserError(f"{g.path.name}: {key.format(arch=arch)} (logit soft-capping) is not supported for {arch}")
        cap = float(get(key, default)) if default is not None else 0.0
        if not 0.0 <= cap < float("inf"):
            raise UserError(f"{g.path.name}: {key.format(arch=arch)} must be a finite number ≥ 0, got {cap}")
        extra[field] = cap
    scaling = g.value(Keys.Rope.SCALING_TYPE.format(arch=arch))
    if scaling not in (None, "none", "linear"):
        raise UserError(f"{g.path.name}: rope scaling {scaling!r} is not supported (supported: linear)")
    if n_expert < 0 or n_expert > 1024:
        raise UserError(f"{g.path.name}: expert_count {n_expert} is out of range")
    # sliding windows only where the architecture has sliding layers (llama.cpp ignores the key elsewhere)
    n_swa = int(get(Keys.Attention.SLIDING_WINDOW, 0)) if recipe.swa_period else 0
    if n_swa:
        pattern = g.value(Keys.Attention.SLIDING_WINDOW_PATTERN.format(arch=arch), recipe.swa_period)
        if not isinstance(pattern, (int, np.integer)):
            raise UserError(f"{g.path.name}: a per-layer sliding-window pattern is not supported")
        extra.update(n_swa=n_swa, swa_period=int(pattern))
    rope_base = float(get(Keys.Rope.FREQ_BASE, 10000.0))
    # sliding layers rotate as the others, or with llama.cpp's defaults for them (base 10000, no frequency scaling)
    swa_base, swa_scale = (rope_base, scale) if recipe.swa_rope_shared else (10000.0, 1.0)
    n_ctx_train, n_layer = int(get(Keys.LLM.CONTEXT_LENGTH)), int(get(Keys.LLM.BLOCK_COUNT))
    query_dim = recipe.query_scale_dim(n_layer, n_embd, n_head, head_dim)
    return HParams(
        arch=arch, n_vocab=n_vocab, n_ctx_train=n_ctx_train, n_embd=n_embd,
        n_layer=n_layer, n_head=n_head, n_head_kv=int(get(Keys.Attention.HEAD_COUNT_KV, n_head)),
        n_ff=n_ff // 2 if recipe.ffn_halved else n_ff, head_dim=head_dim,
        n_rot=int(get(Keys.Rope.DIMENSION_COUNT, head_dim)), rope_base=rope_base, rope_freq_scale=scale,
        rope_base_swa=float(get(Keys.Rope.FREQ_BASE_SWA, swa_base)), rope_freq_scale_swa=swa_scale,
        eps=float(eps), rope_attn_factor=float(get(Keys.Rope.SCALING_ATTN_FACTOR, 1.0)),
        n_ctx_orig=int(get(Keys.Rope.SCALING_ORIG_CTX_LEN, n_ctx_train)),
        attn_scale=float(1.0 / np.sqrt(np.float32(query_dim))) if query_dim > 0 else 0.0, **extra)


class Model:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.gguf = GGUFFile(self.path, populate=True)
        arch = self.gguf.value(Keys.General.ARCHITECTURE)
        try:
            self.recipe = archs.recipe(arch)
        except UserError:
            self.gguf.close()
            raise
        tokens = self.gguf.value(Keys.Tokenizer.LIST)
        if tokens is None:
            raise UserError(f"{self.path.name} has no tokenizer (tokenizer.ggml.tokens)")
        self.weights = {e.info.name: Weight(self.gguf, e) for e in self.gguf.tensors}
        self.hp = _hparams(self.gguf, arch, self.recipe, len(tokens))
        for t in self.weights.values():
            if int(t.type) not in native.TRAITS:
                raise UserError(f"tensor {t.name} has type {t.type.name}, which the runtime does not support")

    def close(self) -> None:
        self.weights.clear()
        self.gguf.close()
