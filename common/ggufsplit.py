"""Split GGUF models, as llama.cpp writes and reads them: a model in N files `PREFIX-00001-of-0000N.gguf` (named as
llama_split_path names them), each a GGUF file of its own with the `split.no`, `split.count` and `split.tensors.count`
keys, the first holding all the metadata and the others only these keys; tensors in file order, part after part.

Reading: `open_gguf(path)` opens a model given its only or first file, as one GGUFFile-like view of all its parts
(the tensors of every part, each entry knowing its part) after checking that every part is there and is the part its
name says, as llama.cpp's loader checks them.

Writing: `plan_parts` groups the tensors as llama-gguf-split does (--split-max-size counts each tensor's padded data,
--split-max-tensors counts tensors), `split_output` writes them, all parts staged and renamed together.
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np
from gguf import GGUFValueType, Keys

from common.errors import UserError
from common.ggufio import (KV, AtomicOutputs, GGUFFile, TensorEntry, TensorInfo, TensorStream, atomic_output,
                           encode_header)

SPLIT_NO = Keys.Split.LLM_KV_SPLIT_NO
SPLIT_COUNT = Keys.Split.LLM_KV_SPLIT_COUNT
SPLIT_TENSORS_COUNT = Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT
SPLIT_KEYS = (SPLIT_NO, SPLIT_COUNT, SPLIT_TENSORS_COUNT)

# The order the split keys end up in: llama-gguf-split sets split.count last (once the number of parts is known),
# llama-quantize --keep-split sets the three in turn.
GGUF_SPLIT_ORDER = (SPLIT_NO, SPLIT_TENSORS_COUNT, SPLIT_COUNT)
QUANTIZE_ORDER = (SPLIT_NO, SPLIT_COUNT, SPLIT_TENSORS_COUNT)

_MAX_PARTS = 99999  # five digits in the file names
_UNITS = {"M": 1000 ** 2, "G": 1000 ** 3}


# ---------------------------------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------------------------------

def split_path(prefix: str | Path, no: int, count: int) -> Path:
    """The file of part `no` (from 0) of `count`: llama_split_path's `PREFIX-00001-of-00003.gguf`."""
    return Path(f"{prefix}-{no + 1:05d}-of-{count:05d}.gguf")


def split_prefix(path: str | Path, no: int, count: int) -> str | None:
    """The prefix of a part's file name (llama_split_prefix), or None when the name is not that of part `no`."""
    tail = f"-{no + 1:05d}-of-{count:05d}.gguf"
    s = str(path)
    return s[:-len(tail)] if s.endswith(tail) and len(s) > len(tail) else None


def output_prefix(dest: str | Path) -> str:
    """The prefix of the parts written for `dest`: the name without its `.gguf` (as llama-quantize --keep-split and
    convert_hf_to_gguf.py take it)."""
    s = str(dest)
    return s[:-len(".gguf")] if s.endswith(".gguf") and len(s) > len(".gguf") else s


def parse_size(text: str) -> int:
    """llama-gguf-split's --split-max-size: a positive whole number of megabytes (M) or gigabytes (G), in bytes."""
    m = re.fullmatch(r"\s*(\d+)\s*([MG])\s*", text)
    if not m or int(m.group(1)) <= 0:
        raise UserError(f"--split-max-size {text!r}: expected a positive whole number followed by M (megabytes) or "
                        "G (gigabytes), e.g. 50G")
    return int(m.group(1)) * _UNITS[m.group(2)]


# ---------------------------------------------------------------------------------------------------------------------
# Planning
# ---------------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SplitOptions:
    """How to cut a model into parts: at most `max_size` bytes of tensor data or `max_tensors` tensors per part
    (one of them), optionally a first part with the metadata only."""
    max_size: int | None = None
    max_tensors: int | None = None
    no_tensor_first_split: bool = False

    def __post_init__(self):
        if self.max_size is not None and self.max_tensors is not None:
            raise UserError("either --split-max-size or --split-max-tensors can be given, not both")
        if self.max_tensors is not None and self.max_tensors < 1:
            raise UserError(f"--split-max-tensors must be at least 1, got {self.max_tensors}")


