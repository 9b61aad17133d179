"""Qwen2 → GGUF `qwen2`: the Llama layout with q/k/v biases, NEOX rope (no permutation), often tied embeddings."""
from __future__ import annotations

from gguf import Keys as K

from archs.base import Recipe, register
from archs.llama import Llama


@register
class Qwen2(Llama):
    hf_classes = ("Qwen2ForCausalLM",)
    gguf_arch = "qwen2"
    recipe = Recipe(norm="rms", rope="neox", ffn="swiglu")
    permute_qk = False
    qkv_bias_default = True

    def hparams(self) -> dict[str, object]:
        hp = super().hparams()
        del hp[K.LLM.VOCAB_SIZE], hp[K.Rope.DIMENSION_COUNT]
        return hp
