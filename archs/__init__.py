"""Architectures, one module each, registered by Hugging Face class name and by GGUF architecture name. The converter
reads a description's tensors and hyper-parameters, the runtime its recipe. Adding one means adding one module to this
package (plus its fixture and tests)."""
from __future__ import annotations

import importlib
import pkgutil

from archs.base import Architecture, BY_GGUF, REGISTRY, Recipe, TensorSpec
from common.errors import UserError

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base":
        importlib.import_module(f"{__name__}.{_mod.name}")


def supported() -> list[str]:
    return sorted(REGISTRY)


def for_config(config: dict) -> Architecture:
    names = config.get("architectures") or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UserError(f"config.json: 'architectures' must be a list of class names, got {names!r}")
    if not names:
        raise UserError(f"config.json has no 'architectures' entry; supported: {', '.join(supported())}")
    for name in names:
        if name in REGISTRY:
            return REGISTRY[name](config)
    raise UserError(f"unsupported architecture {names[0]}; supported: {', '.join(supported())}")


def gguf_names() -> list[str]:
    return sorted(BY_GGUF)


def recipe(gguf_arch: str) -> Recipe:
    """The block recipe of a GGUF architecture; an unknown one is an error that lists the known ones."""
    cls = BY_GGUF.get(gguf_arch)
    if cls is None:
        raise UserError(f"unsupported architecture {gguf_arch!r}; supported: {', '.join(gguf_names())}")
    return cls.recipe


__all__ = ["Architecture", "Recipe", "TensorSpec", "for_config", "gguf_names", "recipe", "supported"]
