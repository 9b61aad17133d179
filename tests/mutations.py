"""Issue 18's mutated corpora, and the workers that push them through the CLI's entry points in-process.

A mutation is data: an id naming the seed and what was changed, and a list of operations applied to a copy of the seed
(``gguf_mutations``: operations on a GGUF file's bytes, placed by a walk of its header so that every field can be named;
``checkpoint_mutations``: edits of a checkpoint folder's JSON files, safetensors headers and bytes). Both lists are
generated from a seed number, so a run is repeatable and a finding is named by its id.

The commands run in-process (``cli``: typer's own entry point with click's standalone mode off, so exceptions meet the
same ``user_errors`` mapping as on the command line) inside long-lived worker processes (``python -m tests.mutations``);
``Pool`` feeds them one job at a time, so a worker that dies (a signal from the C core) or hangs is reported against
the job it was running, and replaced.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import queue
import random
import resource
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# ------------------------------------------------------------------------------------------------ GGUF header walk

# GGUF value types: id -> struct format of a scalar (8 = string, 9 = array)
VALUE_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9


@dataclass(frozen=True)
class Field:
    """One field of a GGUF header: `kind` says which values are worth trying in it."""
    label: str
    offset: int
    size: int
    kind: str  # magic, version, count, strlen, vtype, etype, acount, value:<vtype>, strbytes, ndims, dim, ttype, toffset


class _Walker:
    def __init__(self, data: bytes):
        self.data, self.pos, self.fields = data, 0, []

    def take(self, label: str, size: int, kind: str) -> int:
        f = Field(label, self.pos, size, kind)
        self.fields.append(f)
        self.pos += size
        return int.from_bytes(self.data[f.offset:f.offset + size], "little")

    def skip(self, size: int) -> None:
        self.pos += size

    def string(self, label: str, record: bool = True) -> None:
        if record:
            n = self.take(f"{label}.len", 8, "strlen")
            if n:
                self.fields.append(Field(f"{label}.bytes", self.pos, min(n, 4), "strbytes"))
        else:
            n = int.from_bytes(self.data[self.pos:self.pos + 8], "little")
            self.pos += 8
        self.pos += n

    def value(self, label: str, vtype: int, record: bool = True) -> None:
        if vtype == STRING:
            self.string(label, record)
        elif record:
            self.take(label, struct.calcsize(VALUE_FORMATS[vtype]), f"value:{vtype}")
        else:
            self.skip(struct.calcsize(VALUE_FORMATS[vtype]))


ARRAY_ELEMENTS_RECORDED = 2  # the first ones and the last one of each array


def gguf_fields(data: bytes) -> list[Field]:
    """Every field of a well-formed GGUF file's header, in file order (of arrays: the count, the first two elements and
    the last one)."""
    w = _Walker(data)
    w.take("magic", 4, "magic")
    w.take("version", 4, "version")
    n_tensors = w.take("n_tensors", 8, "count")
    n_kv = w.take("n_kv", 8, "count")
    for i in range(n_kv):
        key_at = w.pos + 8
        key = data[key_at:key_at + int.from_bytes(data[w.pos:w.pos + 8], "little")].decode()
        w.string(f"kv[{key}].key")
        vtype = w.take(f"kv[{key}].type", 4, "vtype")
        if vtype != ARRAY:
            w.value(f"kv[{key}].value", vtype)
            continue
        etype = w.take(f"kv[{key}].etype", 4, "etype")
        count = w.take(f"kv[{key}].count", 8, "acount")
        for j in range(count):
            w.value(f"kv[{key}][{j}]", etype, record=j < ARRAY_ELEMENTS_RECORDED or j == count - 1)
    for i in range(n_tensors):
        name_at = w.pos + 8
        name = data[name_at:name_at + int.from_bytes(data[w.pos:w.pos + 8], "little")].decode()
        w.string(f"tensor[{name}].name")
        n_dims = w.take(f"tensor[{name}].n_dims", 4, "ndims")
        for d in range(n_dims):
            w.take(f"tensor[{name}].dims[{d}]", 8, "dim")
        w.take(f"tensor[{name}].type", 4, "ttype")
        w.take(f"tensor[{name}].offset", 8, "toffset")
    return w.fields


def header_end(fields: list[Field]) -> int:
    last = fields[-1]
    return last.offset + last.size


# ------------------------------------------------------------------------------------------------ GGUF mutations

U32_MAX, U64_MAX = 2**32 - 1, 2**64 - 1


def _int_candidates(orig: int, size: int) -> list[int]:
    top = U32_MAX if size == 4 else U64_MAX
    values = [0, 1, 2, 3, orig + 1, orig - 1, orig * 2, 2**31 - 1, 2**31, top, top - 1]
    if size == 8:
        values += [2**32, 2**32 + 1, 2**62, 2**63 - 1, 2**63, orig << 20]
    return [v & top for v in values]


def _float_candidates(fmt: str) -> list[bytes]:
    return [struct.pack(fmt, v) for v in (math.nan, math.inf, -math.inf, 0.0, -0.0, -1.0, 1e38, 1e-45, 2.0**31)]


TYPE_IDS = list(range(0, 13)) + [13, 255, U32_MAX]
GGML_TYPE_IDS = [0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 19, 20, 23, 24, 28, 29, 30, 34, 35, 39, 4, 5, 99,
                 U32_MAX]


def field_candidates(f: Field, data: bytes) -> list[tuple[str, bytes]]:
    """(what, new bytes) for a field: the values worth trying in it."""
    raw = data[f.offset:f.offset + f.size]
    if f.kind == "magic":
        return [(f"={v!r}", v) for v in (b"GGUE", b"FUGG", b"\0\0\0\0", b"GGML")]
    if f.kind == "strbytes":
        return [("=invalid-utf8", b"\xff" + raw[1:]), ("=nul", b"\0" + raw[1:]),
                ("=surrogate", b"\xed\xa0\x80"[:f.size] + raw[3:])]
    if f.kind in ("vtype", "etype"):
        values = TYPE_IDS
    elif f.kind == "ttype":
        values = GGML_TYPE_IDS
    elif f.kind == "version":
        values = [0, 1, 2, 4, U32_MAX]
    elif f.kind.startswith("value:"):
        fmt = VALUE_FORMATS[int(f.kind.split(":")[1])]
        if fmt in ("<f", "<d"):
            return [(f"={struct.unpack(fmt, b)[0]}", b) for b in _float_candidates(fmt)]
        if fmt == "<?":
            return [(f"={v}", bytes([v])) for v in (2, 255)]
        orig = int.from_bytes(raw, "little")
        values = _int_candidates(orig, f.size)
    else:
        values = _int_candidates(int.from_bytes(raw, "little"), f.size)
    orig = int.from_bytes(raw, "little")
    return [(f"={v}", v.to_bytes(f.size, "little")) for v in dict.fromkeys(values) if v != orig]


def _set(offset: int, new: bytes) -> list:
    return ["set", offset, new.hex()]


def gguf_mutations(seed: Path, rng: random.Random, budget: int, every_field: bool = False) -> list[dict]:
    """`budget` mutations of one seed file: field values (with `every_field`, each field at least once), truncations
    at field boundaries and inside the data, byte flips in the header and the data, bytes inserted and removed."""
    data, seed_name = seed.read_bytes(), seed.stem
    fields = gguf_fields(data)
    end = header_end(fields)
    out: dict[str, list] = {}

    def add(what: str, ops: list) -> None:
        out.setdefault(f"{seed_name}:{what}", ops)

    per_field = {f: field_candidates(f, data) for f in fields}
    if every_field:
        for f, cands in per_field.items():
            what, new = rng.choice(cands)
            add(f"{f.label}{what}", [_set(f.offset, new)])
    n_struct = budget * 3 // 4
    flat = [(f, what, new) for f, cands in per_field.items() for what, new in cands]
    for f, what, new in rng.sample(flat, min(len(flat), max(0, n_struct - len(out)))):
        add(f"{f.label}{what}", [_set(f.offset, new)])
    cuts = sorted({f.offset for f in rng.sample(fields, min(len(fields), budget // 16))}
                  | {rng.randrange(end, len(data)) for _ in range(budget // 40)} | {0, 23, end, len(data) - 1})
    for n in cuts:
        add(f"truncated@{n}", [["trunc", n]])
    while len(out) < budget:
        roll = rng.random()
        if roll < 0.6:
            at = rng.randrange(0, end)
            flips = [(at + k, rng.randrange(1, 256)) for k in range(rng.choice((1, 1, 2, 4, 8)))]
            add("flip@" + ",".join(f"{o}^{x}" for o, x in flips),
                [["xor", o, x] for o, x in flips if o < len(data)])
        elif roll < 0.75:
            at = rng.randrange(end, len(data))
            add(f"data-flip@{at}", [["xor", at, rng.randrange(1, 256)]])
        elif roll < 0.9:
            at, n = rng.randrange(0, end), rng.choice((1, 3, 4, 8))
            add(f"insert@{at}+{n}", [["insert", at, bytes(rng.randrange(256) for _ in range(n)).hex()]])
        else:
            at, n = rng.randrange(0, end), rng.choice((1, 4, 8))
            add(f"delete@{at}-{n}", [["delete", at, n]])
    items = list(out.items())
    return [{"kind": "gguf", "id": k, "seed": str(seed), "ops": ops} for k, ops in items]


def apply_byte_ops(data: bytes, ops: list) -> bytes:
    buf = bytearray(data)
    for op in ops:
        if op[0] == "set":
            new = bytes.fromhex(op[2])
            buf[op[1]:op[1] + len(new)] = new
        elif op[0] == "xor":
            buf[op[1]] ^= op[2]
        elif op[0] == "trunc":
            del buf[op[1]:]
        elif op[0] == "insert":
            buf[op[1]:op[1]] = bytes.fromhex(op[2])
        elif op[0] == "delete":
            del buf[op[1]:op[1] + op[2]]
        else:
            raise ValueError(f"unknown byte operation {op[0]}")
    return bytes(buf)


# ------------------------------------------------------------------------------------------------ checkpoint mutations

NAN = math.nan
JSON_VALUES = [None, -1, 0, 1, 2**31, 2**64, 10**30, 1e308 * 10, NAN, 0.5, -0.5, "x", "", [], [1, 2], {}, {"a": 1},
               True, False]


def _json_paths(obj, prefix=(), depth=0, limit=3):
    """Paths to the values of a JSON document (dicts and the first two and the last item of lists) down to `limit`."""
    yield prefix
    if depth >= limit:
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _json_paths(v, prefix + (k,), depth + 1, limit)
    elif isinstance(obj, list) and obj:
        for i in sorted({0, 1, len(obj) - 1} & set(range(len(obj)))):
            yield from _json_paths(obj[i], prefix + (i,), depth + 1, limit)


def _json_edits(file: str, doc, rng: random.Random, n: int, limit: int = 3) -> dict[str, list]:
    """`n` edits of a JSON file: a value replaced by one of JSON_VALUES, or removed."""
    paths = [p for p in _json_paths(doc, limit=limit) if p]
    out = {}
    for _ in range(n * 3):
        if len(out) >= n:
            break
        path = rng.choice(paths)
        if rng.random() < 0.15:
            out[f"{file}:{'/'.join(map(str, path))}:deleted"] = [["json_del", file, list(path)]]
        else:
            v = rng.choice(JSON_VALUES)
            out[f"{file}:{'/'.join(map(str, path))}={json.dumps(v)[:20]}"] = [["json_set", file, list(path), v]]
    return out


def _safetensors_header(path: Path) -> dict:
    raw = path.read_bytes()
    n = struct.unpack_from("<Q", raw)[0]
    return json.loads(raw[8:8 + n])


def _safetensors_edits(file: str, header: dict, size: int, rng: random.Random, n: int) -> dict[str, list]:
    """Edits of a safetensors file: header entries (dtype, shape, offsets, names), the length prefix, truncations and
    flips of the header and the data."""
    names = [k for k in header if k != "__metadata__"]
    values = {
        "dtype": ["F64", "I8", "BOOL", "F8_E4M3", "XX", "", 1, None],
        "shape": [[], [0], [-1], [2**40, 2**40], [1], [3, 5], "64", None],
        "data_offsets": [[0, 0], [4, 0], [0, size * 2], [2**63, 2**64], [-8, 8], [0], None],
    }
    out = {}
    for _ in range(n * 3):
        if len(out) >= n:
            break
        name = rng.choice(names)
        roll = rng.random()
        if roll < 0.55:
            key = rng.choice(list(values))
            v = rng.choice(values[key])
            out[f"{file}:header[{name}].{key}={json.dumps(v)}"] = [["st_set", file, [name, key], v]]
        elif roll < 0.65:
            out[f"{file}:header[{name}]:deleted"] = [["st_del", file, [name]]]
        elif roll < 0.7:
            out[f"{file}:header[{name}]=renamed"] = [["st_rename", file, name, name + ".x"]]
        elif roll < 0.8:
            v = rng.choice([0, 1, 7, 2**31, 2**63, U64_MAX, size])
            out[f"{file}:header-length={v}"] = [["bytes", file, [_set(0, v.to_bytes(8, "little"))]]]
        elif roll < 0.9:
            at = rng.randrange(0, size)
            out[f"{file}:truncated@{at}"] = [["bytes", file, [["trunc", at]]]]
        else:
            at = rng.randrange(8, min(size, 8 + 4096))
            out[f"{file}:flip@{at}"] = [["bytes", file, [["xor", at, rng.randrange(1, 256)]]]]
    return out


def _text_edits(file: str, text_size: int, rng: random.Random) -> dict[str, list]:
    """Whole-file damage: empty, not JSON, truncated, binary."""
    cut = rng.randrange(1, max(2, text_size))
    return {f"{file}:empty": [["text", file, ""]], f"{file}:not-json": [["text", file, "{not json"]],
            f"{file}:truncated@{cut}": [["bytes", file, [["trunc", cut]]]],
            f"{file}:binary": [["bytes", file, [["set", 0, "ff00fe01"]]]], f"{file}:removed": [["rm", file]],
            f"{file}:array": [["text", file, "[]"]]}


def checkpoint_mutations(folder: Path, rng: random.Random, budget: int) -> list[dict]:
    """`budget` mutations of one checkpoint folder, spread over its files."""
    files = sorted(p.name for p in folder.iterdir() if p.is_file())
    jsons = [f for f in files if f.endswith(".json")]
    binaries = [f for f in files if f.endswith(".safetensors")]
    others = [f for f in files if f not in jsons and f not in binaries]
    out: dict[str, list] = {}
    share = max(1, budget // (len(jsons) + len(binaries) + len(others)))
    for f in jsons:
        doc = json.loads((folder / f).read_text())
        out.update(_text_edits(f, (folder / f).stat().st_size, rng))
        out.update(_json_edits(f, doc, rng, share + (share if f == "config.json" else 0),
                               limit=4 if f == "tokenizer.json" else 3))
    for f in binaries:
        out.update(_safetensors_edits(f, _safetensors_header(folder / f), (folder / f).stat().st_size, rng, share))
    for f in others:
        size = (folder / f).stat().st_size
        out.update({f"{f}:truncated@{n}": [["bytes", f, [["trunc", n]]]]
                    for n in (0, 1, rng.randrange(size))})
        out.update({f"{f}:flip@{at}": [["bytes", f, [["xor", at, 0xff]]]]
                    for at in (rng.randrange(min(size, 256)) for _ in range(3))})
    items = list(out.items())
    rng.shuffle(items)
    return [{"kind": "checkpoint", "id": f"{folder.name}:{k}", "seed": str(folder), "ops": ops}
            for k, ops in items[:budget]]


def _dig(doc, path):
    for k in path[:-1]:
        doc = doc[k]
    return doc


def _edit_json(doc, op) -> object:
    if op[0] == "json_set":
        if not op[2]:
            return op[3]
        _dig(doc, op[2])[op[2][-1]] = op[3]
    elif op[0] == "json_del":
        del _dig(doc, op[2])[op[2][-1]]
    return doc


def _write_safetensors(path: Path, raw: bytes, header: dict) -> None:
    n = struct.unpack_from("<Q", raw)[0]
    body = json.dumps(header).encode()
    body += b" " * (-len(body) % 8)
    _replace(path, struct.pack("<Q", len(body)) + body + raw[8 + n:])


def _replace(path: Path, data: bytes) -> None:
    """Write a new file at `path` (never through a hard link to the seed)."""
    path.unlink(missing_ok=True)
    path.write_bytes(data)


def apply_checkpoint_ops(folder: Path, ops: list) -> None:
    for op in ops:
        path = folder / op[1]
        if op[0] in ("json_set", "json_del"):
            _replace(path, json.dumps(_edit_json(json.loads(path.read_text()), op)).encode())
        elif op[0] in ("st_set", "st_del", "st_rename"):
            raw = path.read_bytes()
            header = _safetensors_header(path)
            if op[0] == "st_rename":
                header[op[3]] = header.pop(op[2])
            else:
                _edit_json(header, ["json_" + op[0][3:], None, *op[2:]])
            _write_safetensors(path, raw, header)
        elif op[0] == "bytes":
            _replace(path, apply_byte_ops(path.read_bytes(), op[2]))
        elif op[0] == "text":
            _replace(path, op[2].encode())
        elif op[0] == "rm":
            path.unlink()
        else:
            raise ValueError(f"unknown checkpoint operation {op[0]}")


def materialize_checkpoint(seed: Path, dest: Path, ops: list) -> Path:
    """A copy of the seed folder (hard links: the seed is never written) with `ops` applied."""
    dest.mkdir(parents=True)
    for p in seed.iterdir():
        os.link(p, dest / p.name)
    apply_checkpoint_ops(dest, ops)
    return dest


# ------------------------------------------------------------------------------------------------ in-process CLI

def cli(args: list[str]) -> dict:
    """`toolkit ARGS` in this process: exit code, stderr, and the exception that escaped (a traceback on the command
    line), as `python -m toolkit` would end."""
    from toolkit.cli import app

    err = io.StringIO()
    escaped = None
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = app(args=[str(a) for a in args], standalone_mode=False) or 0
        except SystemExit as e:
            code = e.code
        except BaseException as e:  # what would reach Python's top level: a traceback and exit 1
            code, escaped = 1, f"{type(e).__name__}: {e}"
    return {"code": code, "stderr": err.getvalue()[-4000:], "escaped": escaped}


def problem(result: dict, leftovers: list[str] | None = None) -> str | None:
    """What is wrong with one command's outcome, or None: a failure must be exit 1 with exactly one `error:` line,
    no traceback, no internal error, no MemoryError (an allocation nobody asked for) and no file left behind."""
    if result["escaped"]:
        return f"traceback: {result['escaped']}"
    if result["code"] == 0:
        return None
    lines = result["stderr"].splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    if result["code"] != 1 or len(errors) != 1 or lines[-1] != errors[0] or "Traceback" in result["stderr"]:
        return f"exit {result['code']}: {' | '.join(lines[-3:])}"
    if "MemoryError" in errors[0]:
        return f"allocation: {errors[0]}"
    if leftovers:
        return f"partial output {leftovers}: {errors[0]}"
    return None


GGUF_COMMANDS = ("info", "run", "quantize")


def check_gguf(path: Path, work: Path) -> dict:
    """A GGUF file through info, run and quantize: each command's outcome and what is wrong with it."""
    out_dir = work / "out"
    out_dir.mkdir(exist_ok=True)
    results = {}
    for cmd in GGUF_COMMANDS:
        args = {"info": ["info", path],
                "run": ["run", "-m", path, "-p", "hi", "-n", "2", "-c", "32", "-t", "1", "--temp", "0", "-s", "1"],
                "quantize": ["quantize", path, out_dir / "q.gguf", "Q8_0", "1"]}[cmd]
        r = cli(args)
        left = sorted(p.name for p in out_dir.iterdir())
        r["problem"] = problem(r, left if r["code"] else None)
        results[cmd] = r
        for p in out_dir.iterdir():
            p.unlink()
    return results