def split_options(max_size: str | None, max_tensors: int | None,
                  no_tensor_first_split: bool = False) -> SplitOptions | None:
    """The CLI's split flags as options, or None when the output is one file."""
    if max_size is None and max_tensors is None:
        if no_tensor_first_split:
            raise UserError("--no-tensor-first-split needs --split-max-size or --split-max-tensors")
        return None
    return SplitOptions(parse_size(max_size) if max_size is not None else None, max_tensors, no_tensor_first_split)


def _padded(info: TensorInfo) -> int:
    return info.nbytes + (-info.nbytes) % 32


def plan_parts(infos: list[TensorInfo], opts: SplitOptions) -> list[int]:
    """The number of tensors in each part, tensors kept in order, cut as llama-gguf-split cuts them (a tensor larger
    than --split-max-size alone goes in a part of its own)."""
    counts = [0] if opts.no_tensor_first_split else []
    current, size = 0, 0
    for i, info in enumerate(infos):
        n = _padded(info)
        if opts.max_size is not None:
            cut = current > 0 and size + n > opts.max_size
        else:
            cut = i > 0 and i % opts.max_tensors == 0
        if cut:
            counts.append(current)
            current, size = 0, 0
        current += 1
        size += n
    counts.append(current)
    if len(counts) > _MAX_PARTS:
        raise UserError(f"the model would be split in {len(counts)} files, more than the {_MAX_PARTS} split file "
                        "names can number")
    return counts


def split_kvs(no: int, count: int, n_tensors: int, order: tuple[str, ...]) -> list[KV]:
    """A part's split keys, in `order`."""
    kvs = {SPLIT_NO: KV(SPLIT_NO, GGUFValueType.UINT16, no),
           SPLIT_COUNT: KV(SPLIT_COUNT, GGUFValueType.UINT16, count),
           SPLIT_TENSORS_COUNT: KV(SPLIT_TENSORS_COUNT, GGUFValueType.INT32, n_tensors)}
    return [kvs[k] for k in order]


def without_split_keys(kvs: list[KV]) -> list[KV]:
    return [kv for kv in kvs if kv.key not in SPLIT_KEYS]


def part_headers(kvs: list[KV], infos: list[TensorInfo], counts: list[int],
                 order: tuple[str, ...] = GGUF_SPLIT_ORDER) -> list[tuple[list[KV], list[TensorInfo]]]:
    """Each part's metadata and tensors: the first part has `kvs` then its split keys, the others their split keys
    only."""
    n = len(counts)
    out, start = [], 0
    for no, k in enumerate(counts):
        head = without_split_keys(kvs) if no == 0 else []
        out.append((head + split_kvs(no, n, len(infos), order), infos[start:start + k]))
        start += k
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------------

class _PartStreams:
    """TensorStream's interface over the parts of a split output: each tensor goes to its part, whose file is
    opened (header written) when its first tensor comes."""

    def __init__(self, files: AtomicOutputs, parts: list[tuple[list[KV], list[TensorInfo]]]):
        self._files = files
        self._parts = parts
        self._part = -1
        self._stream: TensorStream | None = None
        self._open_until_tensors()

    def _open_next(self) -> None:
        if self._stream is not None:
            self._stream.check_complete()
        self._part += 1
        kvs, infos = self._parts[self._part]
        f = self._files.next()
        f.write(encode_header(kvs, infos))
        self._stream = TensorStream(f, infos)
        self._left = len(infos)

    def _open_until_tensors(self) -> None:
        """Open parts until one still expects tensors (parts without tensors are written whole on the way)."""
        self._open_next()
        while self._left == 0 and self._part + 1 < len(self._parts):
            self._open_next()

    def write_tensor(self, chunks) -> int:
        if self._left == 0:
            self._open_until_tensors()
        n = self._stream.write_tensor(chunks)
        self._left -= 1
        return n

    def check_complete(self) -> None:
        if self._left or self._part + 1 != len(self._parts):
            raise AssertionError(f"wrote {self._part + 1} of {len(self._parts)} split files")
        self._stream.check_complete()


def split_paths(dest: str | Path, n: int) -> list[Path]:
    """The files of a model written in `n` parts for the output path `dest`."""
    if str(dest) == "-":
        raise UserError("a split model cannot be written to standard output")
    prefix = output_prefix(dest)
    return [split_path(prefix, i, n) for i in range(n)]


