"""Forward passes, one small module per GGUF architecture, registered by its `general.architecture` name."""
from __future__ import annotations

from runtime.arch.base import KVCache, Transformer
from runtime.arch.codeshell import CodeShell
from runtime.arch.gpt2 import GPT2
from runtime.arch.llama import Llama, Qwen, Qwen2
from runtime.model import Model

ARCHITECTURES: dict[str, type[Transformer]] = {"llama": Llama, "qwen": Qwen, "qwen2": Qwen2, "qwen3": Qwen2, "gpt2": GPT2, "codeshell": CodeShell}


def build(model: Model, nthreads: int) -> Transformer:
    return ARCHITECTURES[model.hp.arch](model, nthreads)


__all__ = ["ARCHITECTURES", "KVCache", "Transformer", "build"]
