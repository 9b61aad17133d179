"""A small, readable float64 reference forward pass for CodeShell (transformers has no class for it).

Used by the tests as the oracle for converted CodeShell models:

    logits = codeshell_logits(folder, token_ids)   # np.ndarray [n_tokens, vocab], float32
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def load_codeshell_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a HF checkpoint folder (safetensors or .bin, single or sharded), as float64."""
    folder = Path(folder)
    files: list[Path]
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            files = [folder / f for f in sorted(set(weight_map.values()))]
            break
    else:
        files = [p for p in (folder / "model.safetensors", folder / "pytorch_model.bin") if p.is_file()][:1]
    if not files:
        raise FileNotFoundError(f"no weights in {folder}")
    weights: dict[str, torch.Tensor] = {}
    for path in files:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            part = load_file(str(path))
        else:
            part = torch.load(path, map_location="cpu", weights_only=True)
        weights.update({name: t.to(torch.float64) for name, t in part.items()})
    return weights


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def codeshell_logits(folder: Path, token_ids: list[int], gelu_fp16_table: bool = False) -> np.ndarray:
    """Logits [n, vocab]. `gelu_fp16_table` rounds the GELU input and output through fp16, as ggml's CPU GELU does
    (it looks values up in a table indexed by the fp16 bits), for comparisons with llama.cpp."""
    folder = Path(folder)
    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if cfg.get("position_embedding_type", "rope") != "rope":
        raise NotImplementedError("only rope CodeShell models are supported")
    if cfg.get("activation_function", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
        raise NotImplementedError(cfg["activation_function"])
    W = load_codeshell_weights(folder)

    E, n_head, n_layer = cfg["n_embd"], cfg["n_head"], cfg["n_layer"]
    groups = cfg["num_query_groups"] if cfg.get("group_query_attention", False) else n_head
    hd = E // n_head
    kv = groups * hd
    eps = cfg["layer_norm_epsilon"]
    n = len(token_ids)

    # rotary tables (NEOX / rotate-half over the whole head)
    pos = torch.arange(n, dtype=torch.float64)
    scaling = cfg.get("rope_scaling")
    if scaling:
        if scaling.get("type", scaling.get("rope_type")) != "linear":
            raise NotImplementedError(f"rope_scaling {scaling}")
        pos = pos / float(scaling["factor"])
    base = float(cfg.get("rope_theta", 10000.0))
    inv_freq = 1.0 / base ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    angles = torch.outer(pos, inv_freq)  # [n, hd/2]
    cos = torch.cat((angles, angles), dim=-1).cos()[:, None, :]  # [n, 1, hd]
    sin = torch.cat((angles, angles), dim=-1).sin()[:, None, :]

    def layer_norm(x: torch.Tensor, prefix: str) -> torch.Tensor:
        return F.layer_norm(x, (E,), W[prefix + ".weight"], W[prefix + ".bias"], eps)

    def linear(x: torch.Tensor, prefix: str) -> torch.Tensor:
        return x @ W[prefix + ".weight"].T + W[prefix + ".bias"]

    wte = W.get("transformer.wte.weight", W["lm_head.weight"])  # phantom wte: tied to lm_head
    h = wte[torch.tensor(token_ids, dtype=torch.long)]  # [n, E]
    causal = torch.ones(n, n, dtype=torch.bool).tril()

    for i in range(n_layer):
        p = f"transformer.h.{i}"
        qkv = linear(layer_norm(h, p + ".ln_1"), p + ".attn.c_attn")
        q = qkv[:, :E].reshape(n, n_head, hd)
        k = qkv[:, E : E + kv].reshape(n, groups, hd)
        v = qkv[:, E + kv :].reshape(n, groups, hd)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        # query head j attends with kv head j // (n_head / groups)
        rep = n_head // groups
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd)
        scores = scores.masked_fill(~causal, float("-inf"))
        attn = torch.einsum("hqk,khd->qhd", scores.softmax(dim=-1), v).reshape(n, E)
        h = h + linear(attn, p + ".attn.c_proj")
        m = linear(layer_norm(h, p + ".ln_2"), p + ".mlp.c_fc")
        if gelu_fp16_table:
            m = F.gelu(m.half().to(m.dtype), approximate="tanh").half().to(m.dtype)
        else:
            m = F.gelu(m, approximate="tanh")
        h = h + linear(m, p + ".mlp.c_proj")

    h = layer_norm(h, "transformer.ln_f")
    logits = h @ W["lm_head.weight"].T
    return logits.to(torch.float32).numpy()
