"""HF checkpoint folder → f32/f16/bf16 GGUF, one tensor at a time.

Everything is validated before the output file is created (config, architecture, tensor presence and shapes,
tokenizer); then the header is written and each tensor is read from its memory map, transformed, converted by the native
core in chunks and streamed to the file. Peak memory is about one tensor plus a chunk buffer.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType, LlamaFileType

import native
import archs as arches
from archs.base import Architecture, TensorSpec
from converter.checkpoint import Checkpoint, SourceTensor
from converter.sampling_defaults import sampling_kvs
from converter.vocab import load_vocab
from common.ggufio import KV, TensorEntry, TensorInfo
from common.ggufsplit import SplitOptions, gguf_output, plan_parts, split_paths
from common.errors import UserError

log = logging.getLogger("toolkit")

OUTTYPES = {  # name -> (tensor type of 2-D weights, general.file_type)
    "f32": (GGMLQuantizationType.F32, LlamaFileType.ALL_F32),
    "f16": (GGMLQuantizationType.F16, LlamaFileType.MOSTLY_F16),
    "bf16": (GGMLQuantizationType.BF16, LlamaFileType.MOSTLY_BF16),
}
_NATIVE_TYPE = {"F32": native.F32, "F16": native.F16, "BF16": native.BF16,
                GGMLQuantizationType.F32: native.F32, GGMLQuantizationType.F16: native.F16,
                GGMLQuantizationType.BF16: native.BF16}
_OUT_DTYPE = {GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16,
              GGMLQuantizationType.BF16: np.uint16}
CHUNK_BYTES = 16 << 20
GGML_QUANT_VERSION = 2


@dataclass
class Planned:
    spec: TensorSpec
    source: SourceTensor
    info: TensorInfo


@dataclass
class ConvertResult:
    path: str
    arch: str
    outtype: str
    n_tensors: int
    n_bytes: int
    seconds: float


class Progress:
    """What the converter reports to; the CLI supplies a rich or a plain-text implementation."""

    def start(self, total_items: int, total_bytes: int) -> None: ...
    def advance(self, name: str, info: TensorInfo) -> None: ...
    def finish(self) -> None: ...


def read_config(folder: Path) -> dict:
    if not folder.is_dir():
        raise UserError(f"model folder {folder} does not exist")
    path = folder / "config.json"
    if not path.is_file():
        raise UserError(f"no config.json in {folder}")
    return read_json_object(path)


def read_json_object(path: Path) -> dict:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise UserError(f"{path} is not valid JSON") from None
    if not isinstance(config, dict):
        raise UserError(f"{path} is not a JSON object")
    return config


def read_generation_config(folder: Path) -> dict:
    """generation_config.json ({} when the folder has none)."""
    path = folder / "generation_config.json"
    return read_json_object(path) if path.is_file() else {}


def default_outfile(folder: Path, outtype: str, vocab_only: bool) -> Path:
    return folder / ("ggml-vocab.gguf" if vocab_only else f"ggml-model-{outtype}.gguf")


def plan_tensors(model: Architecture, ckpt: Checkpoint, outtype: str) -> list[Planned]:
    wtype = OUTTYPES[outtype][0]
    available = set(ckpt.tensors)
    plan, used = [], set()
    for spec in model.tensors(available):
        if spec.values is not None:  # computed from the config
            plan.append(Planned(spec, computed_tensor(spec), TensorInfo(spec.gguf, spec.out_shape,
                                                                        GGMLQuantizationType.F32)))
            continue
        parts = [source_tensor(ckpt, name, spec.shape) for name in (spec.stack or (spec.hf,))]
        src = stacked_tensor(spec, parts) if spec.stack else parts[0]
        ttype = GGMLQuantizationType.F32 if len(spec.shape) == 1 or spec.keep_f32 or spec.shift else wtype
        plan.append(Planned(spec, src, TensorInfo(spec.gguf, spec.out_shape, ttype)))
        used.update(spec.stack or (spec.hf,))
    ignored = sorted(n for n in available - used if not model.skipped(n))
    if ignored:
        more = f" and {len(ignored) - 5} more" if len(ignored) > 5 else ""
        log.warning(f"ignoring {len(ignored)} tensor(s) not used by {model.gguf_arch}: {', '.join(ignored[:5])}{more}")
    return plan


def source_tensor(ckpt: Checkpoint, name: str, shape: tuple[int, ...]) -> SourceTensor:
    src = ckpt.tensors.get(name)
    if src is None:
        why = " (listed in the index json but present in no shard)" if name in ckpt.phantom else ""
        raise UserError(f"checkpoint has no tensor {name}{why}")
    src.require_supported_dtype()
    if src.shape != shape:
        raise UserError(f"tensor {name} has shape {list(src.shape)} but config.json implies {list(shape)}")
    return src


def stacked_tensor(spec: TensorSpec, parts: list[SourceTensor]) -> SourceTensor:
    """The parts (the experts of a layer) as one tensor: read together when it is converted, released together."""
    dtypes = {p.dtype for p in parts}
    if len(dtypes) != 1:
        raise UserError(f"the parts of {spec.gguf} ({spec.hf}) have different dtypes: {', '.join(sorted(dtypes))}")

    released = []

    class Stacked(SourceTensor):
        def release(self, arr: np.ndarray) -> None:
            # the stack is a copy: the parts' pages can go as soon as it is made (once)
            if not released:
                released.append(True)
                for p in parts:
                    p.release(p.array())

    return Stacked(spec.gguf, (len(parts), *spec.shape), parts[0].dtype, parts[0].file,
                   lambda: np.stack([p.array() for p in parts]), _mapped=False)


def computed_tensor(spec: TensorSpec) -> SourceTensor:
    values = np.ascontiguousarray(spec.values, dtype=np.float32)
    return SourceTensor(spec.gguf, values.shape, "F32", Path("config.json"), lambda: values, _mapped=False)


def metadata(model: Architecture, folder: Path, outtype: str, name: str | None, vocab_kv: dict) -> list[KV]:
    entries: dict[str, object] = {
        "general.architecture": model.gguf_arch,
        "general.type": "model",
        "general.name": name or folder.resolve().name,
        "general.file_type": int(OUTTYPES[outtype][1]),
        "general.quantization_version": GGML_QUANT_VERSION,
    }
    general = [_kv(k, v) for k, v in entries.items()] + sampling_kvs(read_generation_config(folder))
    entries = {k.format(arch=model.gguf_arch): v for k, v in model.hparams().items()}
    entries.update(vocab_kv)
    return general + [_kv(k, v) for k, v in entries.items()]


def _scalar_type(v: object) -> GGUFValueType:
    if isinstance(v, bool):
        return GGUFValueType.BOOL
    if isinstance(v, int):
        return GGUFValueType.UINT32
    if isinstance(v, float):
        return GGUFValueType.FLOAT32
    if isinstance(v, str):
        return GGUFValueType.STRING
    raise TypeError(f"no GGUF type for {type(v).__name__}")


_INT_RANGES = {GGUFValueType.UINT32: (0, 2**32 - 1), GGUFValueType.INT32: (-2**31, 2**31 - 1)}
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _check_fits(key: str, value: object, vtype: GGUFValueType) -> None:
    """A value from config.json that the GGUF type chosen for it cannot hold (a count of 10^19 as uint32, 1e300 as
    float32) is the user's to fix, named here rather than failing in the writer."""
    lo, hi = _INT_RANGES.get(vtype, (None, None))
    if lo is not None and isinstance(value, int) and not lo <= value <= hi:
        raise UserError(f"{key} is {value}, outside the range of the {vtype.name.lower()} GGUF stores it in "
                        f"({lo} to {hi}); check config.json")
    if vtype == GGUFValueType.FLOAT32 and isinstance(value, float) and math.isfinite(value) \
            and abs(value) > _FLOAT32_MAX:
        raise UserError(f"{key} is {value}, too large for the float32 GGUF stores it in; check config.json")


