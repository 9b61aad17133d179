"""Gemma 3 (text: Gemma3ForCausalLM, the 270M and 1B models) → GGUF `gemma3`: Gemma 2's block (gemma2.py) with RMS
norms of every q and k head, five sliding-window layers then a global one, the sliding layers rotating with their own
base and the global ones with linear rope scaling where the config sets it (the larger models), and no soft-capping."""
from __future__ import annotations

from typing import Iterator

from gguf import Keys as K

from archs.base import Recipe, T, TensorSpec, register, tn
from archs.gemma2 import Gemma2
from common.errors import UserError


@register
class Gemma3(Gemma2):
    hf_classes = ("Gemma3ForCausalLM",)
    gguf_arch = "gemma3"
    recipe = Recipe(norm="rms", rope="neox", ffn="geglu", chat_format="gemma", embd_scaled=True, swa_period=6,
                    final_softcap=0.0, query_scale_by_width_at=62)
    skip_suffixes = Gemma2.skip_suffixes[:-1]  # a Gemma 3 checkpoint's lm_head is its output (when not tied)
    qk_norm = True
    layer_pattern = "every sixth layer global"

    def __init__(self, config: dict):
        super().__init__(config)
        self.tied = bool(self.get("tie_word_embeddings", default=True, required=False))

    def rope_settings(self) -> None:
        self.rope_global = self.rope(default_theta=1_000_000.0, layer_type="full_attention")
        self.rope_local = self.rope(default_theta=10_000.0, layer_type="sliding_attention")
        if self.rope_global["type"] not in ("default", "linear"):
            raise UserError(f"config.json: rope type {self.rope_global['type']!r} on the global layers is not "
                            "supported for gemma3 (supported: default, linear)")
        if self.rope_local["type"] != "default":
            raise UserError(f"config.json: rope type {self.rope_local['type']!r} on the sliding layers is not "
                            "supported for gemma3")

    def softcaps(self) -> None:
        for key in ("attn_logit_softcapping", "final_logit_softcapping"):
            if self.config.get(key) is not None:
                raise UserError(f"config.json: {key} is not supported for gemma3")
        self.caps = {}

    def rope_keys(self) -> dict[str, object]:
        return {**self.rope_hparams(self.rope_global), K.Rope.FREQ_BASE_SWA: self.rope_local["theta"]}

    def tensors(self, available: set[str]) -> Iterator[TensorSpec]:
        yield from super().tensors(available)
        if "lm_head.weight" in available or not self.tied:
            yield TensorSpec(tn(T.OUTPUT), "lm_head.weight", (self.vocab_size, self.n_embd))
