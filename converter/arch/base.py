"""What every architecture module provides: its GGUF hyper-parameters and the tensors it expects, with shapes derived
from config.json (so a checkpoint that contradicts its config is caught before anything is written)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from toolkit.errors import UserError

REGISTRY: dict[str, type["Architecture"]] = {}


def register(cls: type["Architecture"]) -> type["Architecture"]:
    for name in cls.hf_classes:
        REGISTRY[name] = cls
    return cls


@dataclass(frozen=True)
class TensorSpec:
    """One GGUF tensor and where it comes from.

    `shape` is the expected source shape (PyTorch order). The written tensor is the source, transposed if `transpose`,
    then with its rows (elements, for 1-D) reordered so that output row i is source row `rows[i]`.
    """
    gguf: str
    hf: str
    shape: tuple[int, ...]
    rows: np.ndarray | None = None
    transpose: bool = False
    keep_f32: bool = False  # stays F32 whatever the output type (1-D tensors always do)

    @property
    def out_shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.shape)) if self.transpose else self.shape


def rope_permutation(n_head: int, rows: int) -> np.ndarray:
    """Row order that turns Hugging Face's rotate-half q/k layout into llama.cpp's adjacent-pairs layout.

    Within each head the rows are (first half, second half); llama.cpp wants them interleaved: 0, h/2, 1, h/2+1, ...
    """
    head_dim = rows // n_head
    return np.arange(rows).reshape(n_head, 2, head_dim // 2).swapaxes(1, 2).reshape(-1)


class Architecture:
    hf_classes: tuple[str, ...] = ()
    gguf_arch: str = ""
    bpe_pre: str = "default"  # tokenizer.ggml.pre for byte-level BPE vocabularies
    spm_ok: bool = True  # SentencePiece vocabularies are accepted
    # checkpoint entries that are not weights (buffers) and are never converted
    skip_suffixes: tuple[str, ...] = (".rotary_emb.inv_freq",)

    def __init__(self, config: dict):
        self.config = config

    # -- config helpers -------------------------------------------------------------------------------------------
    def get(self, *keys: str, default=None, required: bool = True):
        for k in keys:
            if self.config.get(k) is not None:
                return self.config[k]
        if default is not None or not required:
            return default
        raise UserError(f"config.json has no {' / '.join(keys)}")

    def get_int(self, *keys: str, default=None) -> int:
        v = self.get(*keys, default=default)
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise UserError(f"config.json: {keys[0]} must be a positive integer, got {v!r}")
        return v

    def divides(self, a: int, b: int, what: str) -> int:
        if a % b:
            raise UserError(f"config.json: {what} ({a}) is not a multiple of {b}")
        return a // b

    def rope_scaling(self) -> dict[str, object]:
        """GGUF rope-scaling keys for a Hugging Face `rope_scaling` entry (linear only; none when absent)."""
        rs = self.config.get("rope_scaling")
        if not rs:
            return {}
        kind = rs.get("rope_type", rs.get("type"))
        if kind == "linear":
            return {"rope.scaling.type": "linear", "rope.scaling.factor": float(rs["factor"])}
        if kind == "default":
            return {}
        raise UserError(f"rope_scaling type {kind!r} is not supported (supported: linear)")

    # -- what subclasses provide ----------------------------------------------------------------------------------
    def hparams(self) -> dict[str, object]:
        """GGUF keys without the '{arch}.' prefix -> value (int → uint32, float → float32, str → string)."""
        raise NotImplementedError

    def tensors(self, available: set[str]) -> Iterator[TensorSpec]:
        """The tensors to write, in file order. `available` are the names present in the checkpoint."""
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        return self.get_int("vocab_size")

    def skipped(self, name: str) -> bool:
        return name.endswith(self.skip_suffixes)
