"""The GGUF file format: a memory-mapped reader and a streaming writer.

Reader: header, metadata and tensor infos are parsed once; tensor data is a view into the mapped file.

Writer:
The header, metadata and tensor infos are written first (every tensor's shape and type is known before any data is
read), then tensor data is streamed in, chunk by chunk, in the declared order. Nothing is buffered beyond one chunk.

Files are written under a temporary name in the destination folder and renamed on success; `-` means standard output,
for which the file is staged under $TMPDIR (so a failure never leaves a half-written model on the pipe).
"""
from __future__ import annotations

import contextlib
import errno
import math
import mmap
import os
import shutil
import struct
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType, GGML_QUANT_SIZES

from common.errors import UserError

GGUF_MAGIC = 0x46554747
GGUF_VERSION = 3
ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NAME = 64  # GGML_MAX_NAME: a tensor name's bytes and its NUL

_SCALAR_FORMATS = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i", GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}
_NUMPY_DTYPES = {
    GGUFValueType.UINT8: "<u1", GGUFValueType.INT8: "<i1", GGUFValueType.UINT16: "<u2", GGUFValueType.INT16: "<i2",
    GGUFValueType.UINT32: "<u4", GGUFValueType.INT32: "<i4", GGUFValueType.FLOAT32: "<f4", GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "<u8", GGUFValueType.INT64: "<i8", GGUFValueType.FLOAT64: "<f8",
}


@dataclass(frozen=True)
class KV:
    """One metadata entry. For arrays, `vtype` is ARRAY and `etype` the element type."""
    key: str
    vtype: GGUFValueType
    value: object
    etype: GGUFValueType | None = None


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy / PyTorch order (outermost first); GGUF stores it reversed
    ggml_type: GGMLQuantizationType

    @property
    def nbytes(self) -> int:
        block, size = GGML_QUANT_SIZES[self.ggml_type]
        return math.prod(self.shape) // block * size  # Python integers: no wrap-around


def _string(s: str) -> bytes:
    b = s.encode("utf-8", "surrogateescape")
    return struct.pack("<Q", len(b)) + b


def _value(vtype: GGUFValueType, value: object, etype: GGUFValueType | None) -> bytes:
    if vtype == GGUFValueType.STRING:
        return _string(value)  # type: ignore[arg-type]
    if vtype == GGUFValueType.ARRAY:
        assert etype is not None
        items = list(value) if not isinstance(value, np.ndarray) else value
        head = struct.pack("<IQ", int(etype), len(items))
        if etype == GGUFValueType.STRING:
            return head + b"".join(_string(s) for s in items)
        return head + np.asarray(items, dtype=_NUMPY_DTYPES[etype]).tobytes()
    return struct.pack(_SCALAR_FORMATS[vtype], value)


def _pad(n: int) -> int:
    return (-n) % ALIGNMENT


def encode_header(kvs: list[KV], tensors: list[TensorInfo]) -> bytes:
    """Everything that precedes the tensor data, including the padding to the data section."""
    parts = [struct.pack("<IIQQ", GGUF_MAGIC, GGUF_VERSION, len(tensors), len(kvs))]
    for kv in kvs:
        parts.append(_string(kv.key) + struct.pack("<I", int(kv.vtype)) + _value(kv.vtype, kv.value, kv.etype))
    offset = 0
    for t in tensors:
        dims = tuple(reversed(t.shape))
        parts.append(_string(t.name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, int(t.ggml_type), offset))
        offset += t.nbytes + _pad(t.nbytes)
    head = b"".join(parts)
    return head + b"\0" * _pad(len(head))


class TensorStream:
    """Writes tensor data in declared order, checking each tensor's byte count and padding it to the alignment."""

    def __init__(self, f: BinaryIO, tensors: list[TensorInfo]):
        self._f = f
        self._tensors = tensors
        self._index = 0

    def write_tensor(self, chunks: Iterator[bytes | memoryview | np.ndarray]) -> int:
        info = self._tensors[self._index]
        written = 0
        for chunk in chunks:
            mv = memoryview(chunk).cast("B") if not isinstance(chunk, bytes) else chunk
            self._f.write(mv)
            written += len(mv)
        if written != info.nbytes:
            raise AssertionError(f"{info.name}: wrote {written} bytes, expected {info.nbytes}")
        self._f.write(b"\0" * _pad(written))
        self._index += 1
        return written

    def check_complete(self) -> None:
        if self._index != len(self._tensors):
            raise AssertionError(f"wrote {self._index} of {len(self._tensors)} tensors")


