"""Importance matrices for `quantize --imatrix`: llama.cpp b11434's GGUF imatrix files (as llama-imatrix writes them:
per matrix `<name>.in_sum2` sums of squared activations and `<name>.counts` per expert, the `imatrix.*` keys) and the
legacy `.dat` files, read and normalised as llama-quantize reads them (common/imatrix-loader.cpp and
tools/quantize/quantize.cpp), then filtered by --include-weights/--exclude-weights."""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import Keys

from common.errors import UserError
from common.ggufio import GGUFFile

# the keys llama-quantize adds to a file quantized with an importance matrix (LLM_KV_QUANTIZE_IMATRIX_*)
KEY_FILE = "quantize.imatrix.file"
KEY_DATASET = "quantize.imatrix.dataset"
KEY_N_ENTRIES = "quantize.imatrix.entries_count"
KEY_N_CHUNKS = "quantize.imatrix.chunks_count"
KV_STRING_MAX = 127  # llama_model_kv_override.val_str holds 128 bytes with the NUL

_SUFFIXES = (".in_sum2", ".counts", ".in_sum")


@dataclass
class ImportanceMatrix:
    path: str                                   # as given: llama-quantize records it in quantize.imatrix.file
    weights: dict[str, np.ndarray] = field(default_factory=dict)  # tensor name -> float32 (n_expert * ncols)
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0

    def for_tensor(self, name: str) -> np.ndarray | None:
        return self.weights.get(name)


