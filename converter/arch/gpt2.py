"""GPT-2 → GGUF `gpt2`. HF GPT-2 uses Conv1D layers, whose weights are stored [in, out]: they are transposed."""
from __future__ import annotations

from typing import Iterator

from converter.arch.base import Architecture, TensorSpec, register


@register
class GPT2(Architecture):
    hf_classes = ("GPT2LMHeadModel",)
    gguf_arch = "gpt2"
    skip_suffixes = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers of older checkpoints

    def __init__(self, config: dict):
        super().__init__(config)
        self.n_embd = self.get_int("n_embd")
        self.n_layer = self.get_int("n_layer")
        self.n_head = self.get_int("n_head")
        self.n_ff = self.get_int("n_inner", default=4 * self.n_embd)
        self.n_ctx = self.get_int("n_positions", "n_ctx")
        self.divides(self.n_embd, self.n_head, "n_embd")

    def hparams(self) -> dict[str, object]:
        return {
            "context_length": self.n_ctx,
            "embedding_length": self.n_embd,
            "feed_forward_length": self.n_ff,
            "block_count": self.n_layer,
            "attention.head_count": self.n_head,
            "attention.layer_norm_epsilon": float(self.get("layer_norm_epsilon")),
        }

    def tensors(self, available: set[str]) -> Iterator[TensorSpec]:
        E, F, V = self.n_embd, self.n_ff, self.vocab_size
        # GPT2LMHeadModel state dicts say "transformer.wte…", the original hub checkpoints say "wte…"
        t = "transformer." if "transformer.wte.weight" in available else ""
        yield TensorSpec("token_embd.weight", t + "wte.weight", (V, E))
        yield TensorSpec("position_embd.weight", t + "wpe.weight", (self.n_ctx, E), keep_f32=True)
        for i in range(self.n_layer):
            p, b = f"{t}h.{i}.", f"blk.{i}."
            yield TensorSpec(b + "attn_norm.weight", p + "ln_1.weight", (E,))
            yield TensorSpec(b + "attn_norm.bias", p + "ln_1.bias", (E,))
            yield TensorSpec(b + "attn_qkv.weight", p + "attn.c_attn.weight", (E, 3 * E), transpose=True)
            yield TensorSpec(b + "attn_qkv.bias", p + "attn.c_attn.bias", (3 * E,))
            yield TensorSpec(b + "attn_output.weight", p + "attn.c_proj.weight", (E, E), transpose=True)
            yield TensorSpec(b + "attn_output.bias", p + "attn.c_proj.bias", (E,))
            yield TensorSpec(b + "ffn_norm.weight", p + "ln_2.weight", (E,))
            yield TensorSpec(b + "ffn_norm.bias", p + "ln_2.bias", (E,))
            yield TensorSpec(b + "ffn_up.weight", p + "mlp.c_fc.weight", (E, F), transpose=True)
            yield TensorSpec(b + "ffn_up.bias", p + "mlp.c_fc.bias", (F,))
            yield TensorSpec(b + "ffn_down.weight", p + "mlp.c_proj.weight", (F, E), transpose=True)
            yield TensorSpec(b + "ffn_down.bias", p + "mlp.c_proj.bias", (E,))
        yield TensorSpec("output_norm.weight", t + "ln_f.weight", (E,))
        yield TensorSpec("output_norm.bias", t + "ln_f.bias", (E,))
        # The LM head is tied to wte; llama.cpp reuses token_embd when output is absent.
