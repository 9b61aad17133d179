"""Qwen3 → GGUF `qwen3`: Qwen2's layout without q/k/v biases, with an RMS norm of every q and k head before rope,
and a head size set apart from hidden_size / heads."""
from __future__ import annotations

from archs.base import register
from archs.qwen2 import Qwen2


@register
class Qwen3(Qwen2):
    hf_classes = ("Qwen3ForCausalLM",)
    gguf_arch = "qwen3"
    qkv_bias_default = False
    qk_norm = True
