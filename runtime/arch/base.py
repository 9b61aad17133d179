"""The decoder-only forward pass shared by every architecture, written once and readable top to bottom.

An architecture subclass only declares what differs: the norm (RMS or LayerNorm), how q/k/v are produced (separate or
fused, with or without biases), the rope layout (adjacent pairs, NEOX halves, or none with learned positions) and the
feed-forward block (SwiGLU or GELU). Matrix products run in the native core on the stored weight types; the rest is
numpy on small activations.
"""
from __future__ import annotations

import math

import numpy as np

from runtime.model import HParams, Model, Weight


class KVCache:
    """Keys and values of every layer for positions 0..n-1 (float32)."""

    def __init__(self, hp: HParams, n_ctx: int):
        shape = (hp.n_layer, n_ctx, hp.n_head_kv, hp.head_dim)
        self.k = np.zeros(shape, dtype=np.float32)
        self.v = np.zeros(shape, dtype=np.float32)
        self.n_ctx = n_ctx
        self.n = 0  # positions filled

    def truncate(self, n: int) -> None:
        self.n = min(self.n, n)


def rms_norm(x, w, b, eps):
    y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    return y * w


def layer_norm(x, w, b, eps):
    mean = x.mean(axis=-1, keepdims=True)
    d = x - mean
    y = d / np.sqrt(np.mean(d * d, axis=-1, keepdims=True) + eps)
    return y * w + b


def gelu(x):
    """GELU, tanh approximation (GPT-2's gelu_new, PyTorch's gelu(approximate='tanh'))."""
    return 0.5 * x * (1.0 + np.tanh(np.float32(math.sqrt(2.0 / math.pi)) * (x + np.float32(0.044715) * x * x * x)))


def silu(x):
    return x / (1.0 + np.exp(-x))