def _kv(key: str, value: object) -> KV:
    if isinstance(value, list):
        first = value[0] if value else ""
        etype = GGUFValueType.INT32 if isinstance(first, int) else _scalar_type(first)
        for item in value:
            _check_fits(key, item, etype)
        return KV(key, GGUFValueType.ARRAY, value, etype)
    vtype = _scalar_type(value)
    _check_fits(key, value, vtype)
    return KV(key, vtype, value)


def tensor_chunks(p: Planned) -> Iterator[np.ndarray]:
    """The converted bytes of one tensor, in chunks of about CHUNK_BYTES, reusing one buffer."""
    raw = p.source.array()
    view = raw.T if p.spec.transpose else raw
    if view.ndim == 1:
        view = view.reshape(-1, 1) if p.spec.rows is not None else view.reshape(1, -1)
    nrows, ncols = view.shape[0], int(np.prod(view.shape[1:], dtype=np.int64))
    out_dtype = _OUT_DTYPE[p.info.ggml_type]
    step = max(1, CHUNK_BYTES // max(1, ncols * 4))
    buf = np.empty(min(nrows, step) * ncols, dtype=out_dtype)
    src_t, dst_t = _NATIVE_TYPE[p.source.dtype], _NATIVE_TYPE[p.info.ggml_type]
    in_order = p.spec.rows is None and not p.spec.transpose
    for start in range(0, nrows, step):
        stop = min(nrows, start + step)
        rows = slice(start, stop) if p.spec.rows is None else p.spec.rows[start:stop]
        part = np.ascontiguousarray(view[rows]).reshape(-1)
        out = buf[: part.size]
        native.convert_into(part, src_t, out, dst_t)
        if p.spec.shift:
            out += np.float32(p.spec.shift)
        if in_order:  # source rows read in order: their pages can go right away
            p.source.release(view[rows])
        yield out
    p.source.release(raw)


def check_destination(folder: Path, dest: Path | str, ckpt: Checkpoint | None) -> None:
    """The output's folder exists and the output is none of the inputs."""
    if str(dest) == "-":
        return
    if not Path(dest).resolve().parent.is_dir():
        raise UserError(f"output folder {Path(dest).parent} does not exist")
    if ckpt is not None:
        inputs = {s.file.resolve() for s in ckpt.tensors.values()} | {(folder / "config.json").resolve()}
        if Path(dest).resolve() in inputs:
            raise UserError(f"output {dest} would overwrite an input file")


def prepare(folder: Path, ckpt: Checkpoint | None, outtype: str, model_name: str | None,
            tokenizer_pre: str | None) -> tuple[Architecture, list[Planned], list[KV]]:
    """Everything checked before an output is created: the architecture, each tensor's plan, the metadata."""
    model = arches.for_config(read_config(folder))
    plan = [] if ckpt is None else plan_tensors(model, ckpt, outtype)
    vocab = load_vocab(folder, model.vocab_size, tokenizer_pre, weights=ckpt is not None)
    if vocab.model == "llama":
        vocab.add_space_prefix = model.spm_space_prefix
    return model, plan, metadata(model, folder, outtype, model_name, vocab.kv())


class CheckpointTensors:
    """A checkpoint seen as the f32 GGUF file `convert --outtype f32` writes, without writing it: its metadata (kv,
    value()), tensor entries, and each tensor's f32 bytes made when asked (data(entry), one tensor at a time, dropped
    by release(entry)): the reading interface of common.ggufio.GGUFFile, for quantizing straight from a checkpoint."""

    def __init__(self, folder: Path | str, model_name: str | None = None, tokenizer_pre: str | None = None):
        self.path = Path(folder)
        self._ckpt = Checkpoint(self.path)
        try:
            _, plan, kvs = prepare(self.path, self._ckpt, "f32", model_name, tokenizer_pre)
        except BaseException:
            self._ckpt.close()
            raise
        self.kv = {kv.key: kv for kv in kvs}
        self._plan = {p.info.name: p for p in plan}
        self.tensors = [TensorEntry(p.info, 0) for p in plan]

    def check_destination(self, dest: Path | str) -> None:
        check_destination(self.path, dest, self._ckpt)

    def value(self, key: str, default=None):
        kv = self.kv.get(key)
        return default if kv is None else kv.value

    def data(self, entry: TensorEntry) -> np.ndarray:
        out = np.empty(math.prod(entry.info.shape), np.float32)
        at = 0
        for chunk in tensor_chunks(self._plan[entry.info.name]):
            out[at:at + chunk.size] = chunk
            at += chunk.size
        return out.view(np.uint8)

    def release(self, entry: TensorEntry) -> None:
        pass  # the bytes data() made are the caller's; the source pages go as tensor_chunks reads them

    def close(self) -> None:
        self._ckpt.close()

    def __enter__(self) -> "CheckpointTensors":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def convert_model(folder: Path, *, outtype: str = "f16", outfile: Path | str | None = None,
                  vocab_only: bool = False, model_name: str | None = None, tokenizer_pre: str | None = None,
                  progress: Progress | None = None, info: Callable[[str], None] = log.info,
                  split: SplitOptions | None = None) -> ConvertResult:
    """Convert the checkpoint in `folder` to one GGUF file, or to split files named after `outfile` when `split`
    says how to cut it (as llama-gguf-split would cut the one file)."""
    t0 = time.perf_counter()
    if outtype not in OUTTYPES:
        raise UserError(f"unknown output type {outtype!r}; choose one of {', '.join(OUTTYPES)}")
    folder = Path(folder)
    arches.for_config(read_config(folder))  # an unknown architecture before anything else
    dest = outfile if outfile is not None else default_outfile(folder, outtype, vocab_only)
    if str(dest) != "-" and not Path(dest).resolve().parent.is_dir():
        raise UserError(f"output folder {Path(dest).parent} does not exist")
    ckpt = None if vocab_only else Checkpoint(folder)
    try:
        check_destination(folder, dest, ckpt)
        model, plan, kvs = prepare(folder, ckpt, outtype, model_name, tokenizer_pre)
        infos = [p.info for p in plan]
        total = sum(i.nbytes for i in infos)
        counts = plan_parts(infos, split) if split is not None else None
        first = dest
        if counts is not None:
            for part in split_paths(dest, len(counts)):
                check_destination(folder, part, ckpt)
            first = split_paths(dest, len(counts))[0]
        files = "" if counts is None else f" ({len(counts)} split files)"
        info(f"{model.gguf_arch}: {len(plan)} tensors, {total / 2**20:.1f} MiB as {outtype} → {first}{files}")
        progress = progress or Progress()
        with gguf_output(dest, kvs, infos, counts, log=info) as stream:
            progress.start(len(plan), total)
            for p in plan:
                stream.write_tensor(tensor_chunks(p))
                progress.advance(p.info.name, p.info)
            stream.check_complete()
            progress.finish()
    finally:
        if ckpt is not None:
            ckpt.close()
    return ConvertResult(str(first), model.gguf_arch, outtype, len(plan), total, time.perf_counter() - t0)