def check_checkpoint(folder: Path, work: Path) -> dict:
    """A checkpoint folder through convert: its outcome, time and what is wrong with it (files left behind in the
    model folder or the output folder on failure included)."""
    out_dir = work / "out"
    out_dir.mkdir(exist_ok=True)
    before = sorted(p.name for p in folder.iterdir())
    t0 = time.perf_counter()
    r = cli(["convert", folder, "--outtype", "f32", "--outfile", out_dir / "out.gguf"])
    r["seconds"] = time.perf_counter() - t0
    left = sorted(p.name for p in out_dir.iterdir()) + sorted(set(p.name for p in folder.iterdir()) - set(before))
    r["problem"] = problem(r, left if r["code"] else None)
    for p in out_dir.iterdir():
        p.unlink()
    return {"convert": r}


# ------------------------------------------------------------------------------------------------ worker process

def _selftest(kind: str) -> dict:
    """Planted faults, to prove the pool and the checks see them."""
    if kind == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    if kind == "internal":  # a bug planted where `info` reads the file
        import toolkit.inspect

        def planted(path):
            raise KeyError("planted")
        toolkit.inspect.summary = planted
        r = cli(["info", "/nonexistent"])
        return {"info": dict(r, problem=problem(r))}
    if kind == "hang":
        time.sleep(3600)
    return {}


