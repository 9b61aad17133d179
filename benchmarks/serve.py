"""Serving: generation tokens/s seen by one streaming client of `toolkit serve`, against `toolkit run` on the same file
and settings (the target: within 5%), and against llama-cpp-python's own server (`python -m llama_cpp.server`) on the
same file, in the same run. TinyLlama-1.1B-shaped Q4_0, 2 threads, greedy, context 512, the systems taking turns
(each alone on the machine while measured). A `toolkit run` process is measured cold (its first generation), so our
server is measured on its first request after start-up as well as on the next one (warm); llama-cpp-python's server
is measured warm.

Client side, a stream's generation speed is (tokens - 1) / (time of its last text chunk - time of its first): prompt
evaluation and the HTTP round trip are left out, per-token overhead (events, JSON, SSE, the socket) is in. `toolkit
run`'s is its own report (eval + sampling time over the tokens it evaluated). The random-weight model could end early
at its end-of-generation token, so every system is told to ignore it (`--ignore-eos`, `ignore_eos`, a -inf
`logit_bias` for llama-cpp-python) and every measurement checks that all N tokens came."""
from __future__ import annotations

import json
import os
import re
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.common import PY, console, table
from benchmarks.quantize import quantized_input

N_GEN, N_CTX, THREADS = 128, 512, 2
PROMPT = "Once upon a time, in a small village by the sea, there lived"


def _model(data: Path) -> Path:
    return quantized_input(data, "Q4_0", THREADS)  # shared with the run benchmark


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_rate(path: Path) -> float:
    p = subprocess.run([PY, "-m", "toolkit", "run", "-m", str(path), "-p", PROMPT, "-n", str(N_GEN), "--temp", "0",
                        "-c", str(N_CTX), "-t", str(THREADS), "--ignore-eos"], capture_output=True, text=True,
                       check=True)
    sample = re.search(r"sampling time =\s*([\d.]+) ms /\s*(\d+) runs", p.stderr)
    ev = re.search(r"\s eval time =\s*([\d.]+) ms /\s*(\d+) runs", p.stderr)
    assert sample and ev and int(sample.group(2)) == N_GEN, p.stderr
    n_eval, eval_ms = int(ev.group(2)), float(ev.group(1))
    sample_ms = float(sample.group(1)) * n_eval / int(sample.group(2))
    return 1000.0 * n_eval / (eval_ms + sample_ms)


class Server:
    def __init__(self, cmd: list[str], url: str | None = None, ready: str = "/health"):
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log, text=True)
        self.url = url
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {' '.join(cmd)}\n{Path(self.log.name).read_text()[-3000:]}")
            if self.url is None:
                m = re.search(r"listening on (http://\S+)", Path(self.log.name).read_text())
                self.url = m.group(1) if m else None
            if self.url is not None:
                try:
                    if httpx.get(self.url + ready, timeout=2).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
            time.sleep(0.2)
        raise RuntimeError(f"server did not start: {' '.join(cmd)}")

    def stream_rate(self, route: str, body: dict, text_of) -> float:
        """One streamed request: (tokens - 1) / (last chunk - first chunk); checks that N_GEN tokens came. The
        generation speed the server itself reports for the same request (our /completion only) goes to
        `self.inner`."""
        times, n_tokens, self.inner = [], None, None
        with httpx.stream("POST", self.url + route, json=body, timeout=600) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if text_of(event):
                    times.append(time.perf_counter())
                n_tokens = event.get("tokens_predicted", n_tokens)
                if "timings" in event:
                    self.inner = event["timings"]["predicted_per_second"]
                if event.get("choices") and event["choices"][0].get("finish_reason"):
                    n_tokens = N_GEN if event["choices"][0]["finish_reason"] == "length" else -1
        assert n_tokens == N_GEN and len(times) > N_GEN // 2, (n_tokens, len(times))
        return (N_GEN - 1) / (times[-1] - times[0])

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


