"""Llama, Mistral and Mixtral → GGUF `llama`. llama.cpp rotates adjacent pairs, so q/k rows are permuted from HF's
rotate-half. Mixtral's feed-forward is a mixture of experts: its router (ffn_gate_inp, kept F32) and the experts'
matrices stacked into one 3-D tensor each (ffn_gate_exps, ffn_up_exps, ffn_down_exps), as llama.cpp stores them."""
from __future__ import annotations

from typing import Iterator

from gguf import Keys as K

from archs.base import (Architecture, Recipe, T, TensorSpec, llama3_rope_factors, register, rope_permutation,
                        tn)
from common.errors import UserError


@register
class Llama(Architecture):
    hf_classes = ("LlamaForCausalLM", "MistralForCausalLM", "MixtralForCausalLM")
    gguf_arch = "llama"
    recipe = Recipe(norm="rms", rope="norm", ffn="swiglu", chat_format="llama-2")
    permute_qk = True      # llama.cpp's NORM rope wants adjacent pairs
    qkv_bias_default = False
    qk_norm = False        # RMS norms of q and k per head (Qwen3)
    # a mixture-of-experts layer's checkpoint names: its module, and the gate, up and down matrices of an expert
    moe_module, expert_names = "block_sparse_moe", ("w1", "w3", "w2")
    expert_width_key: str | None = None  # config key of an expert's width when it is not intermediate_size

    def __init__(self, config: dict):
        super().__init__(config)
        self.standard_sizes()
        self.qkv_bias = bool(self.get("attention_bias", default=self.qkv_bias_default, required=False))
        self.tied = bool(self.get("tie_word_embeddings", default=False, required=False))
        self.rope_settings = self.rope()
        self.n_expert = self.get_count("num_local_experts", "num_experts")
        if self.n_expert:
            self.n_expert_used = self.get_int("num_experts_per_tok")
            if self.n_expert_used > self.n_expert:
                raise UserError("config.json: num_experts_per_tok exceeds the number of experts")
            self.n_ff_exp = self.get_int(self.expert_width_key) if self.expert_width_key else self.n_ff

    def hparams(self) -> dict[str, object]:
        hp = {
            K.LLM.VOCAB_SIZE: self.vocab_size,
            K.LLM.CONTEXT_LENGTH: self.get_int("max_position_embeddings"),
            K.LLM.EMBEDDING_LENGTH: self.n_embd,
            K.LLM.BLOCK_COUNT: self.n_layer,
            K.LLM.FEED_FORWARD_LENGTH: self.n_ff,
            K.Rope.DIMENSION_COUNT: self.head_dim,
            K.Attention.HEAD_COUNT: self.n_head,
            K.Attention.HEAD_COUNT_KV: self.n_head_kv,
            K.Attention.LAYERNORM_RMS_EPS: self.get_float("rms_norm_eps"),
        }
        hp.update(self.rope_hparams(self.rope_settings))
        if self.head_dim != self.n_embd // self.n_head or self.config.get("head_dim") is not None:
            hp[K.Attention.KEY_LENGTH] = hp[K.Attention.VALUE_LENGTH] = self.head_dim  # as llama.cpp writes them
        if self.n_expert:
            hp[K.LLM.EXPERT_COUNT] = self.n_expert
            hp[K.LLM.EXPERT_USED_COUNT] = self.n_expert_used
            if self.expert_width_key:
                hp[K.LLM.EXPERT_FEED_FORWARD_LENGTH] = self.n_ff_exp
        return hp

    def ffn_tensors(self, i: int, p: str) -> Iterator[TensorSpec]:
        E, F = self.n_embd, self.n_ff
        if not self.n_expert:
            yield TensorSpec(tn(T.FFN_GATE, i), p + "mlp.gate_proj.weight", (F, E))
            yield TensorSpec(tn(T.FFN_UP, i), p + "mlp.up_proj.weight", (F, E))
            yield TensorSpec(tn(T.FFN_DOWN, i), p + "mlp.down_proj.weight", (E, F))
            return
        m, Fe = p + self.moe_module, self.n_ff_exp
        yield TensorSpec(tn(T.FFN_GATE_INP, i), m + ".gate.weight", (self.n_expert, E), keep_f32=True)
        for tensor, name, shape in zip((T.FFN_GATE_EXP, T.FFN_UP_EXP, T.FFN_DOWN_EXP), self.expert_names,
                                       ((Fe, E), (Fe, E), (E, Fe))):
            parts = tuple(f"{m}.experts.{j}.{name}.weight" for j in range(self.n_expert))
            yield TensorSpec(tn(tensor, i), f"{m}.experts.*.{name}.weight", shape, stack=parts)

    def tensors(self, available: set[str]) -> Iterator[TensorSpec]:
        E, V, hd = self.n_embd, self.vocab_size, self.head_dim
        q, kv = self.n_head * hd, self.n_head_kv * hd
        perm_q = rope_permutation(self.n_head, q) if self.permute_qk else None
        perm_k = rope_permutation(self.n_head_kv, kv) if self.permute_qk else None
        if self.rope_settings["type"] == "llama3":  # first, as llama.cpp's converter writes it
            yield TensorSpec(tn(T.ROPE_FREQS), "(llama3 rope factors)", (hd // 2,),
                             values=llama3_rope_factors(self.rope_settings, hd))
        yield TensorSpec(tn(T.TOKEN_EMBD), "model.embed_tokens.weight", (V, E))
        for i in range(self.n_layer):
            p = f"model.layers.{i}."
            yield TensorSpec(tn(T.ATTN_NORM, i), p + "input_layernorm.weight", (E,))
            yield TensorSpec(tn(T.ATTN_Q, i), p + "self_attn.q_proj.weight", (q, E), rows=perm_q)
            yield TensorSpec(tn(T.ATTN_K, i), p + "self_attn.k_proj.weight", (kv, E), rows=perm_k)
            yield TensorSpec(tn(T.ATTN_V, i), p + "self_attn.v_proj.weight", (kv, E))
            if self.qkv_bias:
                yield TensorSpec(tn(T.ATTN_Q, i, "bias"), p + "self_attn.q_proj.bias", (q,), rows=perm_q)
                yield TensorSpec(tn(T.ATTN_K, i, "bias"), p + "self_attn.k_proj.bias", (kv,), rows=perm_k)
                yield TensorSpec(tn(T.ATTN_V, i, "bias"), p + "self_attn.v_proj.bias", (kv,))
            if self.qk_norm:
                yield TensorSpec(tn(T.ATTN_Q_NORM, i), p + "self_attn.q_norm.weight", (hd,))
                yield TensorSpec(tn(T.ATTN_K_NORM, i), p + "self_attn.k_norm.weight", (hd,))
            yield TensorSpec(tn(T.ATTN_OUT, i), p + "self_attn.o_proj.weight", (E, q))
            yield TensorSpec(tn(T.FFN_NORM, i), p + "post_attention_layernorm.weight", (E,))
            yield from self.ffn_tensors(i, p)
        yield TensorSpec(tn(T.OUTPUT_NORM), "model.norm.weight", (E,))
        # Tied models ship no lm_head; llama.cpp then reuses token_embd for the output.
        if "lm_head.weight" in available or not self.tied:
            yield TensorSpec(tn(T.OUTPUT), "lm_head.weight", (V, E))
