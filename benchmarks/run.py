"""Inference: prompt (128 tokens) and generation tokens/s on the TinyLlama-1.1B-shaped model for Q4_0, Q8_0, Q4_K_M
and F16, ours (`runtime`, 2 threads) and llama.cpp's (llama-cpp-python 0.3.36, 2 threads) in the same run, each in
its own process, alternating so that both see the same machine. Also the memory read bandwidth, generation as a
fraction of its roofline (weights read once per token), and the peak RSS of each process for the same file and
context."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

import native
from benchmarks.common import PY, console, table
from benchmarks.quantize import f16_input
from common.ggufio import GGUFFile

TYPES = os.environ.get("BENCH_RUN_TYPES", "Q4_0,Q8_0,Q4_K_M,F16").split(",")
N_PROMPT, N_GEN = 128, 32
# Each child evaluates the same 128-token prompt, then 32 greedy tokens one at a time, timing every call; it writes
# [prompt seconds, [token seconds...], peak RSS KiB] to the file named by argv[2].
_COMMON = """
import json, resource, sys, time, numpy as np
prompt = [int(t) for t in np.random.default_rng(0).integers(100, 30000, %d)]
def measure(eval_, last_logits):
    t = time.perf_counter(); eval_(prompt); tp = time.perf_counter() - t
    tok, ts = int(np.argmax(last_logits())), []
    for _ in range(%d):
        t = time.perf_counter(); eval_([tok]); ts.append(time.perf_counter() - t); tok = int(np.argmax(last_logits()))
    json.dump([tp, ts, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss], open(sys.argv[2], "w"))
""" % (N_PROMPT, N_GEN)
_OURS = _COMMON + """
from runtime.api import Llama
llm = Llama(sys.argv[1], n_ctx=512, n_batch=512, n_threads=2, verbose=False)
measure(llm.eval, lambda: llm.scores[-1])
"""
_LLAMA_CPP = _COMMON + """
import llama_cpp
llm = llama_cpp.Llama(sys.argv[1], n_ctx=512, n_batch=512, n_threads=2, n_threads_batch=2, verbose=False)
measure(llm.eval, lambda: llm.scores[llm.n_tokens - 1])
"""


def _once(code: str, path: Path) -> tuple[float, list[float], float]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([PY, "-c", code, str(path), out.name], check=True, capture_output=True)
        tp, ts, rss_kb = json.loads(Path(out.name).read_text())
    return tp, ts, rss_kb / 1024


def bandwidth(nthreads: int = 2, size: int = 1 << 30) -> float:
    """Read bandwidth (GB/s) over a buffer larger than the caches, best of 5."""
    buf = np.ones(size, dtype=np.uint8)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        native._core.read_bytes(buf, nthreads)
        best = min(best, time.perf_counter() - t)
    return size / best / 1e9


def bytes_per_token(path: Path) -> int:
    """Weight bytes a generated token reads: every matrix but the token embeddings (unless they are the output)."""
    g = GGUFFile(path)
    try:
        names = {e.info.name for e in g.tensors}
        return sum(e.info.nbytes for e in g.tensors if e.info.name != "token_embd.weight" or "output.weight" not in names)
    finally:
        g.close()


def run(data: Path, repeat: int = 3) -> None:
    f16 = f16_input(data)
    bw = bandwidth()
    console.print(f"[bold]run[/bold]: memory read bandwidth {bw:.1f} GB/s (2 threads)")
    rows = []
    for name in TYPES:
        path = f16 if name == "F16" else data / f"run-{name}.gguf"
        if not path.is_file():
            subprocess.run([PY, "-m", "toolkit", "quantize", str(f16), str(path), name, "2"], check=True,
                           capture_output=True)
        console.print(f"[bold]run[/bold]: {name}")
        res = {"ours": [], "llama.cpp": []}
        for _ in range(repeat):  # alternate, so a slow spell of the machine hits both
            res["ours"].append(_once(_OURS, path))
            res["llama.cpp"].append(_once(_LLAMA_CPP, path))
        fig = {}
        for who, runs in res.items():
            prompt = N_PROMPT / statistics.median(r[0] for r in runs)
            gen = 1.0 / statistics.median(t for r in runs for t in r[1])
            fig[who] = (prompt, gen, max(r[2] for r in runs))
        (op, og, orss), (lp, lg, lrss) = fig["ours"], fig["llama.cpp"]
        roof = bw * 1e9 / bytes_per_token(path)
        rows.append([name, f"{op:.1f}", f"{lp:.1f}", f"{op / lp:.2f}×", f"{og:.1f}", f"{lg:.1f}", f"{og / lg:.2f}×",
                     f"{og / roof:.0%}", f"{orss:.0f}", f"{lrss:.0f}"])
    table(f"run TinyLlama-1.1B, 2 threads, {repeat} alternating runs each (tokens/s: prompt {N_PROMPT} = median of "
          f"runs, generation {N_GEN} = 1 / median token time; roofline = bandwidth / weight bytes per token)",
          ["type", "prompt ours", "prompt llama.cpp", "ratio", "gen ours", "gen llama.cpp", "ratio",
           "gen/roofline", "RSS ours MB", "RSS llama.cpp MB"], rows)