COLD = "toolkit serve: first request of a fresh server (/completion)"
WARM = "toolkit serve: next request (/completion)"
WARM_OPENAI = "toolkit serve: next request (/v1/completions)"
RUN = "toolkit run (a fresh process)"
THEIRS = "llama-cpp-python server, warm (/v1/completions)"


def run(data: Path, repeat: int = 3) -> None:
    """Each repeat: a fresh `toolkit serve` (its first request, cold like a `toolkit run` process, then a second one,
    warm), `toolkit run`, and llama-cpp-python's server (started once, warmed up)."""
    path = _model(data)
    console.print(f"[bold]serve[/bold]: {path.name}, {THREADS} threads, {N_GEN} tokens, median of {repeat}, the "
                  "systems taking turns")
    greedy = {"prompt": PROMPT, "temperature": 0, "stream": True}
    native_body = {**greedy, "n_predict": N_GEN, "ignore_eos": True}
    openai_body = {**greedy, "max_tokens": N_GEN}
    rates: dict[str, list[float]] = {name: [] for name in (COLD, WARM, WARM_OPENAI, RUN, THEIRS)}
    overhead: list[float] = []  # client-seen over server-reported speed, per request: what HTTP + SSE cost

    def openai_text(e):
        return e["choices"][0]["text"] if e.get("choices") else ""

    port = free_port()
    theirs = Server([PY, "-m", "llama_cpp.server", "--model", str(path), "--host", "127.0.0.1", "--port", str(port),
                     "--n_ctx", str(N_CTX), "--n_threads", str(THREADS), "--n_threads_batch", str(THREADS),
                     "--verbose", "False"], url=f"http://127.0.0.1:{port}", ready="/v1/models")
    try:
        httpx.post(theirs.url + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 8}, timeout=600)
        theirs_body = {**openai_body, "logit_bias": {str(eos_id(path)): -1e9}}
        for _ in range(repeat):
            ours = Server([PY, "-m", "toolkit", "serve", "-m", str(path), "--port", "0", "-c", str(N_CTX),
                           "-t", str(THREADS)])
            try:
                for name in (COLD, WARM):
                    rates[name].append(ours.stream_rate("/completion", native_body, lambda e: e.get("content")))
                    overhead.append(rates[name][-1] / ours.inner)
                try:  # the OpenAI route cannot ignore EOS: measured when the model does not end early
                    rates[WARM_OPENAI].append(ours.stream_rate("/v1/completions", openai_body, openai_text))
                except AssertionError:
                    pass
            finally:
                ours.close()
            rates[RUN].append(_run_rate(path))
            rates[THEIRS].append(theirs.stream_rate("/v1/completions", theirs_body, openai_text))
    finally:
        theirs.close()
    rate = {name: statistics.median(r) for name, r in rates.items() if r}
    rows = [[name, f"{r:.2f}", f"{min(rates[name]):.2f}–{max(rates[name]):.2f}", f"{r / rate[RUN]:.3f}×",
             f"{r / rate[THEIRS]:.2f}×"] for name, r in rate.items()]
    table(f"serve {path.name}: generation tokens/s seen by one streaming client, {THREADS} threads, {N_GEN} tokens, "
          f"greedy, median of {repeat}",
          ["system", "tokens/s", "range", "vs toolkit run", "vs llama-cpp-python server"], rows)
    console.print(f"toolkit serve, per request: tokens/s seen by the client over tokens/s of its generation loop "
                  f"(the HTTP/SSE cost, free of machine noise): median {statistics.median(overhead):.4f}, "
                  f"min {min(overhead):.4f}")


def eos_id(path: Path) -> int:
    from common.ggufio import GGUFFile
    with GGUFFile(path) as g:
        return int(g.value("tokenizer.ggml.eos_token_id"))


if __name__ == "__main__":
    run(Path(os.environ.get("BENCH", "bench-data")))