_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EPIPE)


def _describe_oserror(e: OSError, path: Path | str) -> UserError:
    if e.errno == errno.ENOSPC:
        return UserError(f"no space left on device while writing {path}")
    if e.errno == errno.EDQUOT:
        return UserError(f"disk quota exceeded while writing {path}")
    if e.errno == errno.EPIPE:
        return UserError(f"{path} was closed before the model was fully written")
    return UserError(f"cannot write {path}: {e.strerror or e}")


RUN = 2 << 20  # a huge page (x86-64, arm64 with 4 KiB pages)


class RunWriter:
    """A file written in runs of RUN bytes at offsets that are multiples of RUN (the last run shorter). The page cache
    then holds what was written in folios of that size where the file system makes them (ext4 since Linux 6.16 does;
    writes of 64 KiB leave it in small pages), and a reader's mapping maps each with one page-table entry: the weights
    of a model just converted or quantized stream without a TLB miss every 4 KiB, which in a virtual machine is a
    two-level page walk (TinyLlama-shaped Q4_0 generation, 2 threads, from the file copied in runs of 2 MiB: 39.0 tok/s,
    in runs of 64 KiB: 36.1). Whole runs of a large write go out without a copy; the rest waits in a buffer."""

    def __init__(self, fd: int):
        self._f = os.fdopen(fd, "wb", buffering=0)
        self._buf = bytearray()

    def _out(self, data) -> None:
        view = memoryview(data)
        while view:
            view = view[self._f.write(view):]

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        n = len(view)
        if self._buf:  # the buffer is the start of a run: fill it
            take = min(RUN - len(self._buf), n)
            self._buf += view[:take]
            view = view[take:]
            if len(self._buf) == RUN:
                self._out(self._buf)
                self._buf.clear()
        if not self._buf:
            whole = len(view) // RUN * RUN
            if whole:
                self._out(view[:whole])
            self._buf += view[whole:]
        return n

    @property
    def closed(self) -> bool:
        return self._f.closed

    def close(self) -> None:
        if self._f.closed:
            return
        try:
            if self._buf:
                self._out(self._buf)
                self._buf.clear()
        finally:
            self._f.close()

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _stage_beside(dest: Path) -> tuple[int, Path]:
    """A new temporary file in `dest`'s folder (hidden, named after it): its descriptor and path."""
    folder = dest.parent if str(dest.parent) else Path(".")
    if not folder.is_dir():
        raise UserError(f"output folder {folder} does not exist")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=folder)
    except OSError as e:
        raise _describe_oserror(e, folder) from e
    return fd, Path(tmp_name)


