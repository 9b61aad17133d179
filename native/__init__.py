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

_TYPE_OF_DTYPE = {np.dtype(np.float32): F32, np.dtype(np.float16): F16}


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def convert_into(src: np.ndarray, src_type: int, dst: np.ndarray, dst_type: int, nthreads: int | None = None) -> None:
    """Convert the elements of the contiguous array `src` (stored as `src_type`) into `dst` (stored as `dst_type`).

    BF16 data is carried in uint16 arrays, since numpy has no bfloat16.
    """
    _core.convert(src, src_type, dst, dst_type, nthreads or default_threads())


cpu_features = _core.cpu_features
set_force_scalar = _core.set_force_scalar
