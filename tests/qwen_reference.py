"""A small, readable float64 reference forward pass for Qwen1 (``QWenLMHeadModel``, remote code modeling_qwen.py).

Used by the tests as the oracle for converted Qwen1 models (transformers has no built-in class for them):

    logits = qwen1_logits(folder, token_ids)   # np.ndarray [n_tokens, vocab], float32

Written from the release's modeling_qwen.py (the non-flash-attention path that runs on CPU), per block:

    x = x + c_proj(attn(rope(q), rope(k), v))     q, k, v = split(c_attn(rmsnorm(x, ln_1)))  (c_attn has a bias)
    x = x + mlp.c_proj(w1(h) * silu(w2(h)))        h = rmsnorm(x, ln_2)

then ``lm_head(rmsnorm(x, ln_f))``. RMSNorm is ``x / sqrt(mean(x^2) + layer_norm_epsilon) * weight``; rotary is the
rotate-half (GPT-NeoX) form over the first ``head_dim * rotary_pct`` dimensions of each head, ``inv_freq =
rotary_emb_base ** (-arange(0, dim, 2) / dim)``, position = index in the sequence (modeling_qwen ignores
``position_ids``); attention is causal softmax(q k^T / sqrt(head_dim)) v over all heads (no GQA in Qwen1).

``use_dynamic_ntk`` and ``use_logn_attn`` (both true in the released configs) only matter past ``seq_length`` (2048):

* dynamic NTK: ``ntk_alpha = max(2 ** ceil(log2(n / seq_length) + 1) - 1, 1)``, which is 1 (base unchanged) for
  ``n <= seq_length``;
* logn attention: query i is scaled by ``log(i + 1, seq_length)`` only when ``i + 1 > seq_length``, else by 1.

So this reference implements neither and asserts ``len(token_ids) <= seq_length``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tests.codeshell_reference import load_codeshell_weights as load_weights  # generic HF weight loader, float64


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def qwen1_logits(folder: Path, ids: list[int]) -> np.ndarray:
    """Logits [len(ids), vocab_size] (float32, computed in float64) of the QWenLMHeadModel checkpoint in ``folder``."""
    folder = Path(folder)
    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    n = len(ids)
    if n == 0:
        raise ValueError("empty prompt")
    seq_length = int(cfg.get("seq_length", 2048))
    assert n <= seq_length, (
        f"prompt of {n} tokens > seq_length {seq_length}: dynamic NTK / logn attention would apply (not implemented)"
    )
    if cfg.get("pos_emb", "rotary") != "rotary":
        raise NotImplementedError(f"pos_emb={cfg['pos_emb']!r}")
    if cfg.get("apply_residual_connection_post_layernorm", False):
        raise NotImplementedError("apply_residual_connection_post_layernorm")
    W = load_weights(folder)

    E, n_head, n_layer = cfg["n_embd"], cfg["n_head"], cfg["n_layer"]
    hd = E // n_head
    assert cfg["kv_channels"] * n_head == E, "modeling_qwen needs kv_channels * n_head == n_embd"
    eps = float(cfg["layer_norm_epsilon"])
    rotary_pct = float(cfg.get("rotary_pct", 1.0))
    rot = hd if rotary_pct == 1.0 else int(hd * rotary_pct)
    base = float(cfg.get("rotary_emb_base", 10000))

    pos = torch.arange(n, dtype=torch.float64)
    inv_freq = 1.0 / base ** (torch.arange(0, rot, 2, dtype=torch.float64) / rot)
    angles = torch.outer(pos, inv_freq)  # [n, rot/2]
    emb = torch.cat((angles, angles), dim=-1)[:, None, :]  # [n, 1, rot]
    cos, sin = emb.cos(), emb.sin()

    def rope(x: torch.Tensor) -> torch.Tensor:  # x: [n, heads, hd]
        xr, xp = x[..., :rot], x[..., rot:]
        return torch.cat((xr * cos + _rotate_half(xr) * sin, xp), dim=-1)

    def rms_norm(x: torch.Tensor, name: str) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * W[name + ".weight"]

    def linear(x: torch.Tensor, prefix: str) -> torch.Tensor:
        y = x @ W[prefix + ".weight"].T
        bias = W.get(prefix + ".bias")
        return y if bias is None else y + bias

    h = W["transformer.wte.weight"][torch.tensor(ids, dtype=torch.long)]  # [n, E]
    causal = torch.ones(n, n, dtype=torch.bool).tril()

    for i in range(n_layer):
        p = f"transformer.h.{i}"
        qkv = linear(rms_norm(h, p + ".ln_1"), p + ".attn.c_attn")
        q, k, v = (t.reshape(n, n_head, hd) for t in qkv.split(E, dim=-1))
        q, k = rope(q), rope(k)
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd)
        scores = scores.masked_fill(~causal, float("-inf"))
        attn = torch.einsum("hqk,khd->qhd", scores.softmax(dim=-1), v).reshape(n, E)
        h = h + linear(attn, p + ".attn.c_proj")
        x = rms_norm(h, p + ".ln_2")
        h = h + linear(linear(x, p + ".mlp.w1") * F.silu(linear(x, p + ".mlp.w2")), p + ".mlp.c_proj")

    h = rms_norm(h, "transformer.ln_f")
    logits = h @ W.get("lm_head.weight", W["transformer.wte.weight"]).T
    return logits.to(torch.float32).numpy()