@contextlib.contextmanager
def gguf_output(dest: str | Path, kvs: list[KV], infos: list[TensorInfo], counts: list[int] | None = None, *,
                order: tuple[str, ...] = GGUF_SPLIT_ORDER, log=None) -> Iterator:
    """Write a model: one file at `dest` (counts None), or the parts `counts` gives (tensors per part, as
    plan_parts makes them) at split_paths(dest). Yields a TensorStream (write_tensor, check_complete) for the
    tensors in order; the header(s) are written for the caller. Nothing appears unless the block completes."""
    if counts is None:
        with atomic_output(dest, log=log) as f:
            f.write(encode_header(kvs, infos))
            yield TensorStream(f, infos)
        return
    if sum(counts) != len(infos):
        raise AssertionError(f"the parts hold {sum(counts)} tensors, the model has {len(infos)}")
    with AtomicOutputs(split_paths(dest, len(counts))) as files:
        yield _PartStreams(files, part_headers(kvs, infos, counts, order))


# ---------------------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------------------

def _u16(g: GGUFFile, key: str) -> int | None:
    kv = g.kv.get(key)
    if kv is None:
        return None
    if kv.vtype == GGUFValueType.ARRAY or isinstance(kv.value, (str, bool, float)) or \
            not isinstance(kv.value, (int, np.integer)) or not 0 <= int(kv.value) < 2**16:
        raise UserError(f"{g.path}: {key} must be an unsigned 16-bit integer, got {kv.value!r}")
    return int(kv.value)


class SplitGGUF:
    """A split model opened read-only through its first file: GGUFFile's reading interface (path, kv, value(),
    tensors, data(entry), release(entry), close()) over all its parts; `paths` lists them."""

    def __init__(self, first: GGUFFile, count: int, populate: bool = False, copy: bool = False):
        self.path = first.path
        self.kv = first.kv
        self.parts = [first]
        try:
            prefix = split_prefix(first.path, 0, count)
            if prefix is None:
                raise UserError(f"{first.path} is part 1 of a model split in {count} files but is not named as one "
                                f"(expected a name ending in -00001-of-{count:05d}.gguf)")
            self.paths = [split_path(prefix, i, count) for i in range(count)]
            for no, path in enumerate(self.paths[1:], start=1):
                if not path.is_file():
                    raise UserError(f"{path.name} is missing: {first.path.name} is part 1 of a model split in "
                                    f"{count} files")
                part = GGUFFile(path, populate=populate, copy=copy)
                self.parts.append(part)
                got_no, got_count = _u16(part, SPLIT_NO), _u16(part, SPLIT_COUNT)
                if got_no != no or got_count != count:
                    what = "has no split keys" if got_no is None or got_count is None else \
                        f"is part {got_no + 1} of {got_count}"
                    raise UserError(f"{path.name} {what}: expected part {no + 1} of {count} (the split files do not "
                                    "belong together)")
            self.tensors = self._entries()
        except BaseException:
            self.close()
            raise

    def _entries(self) -> list[TensorEntry]:
        seen: dict[str, int] = {}
        entries = []
        for no, part in enumerate(self.parts):
            for e in part.tensors:
                if e.info.name in seen:
                    raise UserError(f"tensor {e.info.name} is in both {self.paths[seen[e.info.name]].name} and "
                                    f"{self.paths[no].name}")
                seen[e.info.name] = no
                entries.append(replace(e, part=no))
        expected = self.kv.get(SPLIT_TENSORS_COUNT)
        if expected is None or expected.value != len(entries):
            raise UserError(f"{self.path.name}: the split files hold {len(entries)} tensors, "
                            f"{SPLIT_TENSORS_COUNT} says {None if expected is None else expected.value}")
        return entries

    def value(self, key: str, default=None):
        kv = self.kv.get(key)
        return default if kv is None else kv.value

    def data(self, entry: TensorEntry) -> np.ndarray:
        return self.parts[entry.part].data(entry)

    def release(self, entry: TensorEntry) -> None:
        self.parts[entry.part].release(entry)

    def close(self) -> None:
        for part in self.parts:
            part.close()

    def __enter__(self) -> "SplitGGUF":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_gguf(path: Path | str, populate: bool = False, copy: bool = False) -> GGUFFile | SplitGGUF:
    """A model file, or a split model given its first file (with all its parts), opened read-only (populate and
    copy: GGUFFile's)."""
    g = GGUFFile(path, populate=populate, copy=copy)
    try:
        count = _u16(g, SPLIT_COUNT)
        if count is None or count <= 1:
            return g
        no = _u16(g, SPLIT_NO)
        if no is None:
            raise UserError(f"{g.path.name} has {SPLIT_COUNT} = {count} but no {SPLIT_NO}")
        if no != 0:
            first = split_prefix(g.path, no, count)
            hint = f": give {split_path(first, 0, count).name}" if first is not None else ""
            raise UserError(f"{g.path.name} is part {no + 1} of a model split in {count} files; a split model is "
                            f"opened with its first file{hint}")
    except BaseException:
        g.close()
        raise
    return SplitGGUF(g, count, populate=populate, copy=copy)


