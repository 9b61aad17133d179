"""Quantize benchmark: f16 GGUF of the TinyLlama-1.1B-shaped model → Q4_0, Q8_0, Q4_K_M, Q6_K, Q2_K with 2 threads,
ours (`toolkit quantize`) and llama.cpp's (`llama_model_quantize` from llama-cpp-python 0.3.36) in the same run.
Both outputs are also compared tensor by tensor: the bench refuses to report a speed for different bytes."""
from __future__ import annotations

import subprocess
from pathlib import Path

from benchmarks.common import PY, console, drop_file, median_run, table
from fixtures import make_random_checkpoint
from quantizer.types import parse_file_type

TYPES = ["Q4_0", "Q8_0", "Q4_K_M", "Q6_K", "Q2_K"]
TARGET_RATIO = 0.7
# llama.cpp's quantizer, called as a command so that both sides are measured the same way
_LLAMA_CPP = """
import ctypes, sys, llama_cpp
p = llama_cpp.llama_model_quantize_default_params()
p.ftype, p.nthread = int(sys.argv[3]), int(sys.argv[4])
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)))
"""


def f16_input(data: Path) -> Path:
    out = data / "tinyllama-f16.gguf"
    if not out.is_file():
        ckpt = make_random_checkpoint("tinyllama", data / "tinyllama-bf16")
        median_run([PY, "-m", "toolkit", "convert", str(ckpt), "1", "--outfile", str(out)], 1)
    return out


def quantized_input(data: Path, name: str, threads: int = 2) -> Path:
    """DATA/run-NAME.gguf: the TinyLlama-1.1B-shaped model quantized by `toolkit quantize` (made once, shared by the
    run and serve benchmarks)."""
    path = data / f"run-{name}.gguf"
    if not path.is_file():
        subprocess.run([PY, "-m", "toolkit", "quantize", str(f16_input(data)), str(path), name, str(threads)],
                       check=True, capture_output=True)
    return path


def same_bytes(a: Path, b: Path) -> bool:
    import numpy as np

    from common.ggufio import GGUFFile
    with GGUFFile(a) as x, GGUFFile(b) as y:
        return [e.info for e in x.tensors] == [e.info for e in y.tensors] and all(
            np.array_equal(x.data(ea), y.data(eb)) for ea, eb in zip(x.tensors, y.tensors))


def run(data: Path, repeat: int = 3, threads: int = 2) -> None:
    inp = f16_input(data)
    console.print(f"[bold]quantize[/bold]: {inp.name}, {threads} threads, median of {repeat}")
    rows = []
    for name in TYPES:
        ft = parse_file_type(name)
        ours_out, theirs_out = data / f"q-ours-{name}.gguf", data / f"q-llamacpp-{name}.gguf"
        a = median_run([PY, "-m", "toolkit", "quantize", str(inp), str(ours_out), name, str(threads)], repeat)
        b = median_run([PY, "-c", _LLAMA_CPP, str(inp), str(theirs_out), str(int(ft.ftype)), str(threads)], repeat)
        identical = same_bytes(ours_out, theirs_out)
        ratio = a.seconds / b.seconds
        rows.append([name, f"{a.seconds:.2f} s", f"{b.seconds:.2f} s", f"{ratio:.2f}×",
                     "yes" if identical else "NO", f"{a.peak_rss_mb:.0f} MB", f"{b.peak_rss_mb:.0f} MB",
                     "met" if ratio <= TARGET_RATIO and identical else "MISSED"])
        drop_file(ours_out)
        drop_file(theirs_out)
    table(f"quantize TinyLlama-1.1B f16 (target ≤ {TARGET_RATIO}× llama.cpp's time, identical bytes)",
          ["type", "ours", "llama.cpp", "ratio", "same bytes", "our RSS", "llama.cpp RSS", "target"], rows)
