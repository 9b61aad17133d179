"""Constrained sampling's cost (issue 14's benchmark): generation tokens/s with a JSON-schema grammar against without,
on `toolkit serve` and on llama.cpp b11434's `llama-server`, the same model file, 2 threads, one slot, greedy,
`/completion` with `json_schema` (the same schema on both), the servers taking turns (one alive at a time, medians of
the rounds). The rate is the one each server reports for the request (`timings.predicted_per_second`: the decode
steps from the first token to the last, sampling and grammar included), so HTTP plays no part.

Models: the TinyLlama-1.1B-shaped Q4_0 (32,000-token vocabulary) and, when the models benchmark has made it, the
Qwen-7B-Chat-shaped Q4_0 (151,936 tokens: the grammar's mask is 4.7x wider). With random weights the JSON ends when
greedy decoding picks the closing quote; each request asks for at most N_GEN tokens and the rows give the median
tokens generated. Target: overhead (1 - with / without) at most 10%."""
from __future__ import annotations

import statistics
from pathlib import Path

import httpx

from benchmarks.common import PY, console, llama_cpp_tools, table
from benchmarks.quantize import quantized_input
from benchmarks.serve import Server, free_port

THREADS, N_GEN, CTX = 2, 48, 1024
PROMPT = "A person described as JSON:"
SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "story": {"type": "string"}},
          "required": ["name", "story"]}
TARGET = 0.10


def _servers(bin_dir: Path, path: Path) -> dict:
    port = free_port()
    return {
        "toolkit serve": lambda: Server([PY, "-m", "toolkit", "serve", "-m", str(path), "--port", "0",
                                         "-t", str(THREADS), "-np", "1", "-c", str(CTX)]),
        "llama-server": lambda: Server([str(bin_dir / "llama-server"), "-m", str(path), "--host", "127.0.0.1",
                                        "--port", str(port), "-t", str(THREADS), "-tb", str(THREADS), "-np", "1",
                                        "-c", str(CTX)], url=f"http://127.0.0.1:{port}"),
    }


def _rate(url: str, constrained: bool) -> tuple[float, int]:
    body = {"prompt": PROMPT, "n_predict": N_GEN, "temperature": 0, "cache_prompt": False}
    if constrained:
        body["json_schema"] = SCHEMA
    r = httpx.post(url + "/completion", json=body, timeout=600)
    r.raise_for_status()
    out = r.json()
    return float(out["timings"]["predicted_per_second"]), int(out["tokens_predicted"])


def _models(data: Path) -> list[Path]:
    qwen = data / "qwen7b-Q4_0.gguf"  # made by the models benchmark
    return [quantized_input(data, "Q4_0")] + ([qwen] if qwen.is_file() else [])


def run(data: Path, repeat: int = 3) -> None:
    bin_dir = llama_cpp_tools(data)
    for path in _models(data):
        console.print(f"[bold]grammar[/bold]: {path.name}, {THREADS} threads, up to {N_GEN} tokens, greedy, "
                      f"median of {repeat} rounds, the servers taking turns")
        rates = {(name, c): [] for name in ("toolkit serve", "llama-server") for c in (False, True)}
        tokens = {key: [] for key in rates}
        makers = _servers(bin_dir, path)
        for r in range(repeat):
            for name in (list(makers) if r % 2 == 0 else list(reversed(makers))):
                server = makers[name]()
                try:
                    _rate(server.url, False)  # warm-up
                    for constrained in (False, True):
                        rate, n = _rate(server.url, constrained)
                        rates[name, constrained].append(rate)
                        tokens[name, constrained].append(n)
                finally:
                    server.close()
        rows = []
        for name in makers:
            free, bound = statistics.median(rates[name, False]), statistics.median(rates[name, True])
            overhead = 1 - bound / free
            rows.append([name, f"{free:.2f}", f"{bound:.2f} ({statistics.median(tokens[name, True]):.0f} tok)",
                         f"{100 * overhead:.1f}%", "yes" if overhead <= TARGET else "NO"])
        ours_bound = statistics.median(rates["toolkit serve", True])
        theirs_bound = statistics.median(rates["llama-server", True])
        table(f"grammar {path.name}: generation tokens/s without and with a JSON-schema grammar (target: overhead "
              f"≤ {100 * TARGET:.0f}%); constrained, ours / llama-server = {ours_bound / theirs_bound:.2f}×",
              ["server", "free", "JSON schema", "overhead", "≤ target"], rows)