def rope_tables(hp: HParams, positions: np.ndarray):
    """cos/sin [n, n_rot/2] for the given positions (linear scaling applied)."""
    i = np.arange(hp.n_rot // 2, dtype=np.float64)
    inv_freq = hp.rope_base ** (-2.0 * i / hp.n_rot)
    angles = (positions.astype(np.float64) * hp.rope_freq_scale)[:, None] * inv_freq[None, :]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def rope_pairs(x, cos, sin, n_rot):
    """llama.cpp's NORM rope: rotates adjacent pairs (x[2i], x[2i+1]). x [n, heads, head_dim]."""
    r = x[..., :n_rot]
    a, b = r[..., 0::2], r[..., 1::2]
    c, s = cos[:, None, :], sin[:, None, :]
    out = x.copy()
    out[..., 0:n_rot:2] = a * c - b * s
    out[..., 1:n_rot:2] = a * s + b * c
    return out


def rope_neox(x, cos, sin, n_rot):
    """NEOX rope (Hugging Face's rotate-half): rotates (x[i], x[i + n_rot/2])."""
    half = n_rot // 2
    a, b = x[..., :half], x[..., half:n_rot]
    c, s = cos[:, None, :], sin[:, None, :]
    out = x.copy()
    out[..., :half] = a * c - b * s
    out[..., half:n_rot] = a * s + b * c
    return out


def attention(q, k, v, pos0):
    """Causal grouped-query attention. q [n, H, d]; k, v [pos0+n, Hkv, d] → [n, H*d]."""
    n, n_head, d = q.shape
    group = n_head // k.shape[1]
    qg = q.reshape(n, k.shape[1], group, d).transpose(1, 2, 0, 3)       # [Hkv, g, n, d]
    kt = k.transpose(1, 2, 0)                                             # [Hkv, d, T]
    scores = (qg @ kt[:, None]) * np.float32(1.0 / math.sqrt(d))          # [Hkv, g, n, T]
    t = np.arange(k.shape[0])[None, :]
    future = t > (pos0 + np.arange(n))[:, None]
    scores = np.where(future, np.float32(-np.inf), scores)
    scores = scores - scores.max(axis=-1, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(axis=-1, keepdims=True)
    out = p @ v.transpose(1, 0, 2)[:, None]                               # [Hkv, g, n, d]
    return out.transpose(2, 0, 1, 3).reshape(n, n_head * d)


class Transformer:
    norm = staticmethod(rms_norm)
    rope = staticmethod(rope_pairs)   # or rope_neox, or None (learned positions)
    ffn_kind = "swiglu"               # or "gelu"

    def __init__(self, model: Model, nthreads: int):
        self.model, self.hp, self.nthreads = model, model.hp, nthreads
        m = model
        self.layers = []
        for i in range(self.hp.n_layer):
            p = f"blk.{i}."
            self.layers.append({
                "attn_norm": m.vector(p + "attn_norm.weight"), "attn_norm_b": m.vector(p + "attn_norm.bias"),
                "ffn_norm": m.vector(p + "ffn_norm.weight"), "ffn_norm_b": m.vector(p + "ffn_norm.bias"),
                "wqkv": m.optional(p + "attn_qkv.weight"), "bqkv": m.vector(p + "attn_qkv.bias"),
                "wq": m.optional(p + "attn_q.weight"), "bq": m.vector(p + "attn_q.bias"),
                "wk": m.optional(p + "attn_k.weight"), "bk": m.vector(p + "attn_k.bias"),
                "wv": m.optional(p + "attn_v.weight"), "bv": m.vector(p + "attn_v.bias"),
                "wo": m.weight(p + "attn_output.weight"), "bo": m.vector(p + "attn_output.bias"),
                "w_gate": m.optional(p + "ffn_gate.weight"),
                "w_up": m.weight(p + "ffn_up.weight"), "b_up": m.vector(p + "ffn_up.bias"),
                "w_down": m.weight(p + "ffn_down.weight"), "b_down": m.vector(p + "ffn_down.bias"),
            })
        self.out_norm, self.out_norm_b = m.vector("output_norm.weight"), m.vector("output_norm.bias")
        self.pos_embd = m.optional("position_embd.weight")

    # -- building blocks ------------------------------------------------------------------------------------------
    def linear(self, w: Weight, b, x):
        y = w.matmul(x, self.nthreads)
        return y + b if b is not None else y

    def qkv(self, L, h):
        hp, n = self.hp, h.shape[0]
        if L["wqkv"] is not None:
            qkv = self.linear(L["wqkv"], L["bqkv"], h)
            q_dim, kv_dim = hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim
            q, k, v = qkv[:, :q_dim], qkv[:, q_dim:q_dim + kv_dim], qkv[:, q_dim + kv_dim:]
        else:
            q, k, v = (self.linear(L["wq"], L["bq"], h), self.linear(L["wk"], L["bk"], h),
                       self.linear(L["wv"], L["bv"], h))
        return (q.reshape(n, hp.n_head, hp.head_dim), k.reshape(n, hp.n_head_kv, hp.head_dim),
                v.reshape(n, hp.n_head_kv, hp.head_dim))

    def ffn(self, L, h):
        if self.ffn_kind == "swiglu":
            return self.linear(L["w_down"], L["b_down"],
                               silu(self.linear(L["w_gate"], None, h)) * self.linear(L["w_up"], L["b_up"], h))
        return self.linear(L["w_down"], L["b_down"], gelu(self.linear(L["w_up"], L["b_up"], h)))

    # -- the forward pass -----------------------------------------------------------------------------------------
    def forward(self, tokens, cache: KVCache, all_logits: bool = False) -> np.ndarray:
        """Run `tokens` at positions cache.n.. ; returns logits [n, vocab] (or [1, vocab] for the last token)."""
        hp, eps, n, pos0 = self.hp, self.hp.eps, len(tokens), cache.n
        if pos0 + n > cache.n_ctx:
            raise ValueError(f"context full: {pos0} + {n} tokens > n_ctx {cache.n_ctx}")
        positions = np.arange(pos0, pos0 + n)
        x = self.model.token_embd.get_rows(tokens)
        if self.rope is None:
            x = x + self.pos_embd.get_rows(positions)
        else:
            cos, sin = rope_tables(hp, positions)
        for il, L in enumerate(self.layers):
            h = self.norm(x, L["attn_norm"], L["attn_norm_b"], eps)
            q, k, v = self.qkv(L, h)
            if self.rope is not None:
                q, k = self.rope(q, cos, sin, hp.n_rot), self.rope(k, cos, sin, hp.n_rot)
            cache.k[il, pos0:pos0 + n] = k
            cache.v[il, pos0:pos0 + n] = v
            a = attention(q, cache.k[il, :pos0 + n], cache.v[il, :pos0 + n], pos0)
            x = x + self.linear(L["wo"], L["bo"], a)
            x = x + self.ffn(L, self.norm(x, L["ffn_norm"], L["ffn_norm_b"], eps))
        cache.n = pos0 + n
        if not all_logits:
            x = x[-1:]
        x = self.norm(x, self.out_norm, self.out_norm_b, eps)
        return self.model.output.matmul(np.ascontiguousarray(x, dtype=np.float32), self.nthreads)
