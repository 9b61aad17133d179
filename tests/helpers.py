"""Shared test helpers: tiny checkpoints cached per session, conversion, reading GGUF back with gguf-py."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
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


def quantized(f32: Path, folder: Path, type_name: str) -> Path:
    """`f32` itself for F32, else the file quantized to `type_name` in `folder`."""
    if type_name == "F32":
        return f32
    from quantizer.quantize import quantize_file
    from quantizer.types import parse_file_type
    out = folder / f"{type_name}.gguf"
    quantize_file(f32, out, parse_file_type(type_name), info=lambda m: None, warn=lambda m: None)
    return out


def llama_cpp_logit_diff(llama_cpp, path: Path, prompt: list[int]) -> float:
    """Max-abs difference of all logits over `prompt`, ours against llama.cpp's on the same file (one token per batch
    there, f32 KV caches on both sides)."""
    from runtime.api import Llama
    ref = llama_cpp.Llama(str(path), n_ctx=128, n_batch=1, n_ubatch=1, logits_all=True, verbose=False, n_threads=2,
                          type_k=0, type_v=0)
    ref.eval(prompt)
    ours = Llama(str(path), n_ctx=128, logits_all=True, verbose=False, type_k=0, type_v=0)
    ours.eval(prompt)
    return float(np.abs(ours.scores - np.array(ref.scores[:len(prompt)])).max())


def greedy_tokens(llama_cpp, path: Path, prompt: list[int], steps: int = 32) -> tuple[list[int], list[int]]:
    """`steps` greedy tokens after `prompt`, ours and llama.cpp's on the same file (f32 KV caches on both sides)."""
    from runtime.api import Llama
    from runtime.sampling import SamplingParams
    ref = llama_cpp.Llama(str(path), n_ctx=128, n_threads=2, verbose=False, type_k=0, type_v=0)
    theirs = [t for t, _ in zip(ref.generate(prompt, temp=0.0, top_k=1), range(steps))]
    ours = list(Llama(str(path), n_ctx=128, verbose=False, type_k=0, type_v=0).session.generate(
        prompt, steps, SamplingParams(temp=0.0), ignore_eos=True))
    return ours, theirs


LLAMA_SERVER = REPO / "bench-data" / "llama.cpp" / "bin" / "llama-server"


@contextlib.contextmanager
def running_llama_server(path, log, *flags):
    """llama.cpp b11434's llama-server (bench-data; the test skips without it) on `path` with `flags`, on a free port,
    its output in `log`, once /health answers; stopped when the block ends. Yields its URL."""
    import httpx
    import pytest
    if not LLAMA_SERVER.is_file():
        pytest.skip(f"{LLAMA_SERVER} is absent (build it with ../shared/tools/build-llama-cpp.sh)")
    with socket.socket() as s:  # a free port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open(log, "w") as out:
        proc = subprocess.Popen([str(LLAMA_SERVER), "-m", str(path), "--port", str(port), *map(str, flags)],
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, Path(log).read_text()
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


# -- the native core's kernels against ggml ---------------------------------------------------------------------------
ISA_NAMES = {1: "avx2", 2: "avxvnni", 3: "avx512vnni"}


def isa_levels() -> list[int]:
    """The x86 instruction-set levels of the native kernels this CPU runs (1 AVX2, 2 AVX-VNNI, 3 AVX512-VNNI)."""
    import native
    f = native.cpu_features()
    return [1] * bool(f.get("f16c_avx2")) + [2] * bool(f.get("avxvnni")) + [3] * bool(f.get("avx512vnni"))


@contextlib.contextmanager
def isa_level(level: int):
    """The native core's kernels capped at an instruction-set level for the block; then uncapped."""
    import native
    native.set_isa_limit(level)
    try:
        yield
    finally:
        native.set_isa_limit(3)


@contextlib.contextmanager
def kernels(scalar: bool):
    """The native core on its portable scalar kernels (or its SIMD ones) for the block; then as the environment says
    (TOOLKIT_FORCE_SCALAR)."""
    import native
    native.set_force_scalar(scalar)
    try:
        yield
    finally:
        native.set_force_scalar(os.environ.get("TOOLKIT_FORCE_SCALAR", "0") not in ("", "0"))


def ggml_cpu():
    """The oracle's libggml-cpu (llama-cpp-python's AVX2 build), initialised; the test skips without it."""
    import ctypes

    import pytest
    llama_cpp = pytest.importorskip("llama_cpp")
    lib_dir = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
    try:
        ctypes.CDLL(os.path.join(lib_dir, "libggml-base.so"), mode=ctypes.RTLD_GLOBAL)
        cpu = ctypes.CDLL(os.path.join(lib_dir, "libggml-cpu.so"))
    except OSError as e:
        pytest.skip(f"libggml-cpu not loadable: {e}")
    cpu.ggml_cpu_init()
    return cpu


def ggml_vec_dots(cpu, name: str, wq: np.ndarray, aq: np.ndarray, cols: int) -> np.ndarray:
    """ggml's `ggml_vec_dot_<name>` of every activation row (aq, in the vec_dot_type) with every weight row (wq):
    [tokens, rows], the reference of the matrix kernels' bits."""
    import ctypes
    fn = getattr(cpu, f"ggml_vec_dot_{name}")
    fn.restype = None
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
                   ctypes.c_size_t, ctypes.c_int]
    out = ctypes.c_float()
    want = np.empty((len(aq), len(wq)), np.float32)
    for j in range(len(aq)):
        for r in range(len(wq)):
            fn(cols, ctypes.addressof(out), 0, wq[r].ctypes.data, 0, aq[j].ctypes.data, 0, 1)
            want[j, r] = out.value
    return want


