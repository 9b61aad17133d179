"""The native core (C, compiled by the package build) and its small Python face.

The compiled module is imported as a Python extension, so it works from any working directory; nothing is looked up
by name at run time.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from native import _core

# ggml type ids of the element types the conversion kernels handle
F32, F16, BF16 = 0, 1, 30

# {ggml type id: (name, block size, bytes per block)}: the core's one type table
TRAITS: dict[int, tuple[str, int, int]] = _core.type_traits()


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def convert_into(src: np.ndarray, src_type: int, dst: np.ndarray, dst_type: int, nthreads: int | None = None) -> None:
    """Convert the elements of the contiguous array `src` (stored as `src_type`) into `dst` (stored as `dst_type`).

    BF16 data is carried in uint16 arrays, since numpy has no bfloat16.
    """
    _core.convert(src, src_type, dst, dst_type, nthreads or default_threads())


def row_size(type_id: int, n_per_row: int) -> int:
    _, block, size = TRAITS[type_id]
    return n_per_row // block * size


_SRC_TYPE = {np.dtype(np.float32): F32, np.dtype(np.float16): F16}


def quantize(type_id: int, x: np.ndarray, nthreads: int | None = None, src_type: int | None = None,
             imatrix: np.ndarray | None = None) -> np.ndarray:
    """Quantize the rows (last axis) of an F32, F16 or BF16 (uint16 with src_type=BF16) matrix with ggml's reference
    algorithm, or with `imatrix` (one float32 importance weight per column) as ggml quantizes with quant_weights (the
    types whose ggml quantizer ignores them ignore them too); returns uint8 bytes shaped (rows, bytes per row).
    Raises NonFiniteError for NaN/Inf input."""
    x = np.ascontiguousarray(x)
    src_type = _SRC_TYPE[x.dtype] if src_type is None else src_type
    n_per_row = x.shape[-1]
    nrows = x.size // n_per_row if n_per_row else 0
    out = np.empty((nrows, row_size(type_id, n_per_row)), dtype=np.uint8)
    qw = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
    bad = _core.quantize(type_id, x, src_type, out, nrows, n_per_row, nthreads or default_threads(), qw)
    if bad:
        raise NonFiniteError(bad)
    return out


class NonFiniteError(ValueError):
    """The input held NaN or Inf values (their count is args[0])."""


def dequantize(type_id: int, data: np.ndarray, n_per_row: int, nthreads: int | None = None) -> np.ndarray:
    """Dequantize rows of `n_per_row` elements stored as `type_id`; returns float32 (rows, n_per_row)."""
    data = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    nrows = data.size // row_size(type_id, n_per_row)
    out = np.empty((nrows, n_per_row), dtype=np.float32)
    _core.dequantize(type_id, data, out, nrows, n_per_row, nthreads or default_threads())
    return out


cpu_features = _core.cpu_features
set_force_scalar = _core.set_force_scalar
set_gelu_fp16 = _core.set_gelu_fp16  # GELU through ggml's fp16 table, for comparisons with llama.cpp
set_isa_limit = _core.set_isa_limit
set_l2_bytes = _core.set_l2_bytes


def count_nonfinite(data: np.ndarray, type_id: int) -> int:
    """NaN/Inf elements in F32/F16/BF16 data."""
    return _core.count_nonfinite(np.ascontiguousarray(data), type_id)


def matmul(wtype: int, w, rows: int, cols: int, x: np.ndarray, nthreads: int | None = None) -> np.ndarray:
    """y = x · Wᵀ for W of shape (rows, cols) stored row-major as `wtype` in the buffer `w` (e.g. a uint8 view of a
    memory-mapped GGUF tensor, or float32/float16/uint16(bf16) arrays); x float32 of shape (n, cols) (a 1-D x gives
    a 1-D result). Returns float32 (n, rows). The activations are converted to the weight type's dot-product partner
    (Q8_0, Q8_1, Q8_K, F16, BF16 or F32) as ggml does."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    flat = x.ndim == 1
    x2 = x.reshape(1, -1) if flat else x.reshape(-1, x.shape[-1])
    if x2.shape[1] != cols:
        raise ValueError(f"x has {x2.shape[1]} columns, W has {cols}")
    if isinstance(w, np.ndarray):
        w = np.ascontiguousarray(w)
    y = np.empty((x2.shape[0], rows), dtype=np.float32)
    _core.matmul(wtype, w, rows, cols, x2, x2.shape[0], y, nthreads or default_threads())
    return y.reshape(rows) if flat else y


