"""Qwen1 (Qwen-7B/14B/72B-Chat, `QWenLMHeadModel`) → GGUF `qwen`: RMSNorm, fused q/k/v with bias, NEOX rope over the
whole head, SwiGLU written as `c_proj(w1(x) * silu(w2(x)))` (so w1 is llama.cpp's ffn_up and w2 its ffn_gate, each
ffn_hidden_size/2 wide: the GGUF's feed_forward_length is ffn_hidden_size, halved by the runtime, as llama.cpp does).
Its tokenizer is a tiktoken vocabulary (converter/vocab_tiktoken.py)."""
from __future__ import annotations

from typing import Iterator

from gguf import Keys as K

from archs.base import Architecture, Recipe, T, TensorSpec, register, tn
from common.errors import UserError


@register
class Qwen(Architecture):
    hf_classes = ("QWenLMHeadModel",)
    gguf_arch = "qwen"
    recipe = Recipe(norm="rms", rope="neox", ffn="swiglu", ffn_halved=True)

    def __init__(self, config: dict):
        super().__init__(config)
        self.n_embd = self.get_int("hidden_size", "n_embd")
        self.n_layer = self.layer_count("num_hidden_layers", "n_layer")
        self.n_head = self.get_int("num_attention_heads", "n_head")
        self.n_ff = self.get_int("intermediate_size", "ffn_hidden_size")
        self.head_dim = self.divides(self.n_embd, self.n_head, "hidden_size")
        self.divides(self.n_ff, 2, "ffn_hidden_size")
        kv_channels = self.get_int("kv_channels", default=self.head_dim)
        if kv_channels != self.head_dim:
            raise UserError(f"config.json: kv_channels {kv_channels} differs from hidden_size / num_attention_heads "
                            f"({self.head_dim}), which llama.cpp's qwen does not support")
        pct = self.get("rotary_pct", default=1.0, required=False)
        if pct != 1.0:
            raise UserError(f"config.json: rotary_pct {pct} (llama.cpp's qwen rotates the whole head)")
        self.rope_settings = self.rope(default_theta=self.get("rotary_emb_base", default=10000.0))
        if self.rope_settings["type"] != "default":
            raise UserError(f"config.json: rope type {self.rope_settings['type']!r} is not supported for qwen")

    def hparams(self) -> dict[str, object]:
        return {
            K.LLM.CONTEXT_LENGTH: self.get_int("max_position_embeddings", "n_positions"),
            K.LLM.EMBEDDING_LENGTH: self.n_embd,
            K.LLM.BLOCK_COUNT: self.n_layer,
            K.LLM.FEED_FORWARD_LENGTH: self.n_ff,
            K.Rope.FREQ_BASE: self.rope_settings["theta"],
            K.Attention.HEAD_COUNT: self.n_head,
            K.Attention.LAYERNORM_RMS_EPS: self.get_float("layer_norm_epsilon"),
        }

    def tensors(self, available: set[str]) -> Iterator[TensorSpec]:
        E, V, F = self.n_embd, self.vocab_size, self.n_ff // 2
        yield TensorSpec(tn(T.TOKEN_EMBD), "transformer.wte.weight", (V, E))
        for i in range(self.n_layer):
            p = f"transformer.h.{i}."
            yield TensorSpec(tn(T.ATTN_NORM, i), p + "ln_1.weight", (E,))
            yield TensorSpec(tn(T.ATTN_QKV, i), p + "attn.c_attn.weight", (3 * E, E))
            yield TensorSpec(tn(T.ATTN_QKV, i, "bias"), p + "attn.c_attn.bias", (3 * E,))
            yield TensorSpec(tn(T.ATTN_OUT, i), p + "attn.c_proj.weight", (E, E))
            yield TensorSpec(tn(T.FFN_NORM, i), p + "ln_2.weight", (E,))
            yield TensorSpec(tn(T.FFN_UP, i), p + "mlp.w1.weight", (F, E))
            yield TensorSpec(tn(T.FFN_GATE, i), p + "mlp.w2.weight", (F, E))
            yield TensorSpec(tn(T.FFN_DOWN, i), p + "mlp.c_proj.weight", (E, F))
        yield TensorSpec(tn(T.OUTPUT_NORM), "transformer.ln_f.weight", (E,))
        yield TensorSpec(tn(T.OUTPUT), "lm_head.weight", (V, E))