def ggml_q4_0_gemv(cpu, wq: np.ndarray, aq: np.ndarray, cols: int) -> np.ndarray:
    """ggml's repacked Q4_0 product (ggml_gemv_q4_0_8x8_q8_0, which llama.cpp's CPU backend runs for Q4_0 weights on
    AVX2/AVX512 CPUs) of every activation row (aq, Q8_0) with every weight row (wq, Q4_0; a multiple of 8 rows):
    [tokens, rows]. The rows are repacked here as its make_block_q4_0x8 does (interleave 8): per 8 rows and block,
    the 8 scales, then 8 bytes of each row in turn, twice, the nibbles xor 0x88."""
    import ctypes
    rows, nb = len(wq), cols // 32
    assert rows % 8 == 0
    b = np.asarray(wq, np.uint8).reshape(rows // 8, 8, nb, 18)
    d = b[..., :2].transpose(0, 2, 1, 3).reshape(rows // 8, nb, 16)
    q = (b[..., 2:] ^ 0x88).reshape(rows // 8, 8, nb, 2, 8).transpose(0, 2, 3, 1, 4).reshape(rows // 8, nb, 128)
    packed = np.ascontiguousarray(np.concatenate([d, q], axis=2))
    fn = cpu.ggml_gemv_q4_0_8x8_q8_0
    fn.restype = None
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
                   ctypes.c_int]
    want = np.empty((len(aq), rows), np.float32)
    for j in range(len(aq)):
        a = np.ascontiguousarray(aq[j])
        fn(cols, want[j].ctypes.data, rows, packed.ctypes.data, a.ctypes.data, 1, rows)
    return want


def matrices_end_to_end(path, n_per_row: int) -> np.ndarray:
    """A GGUF file's 2-D tensors (a trained model's weights, say) laid end to end in rows of n_per_row floats."""
    from common.ggufio import GGUFFile

    with GGUFFile(path) as g:
        values = np.concatenate([np.array(g.data(e), np.float32).reshape(-1) for e in g.tensors
                                 if len(e.info.shape) == 2])
    return values[: values.size // n_per_row * n_per_row].reshape(-1, n_per_row)


def assert_dequantized_as_ggml(lib, t, q: np.ndarray, n_per_row: int, gguf_py: bool = True) -> None:
    """Our dequantizer on q (rows of blocks of GGML type t) equals ggml's dequantize_row (lib: its libggml-base) and,
    when asked, gguf-py's, bit for bit (NaN where both have one)."""
    import ctypes

    import native
    from gguf.quants import dequantize as gguf_dequantize
    fn = getattr(lib, f"dequantize_row_{t.name.lower()}")
    fn.restype, fn.argtypes = None, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    want = np.empty((len(q), n_per_row), np.float32)
    fn(q.ctypes.data, want.ctypes.data, want.size)
    ours = native.dequantize(int(t), q, n_per_row, 2)
    np.testing.assert_array_equal(ours, want)
    if gguf_py:
        np.testing.assert_array_equal(ours, gguf_dequantize(q, t).reshape(ours.shape))


def rows_differing(ours: np.ndarray, theirs: np.ndarray, cases: list[str]) -> list[str]:
    """The case names of the rows where two quantized matrices differ."""
    return [cases[i] for i in np.flatnonzero((ours != theirs).any(axis=1))]