def activations(wtype: int, x: np.ndarray) -> tuple[int, np.ndarray]:
    """The float32 rows x [n, cols] converted as matmul converts them for weights of type wtype:
    (vec_dot_type, bytes shaped (n, bytes per row))."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, cols = x.shape
    at, data = _core.activations(wtype, x, n, cols)
    return at, np.frombuffer(data, dtype=np.uint8).reshape(n, -1)


# -- the forward pass (engine.c) -----------------------------------------------------------------------------------
# the parts engine.c composes, by the names archs.Recipe uses → its enum values (engine.h)
PARTS = {"norm": {"rms": 0, "layer": 1}, "rope": {None: 0, "norm": 1, "neox": 2},
         "ffn": {"swiglu": 0, "gelu": 1, "geglu": 2}}


def engine_new(description: dict[str, object], tensors: list[tuple[str, np.ndarray, int, int, int]]):
    """The native forward pass over GGUF tensors given as (name, array, ggml type, rows, cols). `description` names
    every field of engine.h's struct tk_hparams (the parts by their names in PARTS, sizes and floats by value); a
    part the engine does not have, or a missing or unknown field, is a ValueError. The arrays must stay alive as long
    as the engine (the runtime keeps the memory-mapped file open). Raises ValueError for a model the engine cannot run
    (missing tensors, shapes, a shape or type that does not fit the array's bytes)."""
    fields = dict(description)
    for part, values in PARTS.items():
        if fields.get(part) not in values:
            raise ValueError(f"the engine has no {part} {fields.get(part)!r} (it has: "
                             f"{', '.join(str(v) for v in values)})")
        fields[part] = values[fields[part]]
    desc = []
    for name, a, t, rows, cols in tensors:
        if not isinstance(a, np.ndarray) or not a.flags.c_contiguous:
            raise ValueError(f"tensor {name}: the data must be a contiguous numpy array")
        desc.append((name, a.ctypes.data, a.nbytes, t, rows, cols))
    return _core.engine_new(fields, desc)


def kv_new(engine, n_ctx: int, type_k: int, type_v: int | None = None):
    """A KV cache of n_ctx positions, keys stored as type_k and values as type_v (default: type_k): F32, F16, or
    Q8_0 / Q4_0 when the head size is a multiple of 32."""
    return _core.kv_new(engine, n_ctx, type_k, type_k if type_v is None else type_v)


def engine_stats(engine, arrays: list[tuple[np.ndarray, np.ndarray, np.ndarray] | None] | None):
    """Collect llama-imatrix's activation statistics (engine.h's tk_act_stats) into the arrays, one entry per tensor
    of the engine's description (None: not collected): float32 sum2 and sum of n_expert x cols (1 x cols for a dense
    tensor) and int64 counts of n_expert, sized by the caller from the tensor's shape. Returns the holder to keep while
    collecting; None stops the collection."""
    return _core.engine_stats(engine, arrays)


@dataclass
class Seq:
    """One sequence of a batched forward pass (engine.h's struct tk_seq, read by name): int32 `tokens` at positions
    pos0.. of the KV cache `kv`, their float32 `logits` (one row per token with all_logits, else the last token's;
    None: no logits) and, when `embd` is given, every token's hidden state after the output norm (n_embd float32
    per token). skip_logits, with all_logits: the first that many tokens get no logits row (the rows start at token
    skip_logits)."""
    kv: object
    tokens: np.ndarray
    pos0: int
    logits: np.ndarray | None
    all_logits: bool = False
    embd: np.ndarray | None = None
    skip_logits: int = 0


def forward_batch(engine, seqs: list[Seq], nthreads: int) -> None:
    """Evaluate every sequence in one pass: the products once over all their tokens, each token attending to its own
    sequence's cache only; each token's logits are the bits a pass of its own sequence alone gives."""
    _core.forward_batch(engine, seqs, nthreads)


def forward(engine, kv, tokens: np.ndarray, pos0: int, out: np.ndarray, all_logits: bool, nthreads: int) -> None:
    """Evaluate int32 `tokens` at positions pos0.. into `out` (float32 logits, one row per token or the last)."""
    forward_batch(engine, [Seq(kv, tokens, pos0, out, all_logits)], nthreads)
