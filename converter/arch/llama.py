"""Llama and Mistral → GGUF `llama`. llama.cpp rotates adjacent pairs, so q/k rows are permuted from HF's rotate-half."""
from __future__ import annotations

from typing import Iterator

from converter.arch.base import Architecture, TensorSpec, llama3_rope_factors, register, rope_permutation


@register
class Llama(Architecture):
    hf_classes = ("LlamaForCausalLM", "MistralForCausalLM")
    gguf_arch = "llama"
    permute_qk = True      # llama.cpp's NORM rope wants adjacent pairs
    qkv_bias_default = False
    qk_norm = False        # RMS norms of q and k per head (Qwen3)

    def __init__(self, config: dict):
        super().__init__(config)
        self.n_embd = self.get_int("hidden_size")
        self.n_layer = self.get_int("num_hidden_layers")
        self.n_head = self.get_int("num_attention_heads")
        self.n_head_kv = self.get_int("num_key_value_heads", default=self.n_head)
        self.n_ff = self.get_int("intermediate_size")
        self.head_dim = self.get_int("head_dim", default=self.divides(self.n_embd, self.n_head, "hidden_size"))
        self.divides(self.n_head, self.n_head_kv, "num_attention_heads")
        self.qkv_bias = bool(self.get("attention_bias", default=self.qkv_bias_default, required=False))
        self.tied = bool(self.get("tie_word_embeddings", default=False, required=False))
        self.rope_settings = self.rope()

    def hparams(self) -> dict[str, object]:
        hp = {
            "vocab_size": self.vocab_size,
            "context_length": self.get_int("max_position_embeddings"),
            "embedding_length": self.n_embd,
            "block_count": self.n_layer,
            "feed_forward_length": self.n_ff,
            "rope.dimension_count": self.head_dim,
            "attention.head_count": self.n_head,
            "attention.head_count_kv": self.n_head_kv,
            "attention.layer_norm_rms_epsilon": float(self.get("rms_norm_eps")),
        }
        hp.update(self.rope_hparams(self.rope_settings))
        if self.head_dim != self.n_embd // self.n_head:
            hp["attention.key_length"] = hp["attention.value_length"] = self.head_dim
        return hp

    def tensors(self, available: set[str]) -> Iterator[TensorSpec]:
        E, V, F, hd = self.n_embd, self.vocab_size, self.n_ff, self.head_dim
        q, kv = self.n_head * hd, self.n_head_kv * hd
        perm_q = rope_permutation(self.n_head, q) if self.permute_qk else None
        perm_k = rope_permutation(self.n_head_kv, kv) if self.permute_qk else None
        if self.rope_settings["type"] == "llama3":  # first, as llama.cpp's converter writes it
            yield TensorSpec("rope_freqs.weight", "(llama3 rope factors)", (hd // 2,),
                             values=llama3_rope_factors(self.rope_settings, hd))
        yield TensorSpec("token_embd.weight", "model.embed_tokens.weight", (V, E))
        for i in range(self.n_layer):
            p, b = f"model.layers.{i}.", f"blk.{i}."
            yield TensorSpec(b + "attn_norm.weight", p + "input_layernorm.weight", (E,))
            yield TensorSpec(b + "attn_q.weight", p + "self_attn.q_proj.weight", (q, E), rows=perm_q)
            yield TensorSpec(b + "attn_k.weight", p + "self_attn.k_proj.weight", (kv, E), rows=perm_k)
            yield TensorSpec(b + "attn_v.weight", p + "self_attn.v_proj.weight", (kv, E))
            if self.qkv_bias:
                yield TensorSpec(b + "attn_q.bias", p + "self_attn.q_proj.bias", (q,), rows=perm_q)
                yield TensorSpec(b + "attn_k.bias", p + "self_attn.k_proj.bias", (kv,), rows=perm_k)
                yield TensorSpec(b + "attn_v.bias", p + "self_attn.v_proj.bias", (kv,))
            if self.qk_norm:
                yield TensorSpec(b + "attn_q_norm.weight", p + "self_attn.q_norm.weight", (hd,))
                yield TensorSpec(b + "attn_k_norm.weight", p + "self_attn.k_norm.weight", (hd,))
            yield TensorSpec(b + "attn_output.weight", p + "self_attn.o_proj.weight", (E, q))
            yield TensorSpec(b + "ffn_norm.weight", p + "post_attention_layernorm.weight", (E,))
            yield TensorSpec(b + "ffn_gate.weight", p + "mlp.gate_proj.weight", (F, E))
            yield TensorSpec(b + "ffn_up.weight", p + "mlp.up_proj.weight", (F, E))
            yield TensorSpec(b + "ffn_down.weight", p + "mlp.down_proj.weight", (E, F))
        yield TensorSpec("output_norm.weight", "model.norm.weight", (E,))
        # Tied models ship no lm_head; llama.cpp then reuses token_embd for the output.
        if "lm_head.weight" in available or not self.tied:
            yield TensorSpec("output.weight", "lm_head.weight", (V, E))
