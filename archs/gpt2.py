"""GPT-2 → GGUF `gpt2`. HF GPT-2 uses Conv1D layers, whose weights are stored [in, out]: they are transposed."""
from __future__ import annotations

from typing import Iterator

from gguf import Keys as K

from archs.base import Architecture, Recipe, T, TensorSpec, register, tn


@register
class GPT2(Architecture):
    hf_classes = ("GPT2LMHeadModel",)
    gguf_arch = "gpt2"
    recipe = Recipe(norm="layer", rope=None, ffn="gelu")
    skip_suffixes = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers of older checkpoints

    def __init__(self, config: dict):
        super().__init__(config)
        self.gpt2_sizes()
        self.n_ctx = self.get_int("n_positions", "n_ctx")

    def hparams(self) -> dict[str, object]:
        return {
            K.LLM.CONTEXT_LENGTH: self.n_ctx,
            K.LLM.EMBEDDING_LENGTH: self.n_embd,
            K.LLM.FEED_FORWARD_LENGTH: self.n_ff,
            K.LLM.BLOCK_COUNT: self.n_layer,
            K.Attention.HEAD_COUNT: self.n_head,
            K.Attention.LAYERNORM_EPS: self.get_float("layer_norm_epsilon"),
        }

    def tensors(self, available: set[str]) -> Iterator[TensorSpec]:
        E, F, V = self.n_embd, self.n_ff, self.vocab_size
        # GPT2LMHeadModel state dicts say "transformer.wte…", the original hub checkpoints say "wte…"
        t = "transformer." if "transformer.wte.weight" in available else ""
        yield TensorSpec(tn(T.TOKEN_EMBD), t + "wte.weight", (V, E))
        yield TensorSpec(tn(T.POS_EMBD), t + "wpe.weight", (self.n_ctx, E), keep_f32=True)
        for i in range(self.n_layer):
            p = f"{t}h.{i}."
            yield TensorSpec(tn(T.ATTN_NORM, i), p + "ln_1.weight", (E,))
            yield TensorSpec(tn(T.ATTN_NORM, i, "bias"), p + "ln_1.bias", (E,))
            yield TensorSpec(tn(T.ATTN_QKV, i), p + "attn.c_attn.weight", (E, 3 * E), transpose=True)
            yield TensorSpec(tn(T.ATTN_QKV, i, "bias"), p + "attn.c_attn.bias", (3 * E,))
            yield TensorSpec(tn(T.ATTN_OUT, i), p + "attn.c_proj.weight", (E, E), transpose=True)
            yield TensorSpec(tn(T.ATTN_OUT, i, "bias"), p + "attn.c_proj.bias", (E,))
            yield TensorSpec(tn(T.FFN_NORM, i), p + "ln_2.weight", (E,))
            yield TensorSpec(tn(T.FFN_NORM, i, "bias"), p + "ln_2.bias", (E,))
            yield TensorSpec(tn(T.FFN_UP, i), p + "mlp.c_fc.weight", (E, F), transpose=True)
            yield TensorSpec(tn(T.FFN_UP, i, "bias"), p + "mlp.c_fc.bias", (F,))
            yield TensorSpec(tn(T.FFN_DOWN, i), p + "mlp.c_proj.weight", (F, E), transpose=True)
            yield TensorSpec(tn(T.FFN_DOWN, i, "bias"), p + "mlp.c_proj.bias", (E,))
        yield TensorSpec(tn(T.OUTPUT_NORM), t + "ln_f.weight", (E,))
        yield TensorSpec(tn(T.OUTPUT_NORM, None, "bias"), t + "ln_f.bias", (E,))
        # The LM head is tied to wte; llama.cpp reuses token_embd when output is absent.