def load(path: str | Path) -> ImportanceMatrix:
    """The per-column weights of every matrix in an imatrix file (GGUF or legacy .dat), normalised: sums divided
    by their counts (a column group with no count weighs 1). Non-finite weights are refused, as llama.cpp refuses
    them."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"imatrix file {path} does not exist")
    with open(p, "rb") as f:
        magic = f.read(4)
    m = _load_gguf(p, str(path)) if magic == b"GGUF" else _load_legacy(p, str(path))
    for name, w in m.weights.items():
        if not np.isfinite(w).all():
            raise UserError(f"imatrix {path}: entry {name} contains non-finite values")
    return m


def select(m: ImportanceMatrix, include: list[str], exclude: list[str]) -> ImportanceMatrix:
    """llama-quantize's --exclude-weights / --include-weights: entries whose name contains one of the strings are
    dropped / kept (not both at once)."""
    if include and exclude:
        raise UserError("--include-weights and --exclude-weights cannot be used together")
    weights = m.weights
    if exclude:
        weights = {k: v for k, v in weights.items() if not any(s in k for s in exclude)}
    if include:
        weights = {k: v for k, v in weights.items() if any(s in k for s in include)}
    return ImportanceMatrix(m.path, weights, m.datasets, m.chunk_count)


def metadata(m: ImportanceMatrix) -> list[tuple[str, str | int]]:
    """The keys llama-quantize appends for a non-empty matrix, in its order: file, first dataset, entries, chunks."""
    def clip(s: str) -> str:
        return s.encode("utf-8")[:KV_STRING_MAX].decode("utf-8", "ignore")

    out: list[tuple[str, str | int]] = [(KEY_FILE, clip(m.path))]
    if m.datasets:
        out.append((KEY_DATASET, clip(m.datasets[0])))
    out.append((KEY_N_ENTRIES, len(m.weights)))
    if m.chunk_count > 0:
        out.append((KEY_N_CHUNKS, m.chunk_count))
    return out


def save(path: str | Path, entries: dict, datasets: list[str], chunk_count: int, chunk_size: int) -> None:
    """Write an importance matrix in llama-imatrix b11434's GGUF layout: general.type "imatrix", the imatrix.* keys,
    then per matrix (by name) `<name>.in_sum2` (n_expert x cols), `<name>.counts` (n_expert x 1) and `<name>.in_sum`;
    entries: {name: object with sum2, sum (float32 [n_expert, cols]) and counts (n_expert)}. The per-tensor
    statistics llama-imatrix adds for its own reports are not written (llama-quantize does not read them). Written
    under a temporary name, renamed when complete."""
    from gguf import GGUFValueType as V
    from common.ggufio import KV, TensorInfo, TensorStream, atomic_output, encode_header
    kvs = [KV("general.type", V.STRING, "imatrix"),
           KV(Keys.IMatrix.DATASETS, V.ARRAY, list(datasets), V.STRING),
           KV(Keys.IMatrix.CHUNK_COUNT, V.UINT32, chunk_count),
           KV(Keys.IMatrix.CHUNK_SIZE, V.UINT32, chunk_size)]
    arrays = []
    for name in sorted(entries):
        e = entries[name]
        n = len(e.counts)
        arrays += [(f"{name}.in_sum2", _as_ggml(np.ascontiguousarray(e.sum2, np.float32).reshape(n, -1))),
                   (f"{name}.counts", _as_ggml(np.asarray(e.counts, np.float32).reshape(n, 1))),
                   (f"{name}.in_sum", _as_ggml(np.ascontiguousarray(e.sum, np.float32).reshape(n, -1)))]
    infos = [TensorInfo(name, a.shape, T.F32) for name, a in arrays]
    with atomic_output(path) as f:
        f.write(encode_header(kvs, infos))
        stream = TensorStream(f, infos)
        for _, a in arrays:
            stream.write_tensor([a])
        stream.check_complete()


def _as_ggml(a: np.ndarray) -> np.ndarray:
    """The array with the dimensions ggml writes: outer dimensions of 1 dropped (ggml_n_dims), at least one."""
    shape = list(a.shape)
    while len(shape) > 1 and shape[0] == 1:
        shape.pop(0)
    return a.reshape(shape)


def _load_gguf(p: Path, given: str) -> ImportanceMatrix:
    with GGUFFile(p) as g:
        if not g.tensors:
            raise UserError(f"imatrix {given} has no data")
        keys = Keys.IMatrix
        if not all(k in g.kv for k in (keys.DATASETS, keys.CHUNK_COUNT, keys.CHUNK_SIZE)):
            raise UserError(f"imatrix {given} lacks its metadata ({keys.DATASETS}, {keys.CHUNK_COUNT}, "
                            f"{keys.CHUNK_SIZE})")
        datasets = g.value(keys.DATASETS)
        datasets = [str(d) for d in datasets] if isinstance(datasets, (list, tuple, np.ndarray)) else []
        parts: dict[str, dict[str, object]] = {}
        for e in g.tensors:
            for suffix in _SUFFIXES:
                if e.info.name.endswith(suffix):
                    parts.setdefault(e.info.name[:-len(suffix)], {})[suffix] = e
                    break
        weights = {}
        for name in sorted(parts):
            sums, counts, in_sum = (parts[name].get(s) for s in _SUFFIXES)
            if sums is None or counts is None or (in_sum is not None and _size(in_sum) != _size(sums)):
                raise UserError(f"imatrix {given}: mismatched sums and counts for {name}")
            if sums.info.ggml_type != T.F32 or counts.info.ggml_type != T.F32:
                raise UserError(f"imatrix {given}: sums and counts for {name} must be F32")
            s = np.array(g.data(sums).view(np.float32))
            raw = g.data(counts).view(np.float32).astype(np.float64)
            n = (np.sign(raw) * np.floor(np.abs(raw) + 0.5)).astype(np.int64)  # std::lround
            if s.size % n.size:
                raise UserError(f"imatrix {given}: {name} has {s.size} sums for {n.size} counts")
            s = s.reshape(n.size, -1)
            c = n.astype(np.float32)[:, None]
            w = np.where(c > 0, s / np.where(c > 0, c, np.float32(1)), np.float32(1)).astype(np.float32)
            weights[name] = w.reshape(-1)
        return ImportanceMatrix(given, weights, datasets, int(g.value(keys.CHUNK_COUNT)))


def _size(entry) -> int:
    return int(np.prod(entry.info.shape))


def _load_legacy(p: Path, given: str) -> ImportanceMatrix:
    """int32 entry count; per entry int32 name length, the name, int32 calls, int32 value count, float32 values
    (sums already divided by their counts and multiplied by the calls); optionally int32 chunks, int32 length and
    the dataset name."""
    data = p.read_bytes()
    pos = 0

    def take(fmt: str):
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise UserError(f"imatrix {given} is not an imatrix file (truncated at byte {pos})")
        v = struct.unpack_from(fmt, data, pos)
        pos += size
        return v

    (n_entries,) = take("<i")
    if n_entries < 1:
        raise UserError(f"imatrix {given} has no data")
    weights = {}
    for i in range(n_entries):
        (length,) = take("<i")
        if length < 0:
            raise UserError(f"imatrix {given}: bad name length for entry {i + 1}")
        (raw,) = take(f"<{length}s")
        name = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        ncall, nval = take("<ii")
        if nval < 1:
            raise UserError(f"imatrix {given}: bad value count for entry {i + 1}")
        sums = np.frombuffer(data, np.float32, nval, pos) if pos + 4 * nval <= len(data) else None
        if sums is None:
            raise UserError(f"imatrix {given} is not an imatrix file (truncated at byte {pos})")
        pos += 4 * nval
        weights[name] = (sums / np.float32(ncall)).astype(np.float32) if ncall > 0 else sums.copy()
    chunks, datasets = 0, []
    if pos + 4 <= len(data):
        (chunks,) = take("<i")
        if pos + 4 <= len(data):
            (length,) = take("<i")
            if length > 0 and pos + length <= len(data):
                datasets.append(data[pos:pos + length].split(b"\0", 1)[0].decode("utf-8", "replace"))
    return ImportanceMatrix(given, weights, datasets, chunks)
