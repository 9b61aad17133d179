"""Qwen3-MoE (Qwen3-30B-A3B, Qwen3-235B-A22B) → GGUF `qwen3moe`: Qwen3's attention (q/k head norms, NEOX rope) with a
mixture of experts in every layer: a router over num_experts, num_experts_per_tok of them per token, each expert a
SwiGLU of width moe_intermediate_size; the experts stacked into 3-D tensors as llama.cpp stores them."""
from __future__ import annotations

from archs.base import register
from archs.qwen3 import Qwen3
from common.errors import UserError


@register
class Qwen3Moe(Qwen3):
    hf_classes = ("Qwen3MoeForCausalLM",)
    gguf_arch = "qwen3moe"
    moe_module, expert_names = "mlp", ("gate_proj", "up_proj", "down_proj")
    expert_width_key = "moe_intermediate_size"

    def __init__(self, config: dict):
        super().__init__(config)
        if not self.n_expert:
            raise UserError("config.json: a Qwen3-MoE config needs num_experts")
        if self.get("mlp_only_layers", default=[], required=False) or self.get("decoder_sparse_step", default=1,
                                                                                 required=False) != 1:
            raise UserError("config.json: dense layers among the expert layers (mlp_only_layers, "
                            "decoder_sparse_step) are not supported by llama.cpp's qwen3moe")
        if not self.get("norm_topk_prob", default=True, required=False):
            raise UserError("config.json: norm_topk_prob false (llama.cpp's qwen3moe always renormalises the "
                            "selected experts' weights)")
