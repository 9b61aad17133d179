"""Gemma 3 (Gemma3ForCausalLM: the 270M and 1B models; Gemma3ForConditionalGeneration: the 4B, 12B and 27B ones, of
which the text model is converted and the vision tower left out, as llama.cpp's converter does) → GGUF `gemma3`:
Gemma 2's block (gemma2.py) with RMS norms of every q and k head, five sliding-window layers then a global one, the
sliding layers rotating with their own base and the global ones with linear rope scaling where the config sets it
(the larger models), and no soft-capping."""
from __future__ import annotations

from typing import Iterator

from gguf import Keys as K

from archs.base import Recipe, T, TensorSpec, register, tn
from archs.gemma2 import Gemma2
from common.errors import UserError


@register
class Gemma3(Gemma2):
    hf_classes = ("Gemma3ForCausalLM", "Gemma3ForConditionalGeneration")
    gguf_arch = "gemma3"
    recipe = Recipe(norm="rms", rope="neox", ffn="geglu", chat_format="gemma", embd_scaled=True, swa_period=6,
                    final_softcap=0.0, query_scale_by_width_at=62)
    skip_suffixes = Gemma2.skip_suffixes[:-1]  # a Gemma 3 checkpoint's lm_head is its output (when not tied)
    qk_norm = True
    layer_pattern = "every sixth layer global"

    # the text model's prefix in the multimodal checkpoints, as transformers 5 and 4 save them (lm_head: "lm_head." /
    # "language_model.lm_head."), and the parts of those checkpoints that are not the text model
    MULTIMODAL_PREFIXES = ("model.language_model.", "language_model.model.")
    VISION = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector.")

    def __init__(self, config: dict):
        if isinstance(config.get("text_config"), dict):  # a multimodal model: its text model's settings
            config = {**config, **config["text_config"]}
        super().__init__(config)
        self.tied = bool(self.get("tie_word_embeddings", default=True, required=False))

    def text_model(self, available: set[str]) -> str:
        return next((p for p in self.MULTIMODAL_PREFIXES if p + "embed_tokens.weight" in available), "model.")

    def skipped(self, name: str) -> bool:
        return super().skipped(name) or name.startswith(self.VISION)

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
        head = "language_model.lm_head.weight" if self.text_model(available) == "language_model.model." else "lm_head.weight"
        if head in available or not self.tied:
            yield TensorSpec(tn(T.OUTPUT), head, (self.vocab_size, self.n_embd))
