"""Qwen2 → GGUF `qwen2`: the Llama layout with q/k/v biases, NEOX rope (no permutation), often tied embeddings."""
from __future__ import annotations

from converter.arch.base import register
from converter.arch.llama import Llama


@register
class Qwen2(Llama):
    hf_classes = ("Qwen2ForCausalLM",)
    gguf_arch = "qwen2"
    permute_qk = False
    qkv_bias_default = True

    def hparams(self) -> dict[str, object]:
        hp = super().hparams()
        del hp["vocab_size"], hp["rope.dimension_count"]
        return hp
