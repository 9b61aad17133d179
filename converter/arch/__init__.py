"""Architectures, registered by Hugging Face class name. Adding one means adding one module to this package."""
from __future__ import annotations

import importlib
import pkgutil

from converter.arch.base import REGISTRY, Architecture, TensorSpec
from toolkit.errors import UserError

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base":
        importlib.import_module(f"{__name__}.{_mod.name}")


def supported() -> list[str]:
    return sorted(REGISTRY)


def for_config(config: dict) -> Architecture:
    names = config.get("architectures") or []
    if not names:
        raise UserError(f"config.json has no 'architectures' entry; supported: {', '.join(supported())}")
    for name in names:
        if name in REGISTRY:
            return REGISTRY[name](config)
    raise UserError(f"unsupported architecture {names[0]}; supported: {', '.join(supported())}")


__all__ = ["Architecture", "TensorSpec", "for_config", "supported"]
