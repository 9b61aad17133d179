"""Streaming quantization of a GGUF file: input memory-mapped, each tensor converted to f32 and quantized by the
native core in row chunks, output written tensor by tensor under a temporary name and renamed on success."""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType

import native
from quantizer import policy
from quantizer.imatrix import ImportanceMatrix
from quantizer.imatrix import metadata as imatrix_metadata
from quantizer.types import FileType, is_quantized, type_name
from common.errors import UserError
from common.ggufio import KV, GGUFFile, TensorEntry, TensorInfo
from common.ggufsplit import (GGUF_SPLIT_ORDER, QUANTIZE_ORDER, SplitOptions, check_not_input, gguf_output,
                              open_gguf, plan_parts, split_paths)

GGML_QUANT_VERSION = 2
CHUNK_ELEMENTS = 4 << 20  # f32 elements converted and quantized at a time
_SOURCE_TYPES = {T.F32: native.F32, T.F16: native.F16, T.BF16: native.BF16}


@dataclass
class QuantizeResult:
    path: str
    ftype: str
    choices: list[policy.Choice]
    size_in: int
    size_out: int
    n_params: int
    seconds: float

    @property
    def n_fallback(self) -> int:
        return sum(c.fallback is not None for c in self.choices)

    @property
    def bpw_in(self) -> float:
        """Bits per weight of the input (n_params > 0: quantize_file refuses a file without weights)."""
        return 8 * self.size_in / self.n_params

    @property
    def bpw_out(self) -> float:
        return 8 * self.size_out / self.n_params


def default_output(inp: Path, ft: FileType) -> Path:
    return inp.parent / f"ggml-model-{ft.name}.gguf"


