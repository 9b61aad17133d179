"""Shared test helpers: tiny checkpoints cached per session, conversion, reading GGUF back with gguf-py."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from gguf import GGUFReader

REPO = Path(__file__).resolve().parent.parent
TOOLKIT = [sys.executable, "-m", "toolkit"]


def run_toolkit(*args, env=None, **kw) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, **(env or {}))
    full_env.pop("COLUMNS", None)
    return subprocess.run([*TOOLKIT, *map(str, args)], capture_output=True, text=kw.pop("text", True),
                          env=full_env, cwd=kw.pop("cwd", REPO), **kw)


def fields(reader: GGUFReader) -> dict:
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def tensors(reader: GGUFReader) -> dict:
    """name -> (numpy-order shape, type name, data as stored)."""
    out = {}
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape))
        data = np.asarray(t.data)
        if t.tensor_type.name == "BF16":  # gguf-py hands BF16 data over as raw bytes
            data = data.view(np.uint16)
        out[t.name] = (shape, t.tensor_type.name, data.reshape(shape) if data.size else data)
    return out
