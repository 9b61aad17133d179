"""The decoder-only forward pass, described to the native core by name.

What differs between architectures is the model's recipe (archs/: the norm, the rope layout, the feed-forward block);
fused or separate q/k/v, biases, q/k norms, rope frequency factors and tied embeddings follow from the tensors the file
has. The whole pass — norms, matrix products on the stored weight types, rope, attention over the KV cache,
activations — runs in one native call per batch (native/engine.c); Python only hands over the token ids and gets the
logits back.
"""
from __future__ import annotations

import numpy as np

import native
from runtime.model import HParams, Model
from common.errors import UserError

# the KV cache's element types by llama.cpp's names (-ctk / -ctv) → their ggml type ids in the core's type table
CACHE_TYPES = {name: t for t, (name, _, _) in native.TRAITS.items() if name in ("f32", "f16", "q8_0", "q4_0")}


def check_cache_types(hp: HParams, *types: str) -> None:
    """Refuse a cache type the engine does not have, or a quantized one whose 32-element blocks do not tile a head."""
    for t in types:
        if t not in CACHE_TYPES:
            raise UserError(f"unknown KV cache type {t!r} (-ctk/-ctv); use one of: {', '.join(CACHE_TYPES)}")
        if t.startswith("q") and hp.head_dim % 32:
            raise UserError(f"a {t} KV cache needs heads of a multiple of 32 elements; this model's have "
                            f"{hp.head_dim}: use f16 or f32")


def kv_cache_bytes(hp: HParams, n_ctx: int, cache_type: str, cache_type_v: str | None = None) -> int:
    """The bytes of a KV cache of n_ctx positions: keys (cache_type) and values (cache_type_v, default the same) of
    every layer (Python integers: no overflow)."""
    check_cache_types(hp, cache_type, cache_type_v or cache_type)
    kv_dim = hp.n_head_kv * hp.head_dim
    row = native.row_size(CACHE_TYPES[cache_type], kv_dim) + native.row_size(CACHE_TYPES[cache_type_v or cache_type],
                                                                            kv_dim)
    return hp.n_layer * n_ctx * row


class KVCache:
    """Keys and values of every layer for positions 0..n_ctx-1, stored as f32, f16, q8_0 or q4_0 (keys and values each
    their own); `n` positions are filled."""

    def __init__(self, net: "Transformer", n_ctx: int, cache_type: str = "f16", cache_type_v: str | None = None):
        nbytes = kv_cache_bytes(net.hp, n_ctx, cache_type, cache_type_v)
        try:
            self.kv = native.kv_new(net.engine, n_ctx, CACHE_TYPES[cache_type], CACHE_TYPES[cache_type_v or cache_type])
        except MemoryError:
            raise UserError(f"a KV cache of {n_ctx} positions ({nbytes / 2**30:.1f} GiB) cannot be allocated: "
                            "out of memory") from None
        self.n_ctx, self.cache_type, self.cache_type_v = n_ctx, cache_type, cache_type_v or cache_type
        self.n = 0

    def truncate(self, n: int) -> None:
        self.n = min(self.n, n)


def engine_description(model: Model) -> dict[str, object]:
    """The model's recipe and hyper-parameters as native.engine_new takes them (engine.h's struct tk_hparams)."""
    hp, recipe = model.hp, model.recipe
    return {
        "norm": recipe.norm, "rope": recipe.rope, "ffn": recipe.ffn,
        "n_vocab": hp.n_vocab, "n_embd": hp.n_embd, "n_layer": hp.n_layer, "n_head": hp.n_head,
        "n_head_kv": hp.n_head_kv, "head_dim": hp.head_dim, "n_ff": hp.n_ff, "n_rot": hp.n_rot,
        "rope_base": hp.rope_base, "rope_freq_scale": hp.rope_freq_scale, "eps": hp.eps,
        "n_expert": hp.n_expert, "n_expert_used": hp.n_expert_used, "n_ff_exp": hp.n_ff_exp,
        "n_swa": hp.n_swa, "swa_period": hp.swa_period, "rope_base_swa": hp.rope_base_swa,
        "rope_freq_scale_swa": hp.rope_freq_scale_swa, "rope_attn_factor": hp.rope_attn_factor,
        "n_ctx_orig": hp.n_ctx_orig, "attn_scale": hp.attn_scale, "attn_softcap": hp.attn_softcap,
        "final_softcap": hp.final_softcap,
        "embd_scale": float(np.sqrt(np.float32(hp.n_embd))) if recipe.embd_scaled else 1.0,
    }


def engine_tensors(model: Model) -> list[tuple[str, np.ndarray, int, int, int]]:
    """The model's tensors as native.engine_new takes them: (name, data, ggml type, rows, cols)."""
    return [(w.name, w.data, int(w.type), w.rows, w.cols) for w in model.weights.values()]


class Transformer:
    def __init__(self, model: Model, nthreads: int):
        self.model, self.hp, self.nthreads = model, model.hp, nthreads
        try:
            self.engine = native.engine_new(engine_description(model), engine_tensors(model))
        except ValueError as e:
            raise UserError(f"{model.path.name}: {e}") from None

    def new_cache(self, n_ctx: int, cache_type: str = "f16", cache_type_v: str | None = None) -> KVCache:
        return KVCache(self, n_ctx, cache_type, cache_type_v)

    def forward(self, tokens, cache: KVCache, all_logits: bool = False) -> np.ndarray:
        """Run `tokens` at positions cache.n.. ; returns logits [n, vocab] (or [1, vocab] for the last token)."""
        return self.forward_batch([(tokens, cache, all_logits)])[0]

    def hidden(self, tokens, cache: KVCache) -> np.ndarray:
        """Run `tokens` at positions cache.n.. ; returns every token's hidden state after the output norm [n, n_embd]
        (what llama.cpp's embeddings read; the output matrix is not run)."""
        return self.forward_batch([(tokens, cache, False, True)])[0]

    def forward_batch(self, batch: list[tuple]) -> list[np.ndarray]:
        """Several sequences in one native pass, each (tokens, its own cache, all_logits) as `forward` takes them, or
        (tokens, cache, all_logits, True) for the hidden states as `hidden` returns them instead of logits, or
        (tokens, cache, True, False, skip) for the logits of all tokens but the first `skip`; the products read the
        weights once for all, and each sequence's results are the bits a pass of its own gives."""
        seqs = []
        for tokens, cache, all_logits, *rest in batch:
            hidden, skip = (list(rest) + [False, 0])[:2]
            n, pos0 = len(tokens), cache.n
            if pos0 + n > cache.n_ctx:
                raise ValueError(f"context full: {pos0} + {n} tokens > n_ctx {cache.n_ctx}")
            tokens = np.ascontiguousarray(tokens, dtype=np.int32)
            if hidden:
                seqs.append(native.Seq(cache.kv, tokens, pos0, None, embd=np.empty((n, self.hp.n_embd), np.float32)))
            else:
                out = np.empty((n - skip if all_logits else 1, self.hp.n_vocab), dtype=np.float32)
                seqs.append(native.Seq(cache.kv, tokens, pos0, out, all_logits, skip_logits=skip))
        native.forward_batch(self.engine, seqs, self.nthreads)
        for (tokens, cache, *_), seq in zip(batch, seqs):
            cache.n = seq.pos0 + len(tokens)
        return [seq.logits if seq.embd is None else seq.embd for seq in seqs]