def model_facts(g: GGUFFile, overrides: dict[str, KV] | None = None) -> policy.ModelFacts:
    """What the mixture rules read from the metadata (with --override-kv values, which llama.cpp's loader sees)."""
    def value(key: str, default=None):
        return overrides[key].value if overrides and key in overrides else g.value(key, default)

    arch = value("general.architecture")
    if not isinstance(arch, str):
        raise UserError(f"{g.path} has no general.architecture")
    n_layer = int(value(f"{arch}.block_count", 0))
    n_head = value(f"{arch}.attention.head_count", 1)
    n_head_kv = value(f"{arch}.attention.head_count_kv", n_head)
    n_head = int(np.max(n_head)) if isinstance(n_head, np.ndarray) else int(n_head)
    n_head_kv = int(np.max(n_head_kv)) if isinstance(n_head_kv, np.ndarray) else int(n_head_kv)
    n_expert = int(value(f"{arch}.expert_count", 0))
    # llama.cpp's LLM_TYPE_70B for the llama architecture is the 80-layer model
    return policy.ModelFacts(arch, n_layer, n_head // max(1, n_head_kv), n_expert, arch == "llama" and n_layer == 80)


def _shape_str(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(f"{d:5d}" for d in reversed(shape)) + "]"


def _chunks(g: GGUFFile, entry: TensorEntry, choice: policy.Choice, nthreads: int,
            qw: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """The new tensor's bytes in row chunks: copied when the type is unchanged, otherwise widened, checked and
    quantized (or cast) by the native core, row by row in cache; with importance weights qw (one slice of ncols per
    expert of a stacked expert tensor), each row with its expert's slice."""
    raw = g.data(entry)
    if choice.dst_type == choice.src_type:
        for start in range(0, raw.size, 64 << 20):
            yield raw[start:start + (64 << 20)]
        return
    ncols = choice.shape[-1]
    nrows = int(np.prod(choice.shape[:-1], dtype=np.int64))
    if choice.src_type in _SOURCE_TYPES:
        src_t = _SOURCE_TYPES[choice.src_type]
        src = raw.view({T.F32: np.float32, T.F16: np.float16, T.BF16: np.uint16}[choice.src_type]).reshape(nrows, ncols)
    else:  # requantizing: quantized rows are dequantized to f32 first, chunk by chunk
        src_t = native.F32
        src = raw.reshape(nrows, -1)
    step = max(1, CHUNK_ELEMENTS // ncols)
    rows_per_expert = choice.shape[-2] if len(choice.shape) > 1 else nrows
    start = 0
    while start < nrows:
        expert = start // rows_per_expert
        end = min(start + step, nrows, (expert + 1) * rows_per_expert) if qw is not None else min(start + step, nrows)
        rows = src[start:end]
        if choice.src_type not in _SOURCE_TYPES:
            rows = native.dequantize(int(choice.src_type), rows, ncols, nthreads)
        weights = None if qw is None else qw[expert * ncols:(expert + 1) * ncols]
        start = end
        try:
            yield native.quantize(int(choice.dst_type), rows, nthreads, src_type=src_t, imatrix=weights)
        except native.NonFiniteError as e:
            raise UserError(f"tensor {choice.name} contains NaN/Inf value(s) (at least {e.args[0]}); "
                            "refusing to quantize it") from None


def quantize_file(inp: Path, out: Path | None, ft: FileType, *, nthreads: int | None = None,
                  allow_requantize: bool = False, opts: policy.Options | None = None, dry_run: bool = False,
                  imatrix: ImportanceMatrix | None = None, kv_overrides: list[KV] | None = None,
                  prune_layers: list[int] | None = None, progress=None, info: Callable[[str], None] = print,
                  warn: Callable[[str], None] = print, report: Callable[[QuantizeResult], None] | None = None,
                  split: SplitOptions | None = None, keep_split: bool = False) -> QuantizeResult:
    """Quantize `inp` into `out` (default: named after the type, next to the input). A file without weights is
    refused before any output is created; `report` gets the result before the output is renamed into place, so that
    nothing, the summary included, can fail once the file has appeared. `imatrix`: importance weights (an empty one
    counts as none, as in llama-quantize). `inp` may be a split model's first file (all its files are read); the
    output is split when `split` says how, or in the input's files with `keep_split` (see quantize_tensors)."""
    t0 = time.perf_counter()
    opts = opts or policy.Options()
    imatrix = imatrix if imatrix is not None and imatrix.weights else None
    nthreads = nthreads or native.default_threads()
    inp = Path(inp)
    out = Path(out) if out is not None else default_output(inp, ft)
    if not dry_run:
        if out.exists() and inp.exists() and os.path.samefile(out, inp) or out.resolve() == inp.resolve():
            raise UserError("the output file would overwrite the input file")
        if not out.resolve().parent.is_dir():
            raise UserError(f"output folder {out.parent} does not exist")
    with open_gguf(inp) as g:
        return quantize_tensors(g, out, ft, nthreads=nthreads, allow_requantize=allow_requantize, opts=opts,
                                dry_run=dry_run, imatrix=imatrix, kv_overrides=kv_overrides,
                                prune_layers=prune_layers, progress=progress, info=info, warn=warn, report=report,
                                t0=t0, split=split, keep_split=keep_split)


def quantize_tensors(g, out: Path | str, ft: FileType, *, nthreads: int | None = None, allow_requantize: bool = False,
                     opts: policy.Options | None = None, dry_run: bool = False, imatrix: ImportanceMatrix | None = None,
                     kv_overrides: list[KV] | None = None, prune_layers: list[int] | None = None, progress=None,
                     info: Callable[[str], None] = print, warn: Callable[[str], None] = print,
                     report: Callable[[QuantizeResult], None] | None = None,
                     t0: float | None = None, split: SplitOptions | None = None,
                     keep_split: bool = False) -> QuantizeResult:
    """quantize_file's work on tensors read from `g`: a GGUFFile, or anything with its reading interface (path,
    kv, value(), tensors, data(entry) as the stored bytes, release(entry)), such as a split model
    (common.ggufsplit.SplitGGUF) or a checkpoint seen as the f32 GGUF it converts to
    (converter.convert.CheckpointTensors). The output is one file, or split files named after `out`: cut as `split`
    says (as llama-gguf-split cuts them), or with `keep_split` each tensor in the part its input was in, the tensors
    taken file by file (llama-quantize --keep-split; one file for an input in one file)."""
    t0 = time.perf_counter() if t0 is None else t0
    opts = opts or policy.Options()
    imatrix = imatrix if imatrix is not None and imatrix.weights else None
    nthreads = nthreads or native.default_threads()
    n_params = sum(math.prod(e.info.shape) for e in g.tensors)
    if n_params == 0:
        what = "no tensors" if not g.tensors else f"only tensors of 0 elements ({len(g.tensors)})"
        raise UserError(f"{g.path} has {what}: nothing to quantize")
    renames, n_blocks = policy.prune_renames([e.info.name for e in g.tensors], prune_layers) if prune_layers \
        else ({}, None)
    if split is not None and keep_split:
        raise UserError("--keep-split and --split-max-size/--split-max-tensors cannot be used together")
    choices = _plan(g, ft, allow_requantize, opts, warn, imatrix is not None, kv_overrides, renames, keep_split)
    _check_required_imatrix(choices, ft, imatrix, dry_run, warn)
    weights = _weights(choices, imatrix, info)
    infos = [TensorInfo(c.name, c.shape, c.dst_type) for c in choices]
    size_in = sum(e.info.nbytes for e in g.tensors)
    counts = _output_parts(g, choices, infos, split, keep_split)
    first = out if counts is None else split_paths(out, len(counts))[0]

    def finish() -> QuantizeResult:
        r = QuantizeResult(str(first), ft.name, choices, size_in, sum(i.nbytes for i in infos), n_params,
                           time.perf_counter() - t0)
        if report:
            report(r)
        return r

    if dry_run:
        return finish()
    if counts is not None:
        check_not_input(g, split_paths(out, len(counts)))
    files = "" if counts is None else f" ({len(counts)} split files)"
    info(f"quantizing {Path(g.path).name} to {ft.name} with {nthreads} thread(s) → {first}{files}")
    kvs = _metadata(g, ft, imatrix, kv_overrides, n_blocks)
    with gguf_output(out, kvs, infos, counts, order=QUANTIZE_ORDER if keep_split else GGUF_SPLIT_ORDER) as stream:
        _write(stream, g, choices, infos, nthreads, progress, weights)
        return finish()  # inside the block: the files are renamed into place only after this returned


def _output_parts(g, choices: list[policy.Choice], infos: list[TensorInfo], split: SplitOptions | None,
                  keep_split: bool) -> list[int] | None:
    """The number of tensors in each output file, or None for one file."""
    if split is not None:
        return plan_parts(infos, split)
    if not keep_split:
        return None
    parts = {e.info.name: e.part for e in g.tensors}
    n = max((parts[c.source_name] for c in choices), default=0) + 1
    if n == 1:
        return None
    counts = [0] * n
    for c in choices:
        counts[parts[c.source_name]] += 1
    return counts


def _plan(g: GGUFFile, ft: FileType, allow_requantize: bool, opts: policy.Options,
          warn: Callable[[str], None], has_imatrix: bool = False, overrides: list[KV] | None = None,
          renames: dict[str, str | None] | None = None, keep_split: bool = False) -> list[policy.Choice]:
    """Each tensor's new type (under its new name when --prune-layers renumbers it; pruned ones left out), checked
    for what the native core can convert; in llama.cpp's order, or by file then offset with keep_split."""
    facts = model_facts(g, {kv.key: kv for kv in overrides or []})
    renames = renames or {}
    entries = sorted(g.tensors, key=lambda e: (e.part, e.offset)) if keep_split else g.tensors
    kept = [(renames.get(e.info.name, e.info.name), e) for e in entries]
    sources = {new: e.info.name for new, e in kept if new is not None and new != e.info.name}
    choices = policy.plan([(new, e.info.shape, e.info.ggml_type) for new, e in kept if new is not None], ft, facts,
                          opts, has_imatrix, keep_order=keep_split)
    for c in choices:
        c.source = sources.get(c.name)
        if c.dst_type != c.src_type:
            if is_quantized(c.src_type) and not allow_requantize:
                raise UserError(f"requantizing from type {type_name(c.src_type)} is disabled "
                                f"(tensor {c.name}); use --allow-requantize")
            if c.src_type not in _SOURCE_TYPES and int(c.src_type) not in native.TRAITS:
                raise UserError(f"tensor {c.name} is {c.src_type.name}, which cannot be requantized")
        if c.fallback:
            warn(c.fallback)
    return choices


def _check_required_imatrix(choices: list[policy.Choice], ft: FileType, imatrix: ImportanceMatrix | None,
                            dry_run: bool, warn: Callable[[str], None]) -> None:
    """The types that need an importance matrix (llama.cpp's tensor_requires_imatrix) refuse to run without one, or
    without weights for the tensor; a dry run only warns."""
    needing = [c for c in choices if c.dst_type != c.src_type and policy.requires_imatrix(c.name, c.dst_type, ft)]
    if not needing:
        return
    if imatrix is None:
        if dry_run:
            warn("actually completing this quantization will require an importance matrix (--imatrix)")
            return
        raise UserError(f"this quantization requires an importance matrix (--imatrix): tensor {needing[0].name} "
                        f"becomes {type_name(needing[0].dst_type)}")
    missing = [c for c in needing if imatrix.for_tensor(c.source_name) is None]
    if missing and not dry_run:
        raise UserError(f"the importance matrix has no weights for tensor {missing[0].name}, which type "
                        f"{type_name(missing[0].dst_type)} cannot do without")


def _weights(choices: list[policy.Choice], imatrix: ImportanceMatrix | None,
             info: Callable[[str], None]) -> dict[str, np.ndarray]:
    """Each converted tensor's importance weights, as llama-quantize pairs them: by name, ncols per expert; a tensor
    the matrix does not cover is quantized without (and said so); a size mismatch is an error, except for the token
    embeddings, which go without."""
    out: dict[str, np.ndarray] = {}
    if imatrix is None:
        return out
    for c in choices:
        if c.dst_type == c.src_type:
            continue
        w = imatrix.for_tensor(c.source_name)  # the matrix knows the tensors by their names before pruning
        if w is None:
            info(f"did not find importance weights for {c.name}")
            continue
        expected = c.shape[-1] * (c.shape[-3] if len(c.shape) >= 3 else 1)
        if w.size == expected:
            out[c.name] = w
        elif c.name not in policy.TOKEN_EMBD_NAMES:
            raise UserError(f"imatrix size {w.size} is different from tensor size {expected} for {c.name}")
    return out


def _write(stream, g: GGUFFile, choices: list[policy.Choice], infos: list[TensorInfo], nthreads: int, progress,
           weights: dict[str, np.ndarray]) -> None:
    """Each tensor converted in turn into `stream` (a TensorStream, its header written)."""
    entries = {e.info.name: e for e in g.tensors}
    if progress:
        progress.start(len(choices), sum(e.info.nbytes for e in g.tensors))
    for i, c in enumerate(choices):
        entry = entries[c.source_name]
        stream.write_tensor(_chunks(g, entry, c, nthreads, weights.get(c.name)))
        g.release(entry)
        if progress:
            progress.advance(c.name, entry.info, _log_line(i, len(choices), c, entry.info.nbytes, infos[i].nbytes))
    stream.check_complete()
    if progress:
        progress.finish()


def _log_line(i: int, n: int, c: policy.Choice, size_in: int, size_out: int) -> str:
    """llama-quantize's per-tensor line."""
    head = f"[{i + 1:4d}/{n:4d}] {c.name:<36} - {_shape_str(c.shape)}, type = {type_name(c.src_type):>6}, "
    if c.dst_type == c.src_type:
        return head + f"size = {size_out / 2**20:8.3f} MiB"
    return (head + f"converting to {type_name(c.dst_type)} .. "
            f"size = {size_in / 2**20:8.2f} MiB -> {size_out / 2**20:8.2f} MiB")


def parse_kv_override(text: str) -> KV:
    """llama-quantize's --override-kv KEY=TYPE:VALUE (int, float, bool: true/false, str), as the key it writes: an int
    as uint32 of its magnitude, a float as float32 (llama.cpp's choice); values that do not parse are refused rather
    than read as 0 as atol/atof would."""
    key, eq, rest = text.partition("=")
    if not eq or not key or len(key) >= 128:
        raise UserError(f"--override-kv {text!r}: expected KEY=TYPE:VALUE (a key under 128 bytes)")
    kind, colon, value = rest.partition(":")
    try:
        if colon and kind == "int":
            return KV(key, GGUFValueType.UINT32, abs(int(value)) & 0xFFFFFFFF)
        if colon and kind == "float":
            return KV(key, GGUFValueType.FLOAT32, float(np.float32(float(value))))
    except ValueError:
        raise UserError(f"--override-kv {text!r}: {value!r} is not {'an int' if kind == 'int' else 'a float'}") \
            from None
    if colon and kind == "bool":
        if value not in ("true", "false"):
            raise UserError(f"--override-kv {text!r}: a bool is true or false")
        return KV(key, GGUFValueType.BOOL, value == "true")
    if colon and kind == "str":
        if len(value.encode("utf-8")) > 127:
            raise UserError(f"--override-kv {text!r}: the value cannot exceed 127 bytes")
        return KV(key, GGUFValueType.STRING, value)
    raise UserError(f"--override-kv {text!r}: the type must be int, float, bool or str")


def _metadata(g: GGUFFile, ft: FileType, imatrix: ImportanceMatrix | None = None,
              overrides: list[KV] | None = None, n_blocks: int | None = None) -> list[KV]:
    """The input's keys with split keys dropped, then general.quantization_version and general.file_type, then the
    --override-kv keys, the quantize.imatrix.* keys when quantizing with a matrix and the block count left by
    --prune-layers (llama.cpp removes and re-appends the keys it sets, in this order)."""
    kvs = {k: kv for k, kv in g.kv.items()
           if not k.startswith("split.") and k not in ("general.quantization_version", "general.file_type")}
    kvs["general.quantization_version"] = KV("general.quantization_version", GGUFValueType.UINT32, GGML_QUANT_VERSION)
    kvs["general.file_type"] = KV("general.file_type", GGUFValueType.UINT32, int(ft.ftype))
    for kv in overrides or []:
        kvs.pop(kv.key, None)
        kvs[kv.key] = kv
    for key, value in imatrix_metadata(imatrix) if imatrix is not None else []:
        kvs.pop(key, None)
        kvs[key] = (KV(key, GGUFValueType.STRING, value) if isinstance(value, str)
                    else KV(key, GGUFValueType.UINT32, value))
    if n_blocks is not None:
        key = f"{g.value('general.architecture')}.block_count"
        kvs.pop(key, None)
        kvs[key] = KV(key, GGUFValueType.UINT32, n_blocks)
    return list(kvs.values())