class _SeedCache:
    def __init__(self):
        self._bytes: dict[str, bytes] = {}

    def get(self, path: str) -> bytes:
        if path not in self._bytes:
            self._bytes[path] = Path(path).read_bytes()
        return self._bytes[path]


def run_job(job: dict, work: Path, seeds: _SeedCache) -> dict:
    if job["kind"] == "gguf":
        path = work / "m.gguf"
        path.write_bytes(apply_byte_ops(seeds.get(job["seed"]), job["ops"]))
        try:
            return check_gguf(path, work)
        finally:
            path.unlink(missing_ok=True)
    if job["kind"] == "checkpoint":
        folder = materialize_checkpoint(Path(job["seed"]), work / "model", job["ops"])
        try:
            return check_checkpoint(folder, work)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return _selftest(job["kind"])


def worker_main() -> None:
    """Jobs as JSON lines on stdin; on the results channel (the original stdout) a `start` line before each job and
    its outcome after it. The commands' own stdout goes to /dev/null."""
    results = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    seeds = _SeedCache()
    with tempfile.TemporaryDirectory(prefix="mutations-") as tmp:
        for line in sys.stdin:
            job = json.loads(line)
            results.write(json.dumps({"start": job["id"]}) + "\n")
            work = Path(tmp) / "job"
            work.mkdir()
            reset_peak_rss()
            try:
                outcome = run_job(job, work, seeds)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            results.write(json.dumps({"done": job["id"], "results": outcome, "max_rss": peak_rss()}) + "\n")


