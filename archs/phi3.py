"""Phi-3 and Phi-3.5 (Phi3ForCausalLM: the mini models) → GGUF `phi3`: q/k/v fused in one matrix, the feed-forward's gate
and up fused in one (ffn_up of twice the width: the gate first), NEOX rope, possibly over part of each head, and
LongRoPE for the long-context models: per-pair frequency factors for long and short contexts (the long ones once the
context exceeds the trained one, as llama.cpp picks them) with cos and sin scaled by an attention factor. llama.cpp
runs phi3 without sliding windows; so does the runtime."""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np
from gguf import Keys as K

from archs.base import Architecture, Recipe, T, TensorSpec, register, tn
from common.errors import UserError


@register
class Phi3(Architecture):
    hf_classes = ("Phi3ForCausalLM",)
    gguf_arch = "phi3"
    recipe = Recipe(norm="rms", rope="neox", ffn="swiglu", chat_format="phi3")
    partial_rotary = True

    def __init__(self, config: dict):
        super().__init__(config)
        self.standard_sizes()
        self.rope_settings = rope = self.rope()
        if rope["type"] not in ("default", "longrope"):
            raise UserError(f"config.json: rope type {rope['type']!r} is not supported for phi3 "
                            "(supported: default, longrope)")
        self.n_ctx = self.get_int("max_position_embeddings")
        # transformers reads the trained context from the top level first (Phi-3 keeps it there), then rope's entry
        self.n_ctx_orig = self.get_int("original_max_position_embeddings",
                                       default=rope.get("original_max_position_embeddings", self.n_ctx))
        if rope["type"] == "longrope" and self.n_ctx_orig < 2:  # LongRoPE's attention factor divides by its log
            raise UserError(f"config.json: original_max_position_embeddings {self.n_ctx_orig} (LongRoPE needs a "
                            "trained context of at least 2)")
        self.n_rot = int(rope["partial"] * self.n_embd) // self.n_head  # as llama.cpp's converter counts it
        if self.n_rot != int(self.head_dim * rope["partial"]) or self.n_rot % 2:
            raise UserError(f"config.json: partial_rotary_factor {rope['partial']} does not turn a whole number of "
                            "pairs of each head")
        if rope["type"] == "longrope":
            for key in ("long_factor", "short_factor"):
                if len(rope[key]) != self.n_rot // 2:
                    raise UserError(f"config.json: rope {key} has {len(rope[key])} numbers, not {self.n_rot // 2} "
                                    "(one per rotated pair)")
        self.tied = bool(self.get("tie_word_embeddings", default=False, required=False))

    def attn_factor(self) -> float:
        """LongRoPE's scale of cos and sin, as transformers computes it: the config's attention_factor, else
        sqrt(1 + ln(factor) / ln(trained context)) with factor the config's or max / trained context."""
        rope = self.rope_settings
        if "attention_factor" in rope:
            return rope["attention_factor"]
        factor = rope.get("factor", self.n_ctx / self.n_ctx_orig)
        return math.sqrt(1 + math.log(factor) / math.log(self.n_ctx_orig)) if factor > 1 else 1.0

    def hparams(self) -> dict[str, object]:
        hp = {
            K.LLM.CONTEXT_LENGTH: self.n_ctx,
            K.Rope.SCALING_ORIG_CTX_LEN: self.n_ctx_orig,
            K.LLM.EMBEDDING_LENGTH: self.n_embd,
            K.LLM.FEED_FORWARD_LENGTH: self.n_ff,
            K.LLM.BLOCK_COUNT: self.n_layer,
            K.Attention.HEAD_COUNT: self.n_head,
            K.Attention.HEAD_COUNT_KV: self.n_head_kv,
            K.Attention.LAYERNORM_RMS_EPS: self.get_float("rms_norm_eps"),
            K.Rope.DIMENSION_COUNT: self.n_rot,
            K.Rope.FREQ_BASE: self.rope_settings["theta"],
            K.Attention.SLIDING_WINDOW: self.get_count("sliding_window"),
        }
        if self.rope_settings["type"] == "longrope":
            hp[K.Rope.SCALING_ATTN_FACTOR] = self.attn_factor()
        return hp

    def tensors(self, available: set[str]) -> Iterator[TensorSpec]:
        E, V, F, hd = self.n_embd, self.vocab_size, self.n_ff, self.head_dim
        q, kv = self.n_head * hd, self.n_head_kv * hd
        yield TensorSpec(tn(T.TOKEN_EMBD), "model.embed_tokens.weight", (V, E))
        rope = self.rope_settings
        if rope["type"] == "longrope":
            for tensor, key in ((T.ROPE_FACTORS_LONG, "long_factor"), (T.ROPE_FACTORS_SHORT, "short_factor")):
                yield TensorSpec(tn(tensor), f"(rope {key})", (self.n_rot // 2,),
                                 values=np.asarray(rope[key], dtype=np.float32))
        for i in range(self.n_layer):
            p = f"model.layers.{i}."
            yield TensorSpec(tn(T.ATTN_NORM, i), p + "input_layernorm.weight", (E,))
            yield TensorSpec(tn(T.ATTN_QKV, i), p + "self_attn.qkv_proj.weight", (q + 2 * kv, E))
            yield TensorSpec(tn(T.ATTN_OUT, i), p + "self_attn.o_proj.weight", (E, q))
            yield TensorSpec(tn(T.FFN_NORM, i), p + "post_attention_layernorm.weight", (E,))
            yield TensorSpec(tn(T.FFN_UP, i), p + "mlp.gate_up_proj.weight", (2 * F, E))
            yield TensorSpec(tn(T.FFN_DOWN, i), p + "mlp.down_proj.weight", (E, F))
        yield TensorSpec(tn(T.OUTPUT_NORM), "model.norm.weight", (E,))
        if "lm_head.weight" in available or not self.tied:
            yield TensorSpec(tn(T.OUTPUT), "lm_head.weight", (V, E))
