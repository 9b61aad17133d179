"""Gemma 2 (Gemma2ForCausalLM) → GGUF `gemma2`: token embeddings scaled by sqrt(hidden), RMS norms that scale by 1 + w
(stored as 1 + w, as llama.cpp's converter does), NEOX rope, norms after attention and after the feed-forward as well
as before, a GeGLU feed-forward (tanh GELU of the gate times up), sliding-window attention on every other layer,
attention scores and logits soft-capped (c · tanh(x / c)), output tied to the embeddings."""
from __future__ import annotations

from typing import Iterator

from gguf import Keys as K

from archs.base import Architecture, Recipe, T, TensorSpec, register, tn
from common.errors import UserError

DEFAULT_THETA = 10000.0  # llama.cpp's converter writes no rope base for gemma2: its runtime's default


@register
class Gemma2(Architecture):
    hf_classes = ("Gemma2ForCausalLM",)
    gguf_arch = "gemma2"
    recipe = Recipe(norm="rms", rope="neox", ffn="geglu", chat_format="gemma", embd_scaled=True, swa_period=2,
                    swa_rope_shared=True, attn_softcap=50.0, final_softcap=30.0, query_scale_by_width_at=46)
    spm_space_prefix = False
    # Gemma's output is its embeddings: llama.cpp's converter drops an lm_head a checkpoint may carry
    skip_suffixes = Architecture.skip_suffixes + ("lm_head.weight",)
    qk_norm = False           # RMS norms of every q and k head (Gemma 3)
    layer_pattern = "every other layer global"

    def __init__(self, config: dict):
        super().__init__(config)
        self.standard_sizes()
        self.rope_settings()
        scalar = self.get("query_pre_attn_scalar", default=self.head_dim, required=False)
        want = self.recipe.query_scale_dim(self.n_layer, self.n_embd, self.n_head, self.head_dim)
        if scalar != want:
            raise UserError(f"config.json: query_pre_attn_scalar {scalar} is not {want}, the attention scale "
                            f"llama.cpp uses for a {self.gguf_arch} model of {self.n_layer} layers")
        act = self.get("hidden_activation", "hidden_act", default="gelu_pytorch_tanh", required=False)
        if act != "gelu_pytorch_tanh":
            raise UserError(f"config.json: hidden_activation {act!r} ({self.gguf_arch} uses the tanh GELU)")
        self.n_swa = self.get_int("sliding_window")
        period = self.recipe.swa_period
        want_types = ["full_attention" if i % period == period - 1 else "sliding_attention" for i in range(self.n_layer)]
        types = self.config.get("layer_types")
        pattern = self.config.get("sliding_window_pattern", self.config.get("_sliding_window_pattern", period))
        if (types is not None and types != want_types) or pattern != period:
            raise UserError(f"config.json: layer types other than llama.cpp's {self.gguf_arch} pattern "
                            f"({self.layer_pattern}) are not supported")
        self.softcaps()

    def rope_settings(self) -> None:
        rope = self.rope(default_theta=DEFAULT_THETA)
        if rope["type"] != "default":
            raise UserError(f"config.json: rope type {rope['type']!r} is not supported for gemma2")
        self.theta = rope["theta"]

    def softcaps(self) -> None:
        """Gemma 2 caps both; a null cap cannot be written (llama.cpp then applies its default)."""
        self.caps = {}
        for key, gguf_key in (("attn_logit_softcapping", K.LLM.ATTN_LOGIT_SOFTCAPPING),
                              ("final_logit_softcapping", K.LLM.FINAL_LOGIT_SOFTCAPPING)):
            cap = self.config.get(key)
            if not isinstance(cap, (int, float)) or isinstance(cap, bool) or not cap > 0:
                raise UserError(f"config.json: {key} must be a positive number for gemma2, got {cap!r}")
            self.caps[gguf_key] = float(cap)

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
            K.Attention.LAYERNORM_RMS_EPS: self.get_float("rms_norm_eps", default=1e-6),
            K.Attention.SLIDING_WINDOW: self.n_swa,
            **self.caps,
            **self.rope_keys(),
        }

    def rope_keys(self) -> dict[str, object]:
        return {K.Rope.FREQ_BASE: self.theta} if self.theta != DEFAULT_THETA else {}

    def tensors(self, available: set[str]) -> Iterator[TensorSpec]:
        E, V, F, hd = self.n_embd, self.vocab_size, self.n_ff, self.head_dim
        q, kv = self.n_head * hd, self.n_head_kv * hd
        m = self.text_model(available)
        yield TensorSpec(tn(T.TOKEN_EMBD), m + "embed_tokens.weight", (V, E))
        norms = [(T.ATTN_NORM, "input_layernorm", E)]
        if self.qk_norm:
            norms += [(T.ATTN_Q_NORM, "self_attn.q_norm", hd), (T.ATTN_K_NORM, "self_attn.k_norm", hd)]
        norms += [(T.ATTN_POST_NORM, "post_attention_layernorm", E), (T.FFN_NORM, "pre_feedforward_layernorm", E),
                  (T.FFN_POST_NORM, "post_feedforward_layernorm", E)]
        for i in range(self.n_layer):
            p = f"{m}layers.{i}."
            for tensor, hf, size in norms:
                yield TensorSpec(tn(tensor, i), p + hf + ".weight", (size,), shift=1.0)
            yield TensorSpec(tn(T.ATTN_Q, i), p + "self_attn.q_proj.weight", (q, E))
            yield TensorSpec(tn(T.ATTN_K, i), p + "self_attn.k_proj.weight", (kv, E))
            yield TensorSpec(tn(T.ATTN_V, i), p + "self_attn.v_proj.weight", (kv, E))
            yield TensorSpec(tn(T.ATTN_OUT, i), p + "self_attn.o_proj.weight", (E, q))
            yield TensorSpec(tn(T.FFN_GATE, i), p + "mlp.gate_proj.weight", (F, E))
            yield TensorSpec(tn(T.FFN_UP, i), p + "mlp.up_proj.weight", (F, E))
            yield TensorSpec(tn(T.FFN_DOWN, i), p + "mlp.down_proj.weight", (E, F))
        yield TensorSpec(tn(T.OUTPUT_NORM), m + "norm.weight", (E,), shift=1.0)

    def text_model(self, available: set[str]) -> str:
        """The prefix of the text model's tensors."""
        return "model."
