"""The native core (C, compiled by the package build) and its small Python face.

The compiled module is imported as a Python extension, so it works from any working directory; nothing is looked up
by name at run time.
"""
from __future__ import annotations

import os

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


def quantize(type_id: int, x: np.ndarray, nthreads: int | None = None, src_type: int | None = None) -> np.ndarray:
    """Quantize the rows (last axis) of an F32, F16 or BF16 (uint16 with src_type=BF16) matrix with ggml's reference
    algorithm; returns uint8 bytes shaped (rows, bytes per row). Raises NonFiniteError for NaN/Inf input."""
    x = np.ascontiguousarray(x)
    src_type = _SRC_TYPE[x.dtype] if src_type is None else src_type
    n_per_row = x.shape[-1]
    nrows = x.size // n_per_row if n_per_row else 0
    out = np.empty((nrows, row_size(type_id, n_per_row)), dtype=np.uint8)
    bad = _core.quantize(type_id, x, src_type, out, nrows, n_per_row, nthreads or default_threads())
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


def count_nonfinite(data: np.ndarray, type_id: int) -> int:
    """NaN/Inf elements in F32/F16/BF16 data."""
    return _core.count_nonfinite(np.ascontiguousarray(data), type_id)