def _publish(tmp: Path, dest: Path) -> None:
    """A completed temporary file renamed to its destination, with the permissions a new file gets."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, dest)


@contextlib.contextmanager
def atomic_output(dest: Path | str, *, log=None) -> Iterator[RunWriter]:
    """Open a file for writing that appears at `dest` only if the block completes.

    `dest` == "-" stages the file under $TMPDIR and copies it to standard output at the end. The temporary file is
    removed on any error, including KeyboardInterrupt.
    """
    to_stdout = str(dest) == "-"
    if to_stdout:
        folder = Path(tempfile.gettempdir())
        try:
            fd, tmp_name = tempfile.mkstemp(prefix="toolkit-stage-", suffix=".tmp", dir=folder)
        except OSError as e:
            raise _describe_oserror(e, folder) from e
        tmp = Path(tmp_name)
    else:
        dest = Path(dest)
        fd, tmp = _stage_beside(dest)
    if log and to_stdout:
        log(f"staging output in {tmp}")
    try:
        try:
            with RunWriter(fd) as f:
                yield f
            if to_stdout:
                with open(tmp, "rb") as f:
                    out = sys.stdout.buffer
                    shutil.copyfileobj(f, out, 1 << 22)
                    out.flush()
            else:
                _publish(tmp, dest)
        except OSError as e:
            if e.errno in _WRITE_ERRNOS:
                raise _describe_oserror(e, "standard output" if to_stdout else dest) from e
            raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


class AtomicOutputs:
    """Several files written one after the other (`next()` closes the current one and opens the next), which all
    appear at their destinations only when the block completes: on any error, none of them is left behind."""

    def __init__(self, dests: list[Path]):
        self._dests = [Path(d) for d in dests]
        self._staged: list[Path] = []
        self._file: RunWriter | None = None

    def next(self) -> RunWriter:
        self._close_current()
        dest = self._dests[len(self._staged)]
        fd, tmp = _stage_beside(dest)
        self._staged.append(tmp)
        self._file = RunWriter(fd)
        return self._file

    def _close_current(self) -> None:
        if self._file is not None:
            f, self._file = self._file, None
            self._guard(f.close)

    def _guard(self, action) -> None:
        try:
            action()
        except OSError as e:
            if e.errno in _WRITE_ERRNOS:
                raise _describe_oserror(e, self._dests[len(self._staged) - 1]) from e
            raise

    def __enter__(self) -> "AtomicOutputs":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        published: list[Path] = []
        try:
            if exc_type is None:
                self._close_current()
                if len(self._staged) != len(self._dests):
                    raise AssertionError(f"wrote {len(self._staged)} of {len(self._dests)} files")
                for tmp, dest in zip(self._staged, self._dests):
                    _publish(tmp, dest)
                    published.append(dest)
                published = []
        finally:
            if self._file is not None:
                with contextlib.suppress(OSError):
                    self._file.close()
            for path in self._staged + published:  # a failed rename takes back the files already renamed
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


# ---------------------------------------------------------------------------------------------------------------------
# Reader
# ---------------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorEntry:
    info: TensorInfo
    offset: int  # absolute byte offset of the data in the file
    part: int = 0  # the file of a split model it is in (common.ggufsplit), counted from 0


def _read_anonymous(f, size: int, path: Path) -> mmap.mmap:
    """The whole file read into an anonymous mapping (huge pages asked for before the pages are touched)."""
    # private: shared anonymous memory is shmem, which gets huge pages only where shmem_enabled allows them
    mm = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        if hasattr(mmap, "MADV_HUGEPAGE"):
            mm.madvise(mmap.MADV_HUGEPAGE)
        view = memoryview(mm)
        try:
            got = 0
            while got < size:
                n = f.readinto(view[got:got + (64 << 20)])
                if not n:
                    raise UserError(f"{path} shrank while it was read")
                got += n
        finally:
            view.release()
    except BaseException:
        mm.close()
        raise
    return mm


_MADV_POPULATE_READ = 22  # Linux 5.14; not named by Python's mmap module before 3.13


def _populate(mm: mmap.mmap) -> None:
    """A file mapping's pages faulted in now (as MAP_POPULATE would), huge pages asked for first: the pages that are
    not in the page cache yet are read in 2 MiB folios and mapped one entry each (see RunWriter)."""
    mm.madvise(mmap.MADV_HUGEPAGE)
    try:
        mm.madvise(_MADV_POPULATE_READ)
    except OSError:  # an older kernel: a read of every page
        if len(mm):
            int(np.frombuffer(mm, dtype=np.uint8)[::4096].sum())


class GGUFFile:
    """A GGUF file opened read-only: `kv` (key → KV, in file order), `tensors` (in file order), `data(entry)` views."""

    def __init__(self, path: Path | str, populate: bool = False, copy: bool = False):
        """populate: read the whole file into the page cache and map it now (as llama.cpp maps a model), so that
        the first use of the weights does not fault them in page by page. copy: read it into anonymous memory
        instead of mapping it (llama.cpp's --no-mmap), asking the kernel for huge pages: as much memory as the file,
        private to this process, in 2 MiB pages where the kernel gives them (fewer TLB misses while the weights
        stream from memory: one token's generation reads them all; here 0-10% faster generation, within the noise
        of this machine)."""
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path} does not exist")
        size = self.path.stat().st_size
        if size < 24:
            raise UserError(f"{self.path} is not a GGUF file (too short)")
        self._copied = copy
        with open(self.path, "rb") as f:
            if copy:
                self._mm = _read_anonymous(f, size, self.path)
            elif populate and sys.platform == "linux":
                self._mm = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
                _populate(self._mm)
            else:
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._buf = memoryview(self._mm)
        try:
            self._parse(size)
        except (struct.error, UnicodeDecodeError, ValueError, IndexError) as e:
            self.close()
            raise UserError(f"{self.path} is corrupt or truncated ({e})") from None
        except BaseException:
            self.close()
            raise

    def _parse(self, size: int) -> None:
        magic, version = struct.unpack_from("<II", self._buf, 0)
        if magic != GGUF_MAGIC:
            raise UserError(f"{self.path} is not a GGUF file (bad magic)")
        if version not in (2, 3):
            raise UserError(f"{self.path}: unsupported GGUF version {version}")
        n_tensors, n_kv = struct.unpack_from("<QQ", self._buf, 8)
        if n_tensors > size or n_kv > size:
            raise ValueError("impossible tensor or key count")
        self._pos = 24
        self.kv: dict[str, KV] = {}
        self._names: set[str] = set()
        for _ in range(n_kv):
            key = self._str()
            if key in self.kv:
                raise UserError(f"{self.path}: metadata key {key!r} is listed twice")
            vtype = GGUFValueType(self._u32())
            if vtype == GGUFValueType.ARRAY:
                etype = GGUFValueType(self._u32())
                count = self._u64()
                self.kv[key] = KV(key, vtype, self._array(etype, count), etype)
            else:
                self.kv[key] = KV(key, vtype, self._scalar(vtype))
        alignment = self._alignment()
        infos = []
        for _ in range(n_tensors):
            name = self._str()
            self._check_tensor_name(name)
            n_dims = self._u32()
            if not 1 <= n_dims <= MAX_DIMS:
                raise UserError(f"{self.path}: tensor {name} has {n_dims} dimensions (1 to {MAX_DIMS} allowed)")
            dims = struct.unpack_from(f"<{n_dims}Q", self._buf, self._pos)
            self._pos += 8 * n_dims
            ttype = GGMLQuantizationType(self._u32())
            offset = self._u64()
            infos.append((self._tensor_info(name, dims, ttype), offset))
        data_start = self._pos + (-self._pos) % alignment
        self.tensors = self._place(infos, data_start, alignment, size)

    def _alignment(self) -> int:
        """general.alignment: an unsigned 32-bit power of two, as llama.cpp requires (32 when absent)."""
        kv = self.kv.get("general.alignment")
        if kv is None:
            return ALIGNMENT
        if kv.vtype != GGUFValueType.UINT32 or kv.value == 0 or kv.value & (kv.value - 1):
            raise UserError(f"{self.path}: general.alignment must be a power of two stored as uint32, got "
                            f"{kv.value!r} ({kv.vtype.name})")
        return int(kv.value)

    def _tensor_info(self, name: str, dims: tuple[int, ...], ttype: GGMLQuantizationType) -> TensorInfo:
        """A tensor's declared shape (GGUF order `dims`) checked before any use: every dimension at least 1 and below
        2^63, the element count below 2^63 and its rows whole blocks of its type."""
        if name in self._names:
            raise UserError(f"{self.path}: tensor {name} is listed twice")
        self._names.add(name)
        if any(not 1 <= d < 2**63 for d in dims) or math.prod(dims) >= 2**63:
            raise UserError(f"{self.path}: tensor {name} has an impossible shape {list(reversed(dims))} "
                            "(every dimension must be at least 1, the element count below 2^63)")
        if ttype not in GGML_QUANT_SIZES:
            raise UserError(f"{self.path}: tensor {name} has type {ttype.name}, which has no known block size")
        block = GGML_QUANT_SIZES[ttype][0]
        if dims[0] % block:
            raise UserError(f"{self.path}: tensor {name} has rows of {dims[0]} elements, not whole {ttype.name} "
                            f"blocks of {block}")
        return TensorInfo(name, tuple(reversed(dims)), ttype)

    def _check_tensor_name(self, name: str) -> None:
        """UTF-8 without NUL, shorter than llama.cpp's GGML_MAX_NAME (64 bytes): the name the engine is handed."""
        raw = name.encode("utf-8", "surrogateescape")
        if len(raw) >= MAX_NAME or "\0" in name or raw != name.encode("utf-8", "replace"):
            raise UserError(f"{self.path}: tensor name {raw[:80]!r} is not a name (UTF-8 without NUL, under "
                            f"{MAX_NAME} bytes)")

    def _place(self, infos: list[tuple[TensorInfo, int]], data_start: int, alignment: int,
               size: int) -> list[TensorEntry]:
        """The tensors at their offsets, each aligned, inside the file and inside its own slot (no two overlap)."""
        entries = []
        for info, offset in infos:
            if offset % alignment:
                raise UserError(f"{self.path}: tensor {info.name} is at offset {offset}, not a multiple of the "
                                f"alignment {alignment}")
            entry = TensorEntry(info, data_start + offset)
            if entry.offset + info.nbytes > size:
                raise UserError(f"{self.path} is truncated: tensor {info.name} ends at byte "
                                f"{entry.offset + info.nbytes} but the file has {size} bytes")
            entries.append(entry)
        in_order = sorted(entries, key=lambda e: e.offset)
        for a, b in zip(in_order, in_order[1:]):
            if a.offset + a.info.nbytes > b.offset:
                raise UserError(f"{self.path}: the data of tensors {a.info.name} and {b.info.name} overlap")
        return entries

    # -- primitive readers ---------------------------------------------------------------------------------------
    def _u32(self) -> int:
        (v,) = struct.unpack_from("<I", self._buf, self._pos)
        self._pos += 4
        return v

    def _u64(self) -> int:
        (v,) = struct.unpack_from("<Q", self._buf, self._pos)
        self._pos += 8
        return v

    def _str(self) -> str:
        n = self._u64()
        end = self._pos + n
        if end > len(self._buf):
            raise ValueError("string runs past the end of the file")
        s = bytes(self._buf[self._pos:end]).decode("utf-8", "surrogateescape")
        self._pos = end
        return s

    def _scalar(self, vtype: GGUFValueType):
        if vtype == GGUFValueType.STRING:
            return self._str()
        fmt = _SCALAR_FORMATS[vtype]
        (v,) = struct.unpack_from(fmt, self._buf, self._pos)
        self._pos += struct.calcsize(fmt)
        return v

    def _array(self, etype: GGUFValueType, count: int):
        if etype == GGUFValueType.STRING:
            return [self._str() for _ in range(count)]
        if etype == GGUFValueType.ARRAY:
            raise ValueError("nested arrays are not supported")
        dt = np.dtype(_NUMPY_DTYPES[etype])
        if count > (len(self._buf) - self._pos) // dt.itemsize:
            raise ValueError(f"an array of {count} {etype.name} values runs past the end of the file")
        arr = np.frombuffer(self._buf, dtype=dt, count=count, offset=self._pos).copy()
        self._pos += dt.itemsize * count
        return arr

    # -- access --------------------------------------------------------------------------------------------------
    def value(self, key: str, default=None):
        kv = self.kv.get(key)
        return default if kv is None else kv.value

    def data(self, entry: TensorEntry) -> np.ndarray:
        """The tensor's bytes as a uint8 view of the mapped file."""
        return np.frombuffer(self._buf, dtype=np.uint8, count=entry.info.nbytes, offset=entry.offset)

    def release(self, entry: TensorEntry) -> None:
        """Give back the resident pages of a tensor's data (they are read again from the file if touched; a copy
        keeps them, as it could not read them again)."""
        if self._copied:
            return
        start = entry.offset - entry.offset % mmap.PAGESIZE
        length = entry.offset + entry.info.nbytes - start
        if length > 0:
            self._mm.madvise(mmap.MADV_DONTNEED, start, length)

    def close(self) -> None:
        try:
            self._buf.release()
            self._mm.close()
        except (BufferError, AttributeError):
            pass

    def __enter__(self) -> "GGUFFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