def part_counts(g: GGUFFile | SplitGGUF) -> list[int]:
    """The number of tensors in each file of an opened model (one count for a single file)."""
    n = len(g.parts) if isinstance(g, SplitGGUF) else 1
    counts = [0] * n
    for e in g.tensors:
        counts[e.part] += 1
    return counts


# ---------------------------------------------------------------------------------------------------------------------
# toolkit split: --split and --merge, as llama-gguf-split
# ---------------------------------------------------------------------------------------------------------------------

def _copy_tensors(g: GGUFFile | SplitGGUF, stream, progress=None) -> None:
    """Every tensor's stored bytes, in order, into `stream`; each tensor's pages given back once copied."""
    if progress:
        progress.start(len(g.tensors), sum(e.info.nbytes for e in g.tensors))
    for e in g.tensors:
        data = g.data(e)
        stream.write_tensor(data[i:i + (64 << 20)] for i in range(0, data.size, 64 << 20))
        g.release(e)
        if progress:
            progress.advance(e.info.name, e.info)
    stream.check_complete()
    if progress:
        progress.finish()


def check_not_input(g: GGUFFile | SplitGGUF, outputs: list[Path]) -> None:
    """None of `outputs` is a file of the opened model `g` (a GGUFFile, a SplitGGUF, or another reader with a path)."""
    inputs = {Path(p).resolve() for p in getattr(g, "paths", [g.path])}
    for out in outputs:
        if Path(out).resolve() in inputs:
            raise UserError(f"output {out} would overwrite an input file")


def split_model(inp: Path | str, dest: Path | str, opts: SplitOptions, *, dry_run: bool = False, progress=None,
                info=print) -> list[Path]:
    """`inp` (a model, or a split model's first file) cut into parts named after `dest` (its prefix: `dest` without
    `.gguf`), as llama-gguf-split --split writes them; the plan printed as it prints it. Returns the parts' paths."""
    with open_gguf(inp) as g:
        infos = [e.info for e in g.tensors]
        counts = plan_parts(infos, opts)
        paths = split_paths(dest, len(counts))
        info(f"n_split: {len(counts)}")
        for no, (kvs, part) in enumerate(part_headers(list(g.kv.values()), infos, counts)):
            size = len(encode_header(kvs, part)) + sum(i.nbytes for i in part)
            info(f"split {no + 1:05d}: n_tensors = {len(part)}, total_size = {size // 1000 // 1000}M")
        if dry_run:
            return paths
        check_not_input(g, paths)
        with gguf_output(dest, list(g.kv.values()), infos, counts) as stream:
            _copy_tensors(g, stream, progress)
        info(f"{len(counts)} split files written with a total of {len(infos)} tensors")
    return paths


def merge_model(inp: Path | str, dest: Path | str, *, dry_run: bool = False, progress=None, info=print) -> Path:
    """A split model (given its first file) written back as one file at `dest`: the first part's metadata without
    the split keys, then every part's tensors in order — the bytes of the model before it was split (llama-gguf-split
    --merge keeps split.no, split.tensors.count and a split.count of 0 in the merged file; we leave them out)."""
    with open_gguf(inp) as g:
        if not isinstance(g, SplitGGUF):
            raise UserError(f"{Path(inp).name} is not a split model ({SPLIT_COUNT} is absent or 1): nothing to merge")
        info(f"merging {len(g.paths)} split files, {len(g.tensors)} tensors → {dest}")
        if dry_run:
            return Path(dest)
        check_not_input(g, [Path(dest)])
        with gguf_output(dest, without_split_keys(list(g.kv.values())), [e.info for e in g.tensors]) as stream:
            _copy_tensors(g, stream, progress)
    return Path(dest)
