"""Inference baseline: prompt (128 tokens) and generation tokens/s on the TinyLlama-1.1B-shaped model for Q4_0, Q8_0,
Q4_K_M and F16, ours (`runtime`, 2 threads) and llama.cpp's (llama-cpp-python 0.3.36, 2 threads) in the same run,
each in its own process."""
from __future__ import annotations

import json
import statistics
import subprocess
from pathlib import Path

from benchmarks.common import PY, console, table
from benchmarks.quantize import f16_input

TYPES = ["Q4_0", "Q8_0", "Q4_K_M", "F16"]
N_PROMPT, N_GEN = 128, 32
_OURS = """
import json, sys, time, numpy as np
from runtime.api import Llama
llm = Llama(sys.argv[1], n_ctx=512, n_batch=512, n_threads=2, verbose=False)
prompt = [int(t) for t in np.random.default_rng(0).integers(100, 30000, %d)]
t = time.perf_counter(); llm.eval(prompt); tp = time.perf_counter() - t
tok = int(np.argmax(llm.scores[-1])); t = time.perf_counter()
for _ in range(%d):
    llm.eval([tok]); tok = int(np.argmax(llm.scores[-1]))
tg = time.perf_counter() - t
print(json.dumps([tp, tg]))
""" % (N_PROMPT, N_GEN)
_LLAMA_CPP = """
import json, sys, time, numpy as np, llama_cpp
llm = llama_cpp.Llama(sys.argv[1], n_ctx=512, n_batch=512, n_threads=2, n_threads_batch=2, verbose=False)
prompt = [int(t) for t in np.random.default_rng(0).integers(100, 30000, %d)]
t = time.perf_counter(); llm.eval(prompt); tp = time.perf_counter() - t
tok = int(np.argmax(llm.scores[llm.n_tokens - 1])); t = time.perf_counter()
for _ in range(%d):
    llm.eval([tok]); tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
tg = time.perf_counter() - t
print(json.dumps([tp, tg]))
""" % (N_PROMPT, N_GEN)


def _measure(code: str, path: Path, repeat: int) -> tuple[float, float]:
    runs = []
    for _ in range(repeat):
        out = subprocess.run([PY, "-c", code, str(path)], capture_output=True, text=True, check=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    tp = statistics.median(r[0] for r in runs)
    tg = statistics.median(r[1] for r in runs)
    return N_PROMPT / tp, N_GEN / tg


def run(data: Path, repeat: int = 3) -> None:
    f16 = f16_input(data)
    rows = []
    for name in TYPES:
        path = f16 if name == "F16" else data / f"run-{name}.gguf"
        if not path.is_file():
            subprocess.run([PY, "-m", "toolkit", "quantize", str(f16), str(path), name, "2"], check=True,
                           capture_output=True)
        console.print(f"[bold]run[/bold]: {name}")
        op, og = _measure(_OURS, path, repeat)
        lp, lg = _measure(_LLAMA_CPP, path, repeat)
        rows.append([name, f"{op:.1f}", f"{lp:.1f}", f"{op / lp:.2f}×", f"{og:.1f}", f"{lg:.1f}", f"{og / lg:.2f}×"])
    table(f"run TinyLlama-1.1B, 2 threads, median of {repeat} (tokens/s; prompt {N_PROMPT}, generation {N_GEN})",
          ["type", "prompt ours", "prompt llama.cpp", "ratio", "gen ours", "gen llama.cpp", "ratio"], rows)
