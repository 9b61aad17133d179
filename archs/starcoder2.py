"""StarCoder2 → GGUF `starcoder2`: LayerNorm with bias, separate q/k/v/o with biases and grouped-query attention, NEOX
rope, a GELU feed-forward without gate (c_fc, c_proj, biases), tied output."""
from __future__ import annotations

from typing import Iterator

from gguf import Keys as K

from archs.base import Architecture, Recipe, T, TensorSpec, register, tn
from common.errors import UserError


@register
class StarCoder2(Architecture):
    hf_classes = ("Starcoder2ForCausalLM",)
    gguf_arch = "starcoder2"
    recipe = Recipe(norm="layer", rope="neox", ffn="gelu")

    def __init__(self, config: dict):
        super().__init__(config)
        self.standard_sizes()
        if self.head_dim * self.n_head != self.n_embd:
            raise UserError("config.json: head_dim × num_attention_heads must be hidden_size for starcoder2")
        self.bias = bool(self.get("use_bias", default=True, required=False))
        self.tied = bool(self.get("tie_word_embeddings", default=True, required=False))
        self.rope_settings = self.rope()
        if self.rope_settings["type"] != "default":
            raise UserError(f"config.json: rope type {self.rope_settings['type']!r} is not supported for starcoder2")
        act = self.get("hidden_act", default="gelu_pytorch_tanh", required=False)
        if act not in ("gelu_pytorch_tanh", "gelu_new"):
            raise UserError(f"config.json: hidden_act {act!r} (llama.cpp's starcoder2 uses the tanh GELU)")

    def hparams(self) -> dict[str, object]:
        hp = {
            K.LLM.CONTEXT_LENGTH: self.get_int("max_position_embeddings"),
            K.LLM.EMBEDDING_LENGTH: self.n_embd,
            K.LLM.FEED_FORWARD_LENGTH: self.n_ff,
            K.LLM.BLOCK_COUNT: self.n_layer,
            K.Attention.HEAD_COUNT: self.n_head,
            K.Attention.HEAD_COUNT_KV: self.n_head_kv,
            K.Attention.LAYERNORM_EPS: self.get_float("norm_epsilon", "layer_norm_epsilon"),
        }
        hp.update(self.rope_hparams(self.rope_settings))
        return hp

    def tensors(self, available: set[str]) -> Iterator[TensorSpec]:
        E, V, F = self.n_embd, self.vocab_size, self.n_ff
        kv = self.n_head_kv * self.head_dim
        yield TensorSpec(tn(T.TOKEN_EMBD), "model.embed_tokens.weight", (V, E))
        for i in range(self.n_layer):
            p = f"model.layers.{i}."
            parts = ((T.ATTN_NORM, "input_layernorm", E, None), (T.ATTN_Q, "self_attn.q_proj", E, E),
                     (T.ATTN_K, "self_attn.k_proj", kv, E), (T.ATTN_V, "self_attn.v_proj", kv, E),
                     (T.ATTN_OUT, "self_attn.o_proj", E, E), (T.FFN_NORM, "post_attention_layernorm", E, None),
                     (T.FFN_UP, "mlp.c_fc", F, E), (T.FFN_DOWN, "mlp.c_proj", E, F))
            for tensor, hf, rows, cols in parts:
                yield TensorSpec(tn(tensor, i), p + hf + ".weight", (rows,) if cols is None else (rows, cols))
                if self.bias or cols is None:  # LayerNorms always have their bias
                    yield TensorSpec(tn(tensor, i, "bias"), p + hf + ".bias", (rows,))
        yield TensorSpec(tn(T.OUTPUT_NORM), "model.norm.weight", (E,))
        yield TensorSpec(tn(T.OUTPUT_NORM, None, "bias"), "model.norm.bias", (E,))
        if "lm_head.weight" in available or not self.tied:
            yield TensorSpec(tn(T.OUTPUT), "lm_head.weight", (V, E))