def reset_peak_rss() -> None:
    """Start the process's peak resident set (VmHWM) afresh, so that it measures the next job alone (Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss() -> int:
    """Bytes: the peak resident set since reset_peak_rss (the whole process's lifetime where it cannot be reset)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ------------------------------------------------------------------------------------------------ the pool

@dataclass
class Outcome:
    job: dict
    results: dict  # command -> result (with "problem"); {"crash": ...} when the worker died or hung
    max_rss: int = 0

    @property
    def problems(self) -> list[str]:
        return [f"{self.job['id']} [{cmd}]: {r['problem']}" for cmd, r in self.results.items() if r.get("problem")]


class _Worker:
    def __init__(self, env: dict):
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.mutations"], cwd=REPO, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self._buf = ""

    def line(self, deadline: float) -> str | None:
        """The next result line, or None when the worker died or the deadline passed."""
        while "\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                return None
            chunk = os.read(self.proc.stdout.fileno(), 1 << 16).decode()
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split("\n", 1)
        return line

    def run(self, job: dict, timeout: float) -> Outcome | None:
        """The job's outcome; None when the worker died or hung (it is then stopped)."""
        try:
            self.proc.stdin.write(json.dumps(job) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            return None
        deadline = time.monotonic() + timeout
        while (line := self.line(deadline)) is not None:
            msg = json.loads(line)
            if msg.get("done") == job["id"]:
                return Outcome(job, msg["results"], msg["max_rss"])
        return None

    def death(self) -> str:
        """Why the worker stopped answering (and make sure it has stopped)."""
        try:
            self.proc.wait(5)  # the end of its output comes before its exit status
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return "hang: no answer within the time limit"
        code = self.proc.returncode
        return f"crash: killed by {signal.Signals(-code).name}" if code < 0 else f"crash: worker exited {code}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run_pool(jobs: list[dict], n_workers: int = 2, timeout: float = 60.0) -> list[Outcome]:
    """Every job through `n_workers` long-lived workers; a worker that dies or hangs is replaced, its job reported."""
    env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="200", OMP_NUM_THREADS="1")
    todo: queue.Queue = queue.Queue()
    for job in jobs:
        todo.put(job)
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def drive() -> None:
        worker = _Worker(env)
        try:
            while True:
                try:
                    job = todo.get_nowait()
                except queue.Empty:
                    return
                outcome = worker.run(job, timeout)
                if outcome is None:
                    outcome = Outcome(job, {"worker": {"problem": worker.death()}})
                    worker = _Worker(env)
                with lock:
                    outcomes.append(outcome)
        finally:
            worker.close()

    threads = [threading.Thread(target=drive) for _ in range(n_workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


if __name__ == "__main__":
    worker_main()
