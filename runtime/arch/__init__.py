"""The forward pass of every architecture: one engine composed from the model's recipe (archs/)."""
from __future__ import annotations

from runtime.arch.base import KVCache, Transformer
from runtime.model import Model


def build(model: Model, nthreads: int) -> Transformer:
    return Transformer(model, nthreads)


__all__ = ["KVCache", "Transformer", "build"]
