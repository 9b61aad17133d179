"""Inference: prompt (128 tokens) and generation (64 tokens after it) tokens/s on the TinyLlama-1.1B-shaped model for
Q4_0, Q8_0, Q4_K_M and F16, ours (`runtime`, 2 threads) against llama.cpp b11434's own `llama-bench` built for this
CPU (2 threads), and against llama-cpp-python 0.3.36 (the tests' AVX2 oracle) as a second column, in the same run,
each in its own process, alternating so that all see the same machine. Also the memory read bandwidth, generation as a
fraction of its roofline (weights read once per token), and our peak RSS."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import native
from benchmarks.common import PY, console, llama_bench, llama_cpp_tools, table
from benchmarks.quantize import f16_input, quantized_input
from common.ggufio import GGUFFile

TYPES = os.environ.get("BENCH_RUN_TYPES", "Q4_0,Q8_0,Q4_K_M,F16").split(",")
N_PROMPT, N_GEN = 128, 64  # as llama-bench -p 128 -n 64
# Each child evaluates the same 128-token prompt, then 64 greedy tokens one at a time, timing every call; it writes
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


def bytes_per_token(path: Path, moe_active: bool = False) -> int:
    """Weight bytes a generated token reads: every matrix but the token embeddings (unless they are the output); with
    `moe_active`, of a layer's stacked experts only the share its router picks (expert_used_count / expert_count)."""
    g = GGUFFile(path)
    try:
        arch = g.value("general.architecture")
        share = 1.0
        if moe_active and g.value(f"{arch}.expert_count"):
            share = int(g.value(f"{arch}.expert_used_count")) / int(g.value(f"{arch}.expert_count"))
        names = {e.info.name for e in g.tensors}
        return int(sum(e.info.nbytes * (share if "_exps." in e.info.name else 1.0) for e in g.tensors
                       if e.info.name != "token_embd.weight" or "output.weight" not in names))
    finally:
        g.close()


@dataclass
class Figures:
    """Tokens/s of one file: ours and llama.cpp's (llama-bench b11434), medians of alternating runs; llama-cpp-python's
    (0.3.36, the test oracle, an AVX2 build) when asked for; peak RSS of our process."""
    prompt: float
    gen: float
    prompt_llama: float
    gen_llama: float
    rss_mb: float
    prompt_lcp: float | None = None
    gen_lcp: float | None = None


def measure(path: Path, bin_dir: Path, repeat: int, with_lcp: bool = False) -> Figures:
    """Ours, llama-bench and (optionally) llama-cpp-python on one file, alternating so a slow spell hits all."""
    ours, bench, lcp = [], [], []
    for _ in range(repeat):
        ours.append(_once(_OURS, path))
        bench.append(llama_bench(bin_dir, path, N_PROMPT, N_GEN))
        if with_lcp:
            lcp.append(_once(_LLAMA_CPP, path))

    def rates(runs):
        return (N_PROMPT / statistics.median(r[0] for r in runs), 1.0 / statistics.median(t for r in runs for t in r[1]))
    prompt, gen = rates(ours)
    fig = Figures(prompt, gen, statistics.median(b[0] for b in bench), statistics.median(b[1] for b in bench),
                  max(r[2] for r in ours))
    if with_lcp:
        fig.prompt_lcp, fig.gen_lcp = rates(lcp)
    return fig


def row(label: list[str], f: Figures, roofline: float) -> list[str]:
    out = [*label, f"{f.prompt:.1f}", f"{f.prompt_llama:.1f}", f"{f.prompt / f.prompt_llama:.2f}×", f"{f.gen:.2f}",
           f"{f.gen_llama:.2f}", f"{f.gen / f.gen_llama:.2f}×", f"{f.gen / roofline:.0%}",
           f"{f.gen_llama / roofline:.0%}"]
    if f.prompt_lcp is not None:
        out += [f"{f.prompt / f.prompt_lcp:.2f}×", f"{f.gen / f.gen_lcp:.2f}×"]
    return out + [f"{f.rss_mb:.0f}"]


COLUMNS = ["prompt ours", "prompt llama.cpp", "ratio", "gen ours", "gen llama.cpp", "ratio", "gen/roofline ours",
           "gen/roofline llama.cpp"]


def run(data: Path, repeat: int = 3) -> None:
    bin_dir = llama_cpp_tools(data)
    f16 = f16_input(data)
    bw = bandwidth()
    console.print(f"[bold]run[/bold]: memory read bandwidth {bw:.1f} GB/s (2 threads)")
    rows = []
    for name in TYPES:
        path = f16 if name == "F16" else quantized_input(data, name)
        console.print(f"[bold]run[/bold]: {name}")
        fig = measure(path, bin_dir, repeat, with_lcp=True)
        rows.append(row([name], fig, bw * 1e9 / bytes_per_token(path)))
    table(f"run TinyLlama-1.1B, 2 threads, {repeat} alternating runs each, tokens/s: prompt {N_PROMPT} (median of "
          f"runs), generation {N_GEN} after it (1 / median token time); llama.cpp = b11434's llama-bench built for "
          "this CPU; roofline = bandwidth / weight bytes per token; llama-cpp-python 0.3.36 (AVX2) as a second opponent",
          ["type", *COLUMNS, "prompt vs lcp", "gen vs lcp", "RSS ours MB"], rows)
