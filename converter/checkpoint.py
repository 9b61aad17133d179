"""Lazy, memory-mapped access to the tensors of a Hugging Face checkpoint folder.

Supported layouts: `model.safetensors`, sharded safetensors with `model.safetensors.index.json`, `pytorch_model.bin`,
and sharded `.bin` with `pytorch_model.bin.index.json`. Safetensors headers are parsed here and the data is mapped with
mmap; `.bin` files are opened with `torch.load(weights_only=True, mmap=True)`, which never runs pickled code. Nothing is
read until a tensor's data is asked for, and the pages of a tensor are given back once it has been converted, so the
resident memory stays about one tensor whatever the model size.

A `.bin` file in PyTorch's legacy (non-zip) format cannot be memory-mapped: it is loaded one shard at a time and its
tensors are staged in a file under $TMPDIR (removed on close), so memory stays bounded by one shard.
"""
from __future__ import annotations

import ctypes
import json
import math
import mmap
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

import numpy as np

from common.errors import UserError

# Source element types we convert from; BF16 is carried as uint16 (numpy has no bfloat16).
NUMPY_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}
_OTHER_SIZES = {"F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
_MAX_HEADER = 100 * 1024 * 1024
_PAGE = mmap.PAGESIZE

_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


def _drop_pages(arr: np.ndarray) -> None:
    """Give back the resident pages of a file-backed, read-only mapping (they are re-read from the file if touched)."""
    if arr.nbytes == 0:
        return
    start = arr.__array_interface__["data"][0]
    lo = start - start % _PAGE
    _libc.madvise(lo, start + arr.nbytes - lo, mmap.MADV_DONTNEED)


@dataclass
class SourceTensor:
    """A tensor in the checkpoint, not yet read. `dtype` is the safetensors name (F32, F16, BF16, I64, ...)."""
    name: str
    shape: tuple[int, ...]
    dtype: str
    file: Path
    _load: Callable[[], np.ndarray] = field(repr=False)
    _mapped: bool = field(default=True, repr=False)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * NUMPY_DTYPES[self.dtype].itemsize

    def require_supported_dtype(self) -> None:
        if self.dtype not in NUMPY_DTYPES:
            raise UserError(f"tensor {self.name} in {self.file.name} has dtype {self.dtype}; "
                            f"supported: {', '.join(NUMPY_DTYPES)}")

    def array(self) -> np.ndarray:
        """The raw data as stored (BF16 as uint16), backed by the mapped file where possible."""
        return self._load()

    def release(self, arr: np.ndarray) -> None:
        if self._mapped:
            _drop_pages(arr)


class Checkpoint:
    """The tensors of a checkpoint folder, by Hugging Face name."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.tensors: dict[str, SourceTensor] = {}
        self.phantom: set[str] = set()  # listed in an index json but present in no shard
        self._maps: list[mmap.mmap] = []
        self._staging: list[Path] = []
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    # -- layout ---------------------------------------------------------------------------------------------------
    def _open(self) -> None:
        f = self.folder
        for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                                   ("pytorch_model.bin.index.json", "pytorch_model.bin")):
            if (f / index_name).is_file():
                self._open_index(f / index_name)
                return
            if (f / single).is_file():
                self._open_file(f / single)
                return
        loose = sorted(f.glob("*.safetensors"))
        if not loose:
            raise UserError(f"no weights in {f}: expected model.safetensors, model.safetensors.index.json, "
                            "pytorch_model.bin or pytorch_model.bin.index.json")
        for p in loose:
            self._open_file(p)

    def _open_index(self, index: Path) -> None:
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            assert isinstance(weight_map, dict)
        except (ValueError, KeyError, TypeError, AssertionError, RecursionError):
            raise UserError(f"{index.name} is not a valid index (no weight_map)") from None
        shards = list(dict.fromkeys(weight_map.values()))
        for shard in shards:
            path = self._shard_path(shard, index.name)
            if not path.is_file():
                raise UserError(f"shard {shard} listed in {index.name} is missing")
            self._open_file(path)
        self.phantom = {name for name in weight_map if name not in self.tensors}

    def _shard_path(self, shard, index_name: str) -> Path:
        """A shard named by the index: a relative path below the model folder (no absolute path, no `..`), nothing
        else. The name is confined, not the file: a shard that is a symbolic link (as in a Hugging Face cache, whose
        snapshot files link to ../../blobs) is followed, as model.safetensors itself would be."""
        if not isinstance(shard, str) or not shard or "\0" in shard:
            raise UserError(f"{index_name}: weight_map values must be file names, got {shard!r}")
        name = PurePosixPath(shard)
        if name.is_absolute() or ".." in name.parts or "\\" in shard or not name.name:
            raise UserError(f"{index_name}: shard {shard!r} is outside the model folder")
        return self.folder / name

    def _open_file(self, path: Path) -> None:
        if path.suffix == ".safetensors":
            found = self._open_safetensors(path)
        else:
            found = self._open_bin(path)
        for t in found:
            self.tensors.setdefault(t.name, t)

    # -- safetensors ----------------------------------------------------------------------------------------------
    def _open_safetensors(self, path: Path) -> list[SourceTensor]:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            raw = fh.read(8)
            n = int.from_bytes(raw, "little") if len(raw) == 8 else -1
            if n < 2 or n > min(size - 8, _MAX_HEADER):
                raise UserError(f"{path.name}: corrupt safetensors header (header length {n}, file size {size})")
            try:
                header = json.loads(fh.read(n))
                if not isinstance(header, dict):
                    raise ValueError
            except (ValueError, UnicodeDecodeError, RecursionError):
                raise UserError(f"{path.name}: corrupt safetensors header (not a JSON object)") from None
            data_start, data_len = 8 + n, size - 8 - n
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        if mm is not None:
            self._maps.append(mm)
        out = []
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            dtype, shape, begin, end = _header_entry(path, name, entry, data_len)
            out.append(SourceTensor(name, shape, dtype, path, _mmap_loader(mm, data_start + begin, dtype, shape)))
        return out

    # -- pytorch .bin ---------------------------------------------------------------------------------------------
    def _open_bin(self, path: Path) -> list[SourceTensor]:
        import pickle

        import torch

        legacy = not zipfile.is_zipfile(path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=not legacy)
        except pickle.UnpicklingError as e:
            raise UserError(f"{path.name}: refusing to load, it contains objects other than tensors "
                            f"(only weights_only loading is allowed): {_first_line(e)}") from None
        except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as e:
            raise UserError(f"{path.name}: cannot read PyTorch checkpoint: {_first_line(e)}") from None
        if not isinstance(state, dict):
            raise UserError(f"{path.name}: expected a dict of tensors, found {type(state).__name__}")
        names = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
                 torch.int64: "I64", torch.int32: "I32", torch.bool: "BOOL", torch.uint8: "U8"}
        tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
        if legacy:
            return self._stage(path, tensors, names)
        return [SourceTensor(k, tuple(v.shape), names.get(v.dtype, str(v.dtype)), path, _torch_loader(v))
                for k, v in tensors.items()]

    def _stage(self, path: Path, tensors: dict, names: dict) -> list[SourceTensor]:
        """Copy the tensors of a shard that cannot be memory-mapped to a staging file under $TMPDIR, then map it."""
        fd, stage = tempfile.mkstemp(prefix="toolkit-stage-", suffix=".bin")
        self._staging.append(Path(stage))
        layout = []
        with os.fdopen(fd, "wb") as fh:
            for k, v in tensors.items():
                dtype = names.get(v.dtype, str(v.dtype))
                if dtype not in NUMPY_DTYPES:
                    continue
                arr = _torch_loader(v)()
                layout.append((k, tuple(v.shape), dtype, fh.tell()))
                fh.write(np.ascontiguousarray(arr).tobytes())
        tensors.clear()
        with open(stage, "rb") as fh:
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if os.fstat(fh.fileno()).st_size else None
        if mm is not None:
            self._maps.append(mm)
        return [SourceTensor(k, shape, dtype, path, _mmap_loader(mm, off, dtype, shape))
                for k, shape, dtype, off in layout]

    def close(self) -> None:
        self.tensors.clear()
        for mm in self._maps:
            try:
                mm.close()
            except BufferError:  # a numpy view is still alive somewhere; the map goes with it
                pass
        self._maps.clear()
        for p in self._staging:
            p.unlink(missing_ok=True)
        self._staging.clear()

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _first_line(e: BaseException) -> str:
    """An exception's message on one line (its type when it has none, as EOFError from an empty file)."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63


def _header_entry(path: Path, name: str, entry, data_len: int) -> tuple[str, tuple[int, ...], int, int]:
    """One tensor of a safetensors header, checked as its format defines it: {"dtype": str, "shape": [int ≥ 0, ...],
    "data_offsets": [begin, end]}, its bytes those of its shape and dtype, inside the data section."""
    if not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str) or \
            not isinstance(entry.get("shape"), list) or not all(_is_count(d) for d in entry["shape"]) or \
            not isinstance(entry.get("data_offsets"), list) or len(entry["data_offsets"]) != 2 or \
            not all(_is_count(o) for o in entry["data_offsets"]):
        raise UserError(f"{path.name}: corrupt safetensors header entry for {name} (expected dtype, shape and "
                        "data_offsets)")
    dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
    itemsize = NUMPY_DTYPES[dtype].itemsize if dtype in NUMPY_DTYPES else _OTHER_SIZES.get(dtype)
    if end < begin or (itemsize and end - begin != math.prod(shape) * itemsize):
        raise UserError(f"{path.name}: corrupt safetensors header: {name} has {end - begin} bytes "
                        f"for shape {list(shape)} of {dtype}")
    if end > data_len:
        raise UserError(f"{path.name} is truncated: {name} ends at byte {end} of its data but the data has "
                        f"{data_len} bytes")
    return dtype, shape, begin, end


def _mmap_loader(mm: mmap.mmap | None, offset: int, dtype: str, shape: tuple[int, ...]) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        dt = NUMPY_DTYPES[dtype]
        count = int(np.prod(shape, dtype=np.int64))
        if count == 0:
            return np.empty(shape, dt)
        return np.frombuffer(mm, dtype=dt, count=count, offset=offset).reshape(shape)
    return load


def _torch_loader(t) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import torch
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy().view(np.uint16)
        return t.numpy()
    return load
