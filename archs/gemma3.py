"""Gemma 3 (text: Gemma3ForCausalLM, the 270M and 1B models) → GGUF `gemma3`: token embeddings scaled by sqrt(hidden),
RMS norms that scale by 1 + w (stored as 1 + w, as llama.cpp's converter does), q/k head norms, NEOX rope with one base
for the global layers and another for the sliding-window ones (five sliding layers, then a global one), norms after
attention and after the feed-forward as well as before, a GeGLU feed-forward (tanh GELU of the gate times up)."""
from __future__ import annotations

from typing import Iterator

from gguf import Keys as K

from archs.base import Architecture, Recipe, T, TensorSpec, register, tn
from common.errors import UserError

SWA_PERIOD = 6  # llama.cpp's gemma3 pattern: every sixth layer global


@register
class Gemma3(Architecture):
    hf_classes = ("Gemma3ForCausalLM",)
    gguf_arch = "gemma3"
    recipe = Recipe(norm="rms", rope="neox", ffn="geglu", chat_format="gemma", embd_scaled=True,
                    swa_period=SWA_PERIOD)
    spm_space_prefix = False

    def __init__(self, config: dict):
        super().__init__(config)
        self.standard_sizes()
        self.rope_global = self.rope(default_theta=1_000_000.0, layer_type="full_attention")
        self.rope_local = self.rope(default_theta=10_000.0, layer_type="sliding_attention")
        for which, rope in (("global", self.rope_global), ("sliding", self.rope_local)):
            if rope["type"] != "default":
                raise UserError(f"config.json: rope type {rope['type']!r} on the {which} layers is not supported for "
                                "gemma3")
        scalar = self.get("query_pre_attn_scalar", default=self.head_dim, required=False)
        if scalar != self.head_dim:
            raise UserError(f"config.json: query_pre_attn_scalar {scalar} differs from head_dim {self.head_dim}")
        for key in ("attn_logit_softcapping", "final_logit_softcapping"):
            if self.config.get(key) is not None:
                raise UserError(f"config.json: {key} is not supported for gemma3")
        act = self.get("hidden_activation", "hidden_act", default="gelu_pytorch_tanh", required=False)
        if act != "gelu_pytorch_tanh":
            raise UserError(f"config.json: hidden_activation {act!r} (gemma3 uses the tanh GELU)")
        self.n_swa = self.get_int("sliding_window")
        want = ["full_attention" if i % SWA_PERIOD == SWA_PERIOD - 1 else "sliding_attention"
                for i in range(self.n_layer)]
        types = self.config.get("layer_types")
        period = self.config.get("sliding_window_pattern", self.config.get("_sliding_window_pattern", SWA_PERIOD))
        if (types is not None and types != want) or period != SWA_PERIOD:
            raise UserError(f"config.json: layer types other than llama.cpp's gemma3 pattern (every {SWA_PERIOD}th "
                            "layer global) are not supported")
        self.tied = bool(self.get("tie_word_embeddings", default=True, required=False))

    def hparams(self) -> dict[str, object]:
        return {
            K.LLM.CONTEXT_LENGTH: self.get_int("max_position_embeddings"),
            K.LLM.EMBEDDING_LENGTH: self.n_embd,
            K.LLM.BLOCK_COUNT: self.n_layer,
            K.LLM.FEED_FORWARD_LENGTH: self.n_ff,
            K.Attention.HEAD_COUNT: self.n_head,
            K.Attention.HEAD_COUNT_KV: self.n_head_kv,
            K.Attention.KEY_LENGTH: self.head_dim,
            K.Attention.VALUE_LENGTH: self.head_dim,
            K.Attention.LAYERNORM_RMS_EPS: float(self.get("rms_norm_eps", default=1e-6)),
            K.Rope.FREQ_BASE: self.rope_global["theta"],
            K.Rope.FREQ_BASE_SWA: self.rope_local["theta"],
            K.Attention.SLIDING_WINDOW: self.n_swa,
        }

    def tensors(self, available: set[str]) -> Iterator[TensorSpec]:
        E, V, F, hd = self.n_embd, self.vocab_size, self.n_ff, self.head_dim
        q, kv = self.n_head * hd, self.n_head_kv * hd
        yield TensorSpec(tn(T.TOKEN_EMBD), "model.embed_tokens.weight", (V, E))
        for i in range(self.n_layer):
            p = f"model.layers.{i}."
            for tensor, hf, size in ((T.ATTN_NORM, "input_layernorm", E), (T.ATTN_Q_NORM, "self_attn.q_norm", hd),
                                     (T.ATTN_K_NORM, "self_attn.k_norm", hd),
                                     (T.ATTN_POST_NORM, "post_attention_layernorm", E),
                                     (T.FFN_NORM, "pre_feedforward_layernorm", E),
                                     (T.FFN_POST_NORM, "post_feedforward_layernorm", E)):
                yield TensorSpec(tn(tensor, i), p + hf + ".weight", (size,), shift=1.0)
            yield TensorSpec(tn(T.ATTN_Q, i), p + "self_attn.q_proj.weight", (q, E))
            yield TensorSpec(tn(T.ATTN_K, i), p + "self_attn.k_proj.weight", (kv, E))
            yield TensorSpec(tn(T.ATTN_V, i), p + "self_attn.v_proj.weight", (kv, E))
            yield TensorSpec(tn(T.ATTN_OUT, i), p + "self_attn.o_proj.weight", (E, q))
            yield TensorSpec(tn(T.FFN_GATE, i), p + "mlp.gate_proj.weight", (F, E))
            yield TensorSpec(tn(T.FFN_UP, i), p + "mlp.up_proj.weight", (F, E))
            yield TensorSpec(tn(T.FFN_DOWN, i), p + "mlp.down_proj.weight", (E, F))
        yield TensorSpec(tn(T.OUTPUT_NORM), "model.norm.weight", (E,), shift=1.0)
        if "lm_head.weight" in available or not self.tied:
            yield TensorSpec(tn(T.OUTPUT), "lm_head.weight", (V, E))
