"""Concurrent serving: `toolkit serve` against llama.cpp b11434's `llama-server` (issue 13's benchmark).

Same model file (the TinyLlama-1.1B-shaped Q4_0 and Q4_K_M), 2 threads, 4 slots, the same per-slot context of 1024
tokens (ours `-c 1024`, per slot; llama-server `-np 4 -c 4096`, since with an explicit `-np` and no `--kv-unified`
b11434 gives each slot n_ctx / n_parallel, padded to 256; both servers' slot sizes are read back and compared). Not
the default `-c 0` (the model's 2048 tokens shared by the slots: 512 each, on both servers): a random-weight model's
replies, tokenized again as text, take two to three times their tokens, and the chat below outgrows 512 tokens
before turn 8. The same chat template
(chatml: the random-weight model has none, and the two servers' fallbacks differ), the same requests. One server is
alive at a time, fresh for each round, the two alternating (which one starts a round alternates too); figures are
medians over the rounds.

Each round, on each server, after one warm-up request:
- load: 1, 4 and 8 concurrent streaming clients, each sending one `/v1/completions` request (a ~100-token prompt of
  its own, nothing shared, so the prompt caches play no part; 64 greedy tokens). Total generated tokens / the wall
  time from the first request sent to the last stream closed, and the median time to first token (the first text
  chunk; with 8 clients and 4 slots half of them wait for a slot, on both servers alike);
- chat: 8 turns through `/v1/chat/completions`, the whole conversation re-sent each turn with the previous replies
  appended (16 greedy tokens each; turn 8's prompt takes about 500 tokens): time to first token of
  turn 8 over turn 1's. Both servers cache prompts by default, so turn k should evaluate only the new tokens (a
  random-weight model's reply, tokenized again as text, differs from the tokens generated, so both re-evaluate it):
  the prompt tokens each server says it evaluated (`llamacpp:prompt_tokens_total` of `/metrics`, `--metrics` on both)
  are shown beside it.

Every stream must give all its tokens: the random-weight model may sample its end-of-generation token, so every
request carries `ignore_eos: true` (llama-server takes it on every route: it bans each end-of-generation token) and a
`logit_bias` of -100 on EOS (our OpenAI routes have no `ignore_eos`; -100 bans a token there); the usage chunk
(`stream_options.include_usage`) is checked for the tokens asked."""
from __future__ import annotations

import json
import os
import random
import re
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks.common import PY, console, llama_cpp_tools, table
from benchmarks.quantize import quantized_input
from benchmarks.serve import Server, eos_id, free_port

TYPES = os.environ.get("BENCH_SERVE_TYPES", "Q4_0,Q4_K_M").split(",")
THREADS, SLOTS, CTX_PER_SLOT, CLIENTS = 2, 4, 1024, (1, 4, 8)
N_GEN, PROMPT_WORDS = 64, 92          # 92 words: about 100 tokens with the TinyLlama (SentencePiece) vocabulary
CHAT_TURNS, CHAT_GEN, CHAT_WORDS = 8, 16, 8
TEMPLATE = "chatml"
TARGET_VS_LLAMA, TARGET_SCALING, TARGET_CHAT = 1.1, 1.7, 1.3
OURS, THEIRS = "toolkit serve", "llama-server"
WORDS = ("the a of and to in is was that for on with as by at from his her they we you it this which one all were "
         "when there their said each she do how if will up other about out many then them these so some would make "
         "like him into time has look two more write go see number way could people than first water been call who "
         "oil its now find long down day did get come made may part over new sound take only little work know place "
         "year live me back give most very after thing our just name good sentence man think say great where help "
         "through much before line right too mean old any same tell boy follow came want show also around form three "
         "small set put end does another well large must big even such because turn here why ask went men read need "
         "land different home us move try kind hand picture again change off play spell air away animal house point "
         "page letter mother answer found study still learn should world high every near add food between own below "
         "country plant last school father keep tree never start city earth eye light thought head under story saw "
         "left few while along might close something seem next hard open example begin life always those both paper "
         "together got group often run important until children side feet car mile night walk white sea began grow "
         "took river four carry state once book hear stop without second later miss idea enough eat face watch far "
         "real almost let above girl sometimes mountain cut young talk soon list song being leave family").split()


def words(key: str, n: int) -> str:
    rng = random.Random(key)
    return " ".join(rng.choice(WORDS) for _ in range(n))


@dataclass
class Stream:
    start: float
    first: float
    end: float
    tokens: int
    prompt_tokens: int
    text: str


def stream(client: httpx.Client, url: str, route: str, body: dict, n_gen: int) -> Stream:
    """One streamed request, timed on the client; checks that it gave n_gen tokens (by its usage chunk)."""
    start, first, usage, reason, text = time.perf_counter(), None, None, None, []
    with client.stream("POST", url + route, json=body, timeout=600) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{url}{route}: HTTP {r.status_code}: {r.read()[:500]!r}")
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(f"{url}{route}: error event {event['error']}")
            for c in event.get("choices") or []:
                piece = c["text"] if "text" in c else (c.get("delta") or {}).get("content")
                if piece:
                    first = first or time.perf_counter()
                    text.append(piece)
                reason = c.get("finish_reason") or reason
            usage = event.get("usage") or usage
    end = time.perf_counter()
    if usage is None or usage.get("completion_tokens") != n_gen or reason != "length" or first is None:
        raise RuntimeError(f"{url}{route}: {n_gen} tokens asked, got usage {usage}, finish_reason {reason!r}, "
                           f"{len(text)} text chunks")
    return Stream(start, first, end, usage["completion_tokens"], usage["prompt_tokens"], "".join(text))


def sampling(eos: int, n_gen: int) -> dict:
    return {"max_tokens": n_gen, "temperature": 0, "stream": True, "stream_options": {"include_usage": True},
            "ignore_eos": True, "logit_bias": {str(eos): -100}}


def load(url: str, n_clients: int, eos: int, n_gen: int) -> tuple[float, float, int]:
    """n_clients streaming /v1/completions at once: total tokens/s, median time to first token, median prompt
    tokens."""
    barrier = threading.Barrier(n_clients)

    def client(i: int) -> Stream:
        body = {"prompt": f"{n_clients}.{i}. " + words(f"{n_clients}.{i}", PROMPT_WORDS), **sampling(eos, n_gen)}
        with httpx.Client() as c:
            barrier.wait()
            return stream(c, url, "/v1/completions", body, n_gen)

    with ThreadPoolExecutor(n_clients) as pool:
        streams = list(pool.map(client, range(n_clients)))
    wall = max(s.end for s in streams) - min(s.start for s in streams)
    return (sum(s.tokens for s in streams) / wall, statistics.median(s.first - s.start for s in streams),
            int(statistics.median(s.prompt_tokens for s in streams)))


def _counter(url: str, name: str) -> float:
    m = re.search(rf"^llamacpp:{name} (\S+)$", httpx.get(url + "/metrics", timeout=30).text, re.M)
    if not m:
        raise RuntimeError(f"{url}/metrics has no llamacpp:{name}")
    return float(m.group(1))


def _evaluated(url: str, before: tuple[float, float], n_gen: int) -> tuple[int, tuple[float, float]]:
    """Prompt tokens evaluated since `before` (prompt_tokens_total, tokens_predicted_total); waits until the
    request's generated tokens are counted (a server may count them just after the stream closes)."""
    deadline = time.monotonic() + 5
    while True:
        now = (_counter(url, "prompt_tokens_total"), _counter(url, "tokens_predicted_total"))
        if now[1] - before[1] >= n_gen or time.monotonic() > deadline:
            return int(now[0] - before[0]), now
        time.sleep(0.05)


def chat(url: str, eos: int) -> tuple[list[float], list[int]]:
    """An 8-turn conversation: each turn's time to first token and the prompt tokens the server evaluated."""
    messages = [{"role": "system", "content": "You are a helpful assistant."}]
    ttft, evaluated = [], []
    counts = (_counter(url, "prompt_tokens_total"), _counter(url, "tokens_predicted_total"))
    with httpx.Client() as c:
        for turn in range(CHAT_TURNS):
            messages.append({"role": "user", "content": words(f"chat.{turn}", CHAT_WORDS)})
            s = stream(c, url, "/v1/chat/completions", {"messages": messages, **sampling(eos, CHAT_GEN)}, CHAT_GEN)
            ttft.append(s.first - s.start)
            n, counts = _evaluated(url, counts, CHAT_GEN)
            evaluated.append(n)
            messages.append({"role": "assistant", "content": s.text})
    return ttft, evaluated


@dataclass
class Figures:
    rate: dict[int, list[float]]
    ttft: dict[int, list[float]]
    prompt: dict[int, list[int]]
    chat_ttft: list[list[float]]
    chat_evaluated: list[list[int]]


def session(server: Server, eos: int, n_gen: int, fig: Figures) -> None:
    """One server's turn: warm-up, the load levels, the chat."""
    httpx.post(server.url + "/v1/completions", json={"prompt": "warm up " + words("warm", 20), "max_tokens": 8},
               timeout=600).raise_for_status()
    for n in CLIENTS:
        rate, ttft, prompt = load(server.url, n, eos, n_gen)
        fig.rate[n].append(rate)
        fig.ttft[n].append(ttft)
        fig.prompt[n].append(prompt)
    ttft, evaluated = chat(server.url, eos)
    fig.chat_ttft.append(ttft)
    fig.chat_evaluated.append(evaluated)


def ours(path: Path) -> Server:
    return Server([PY, "-m", "toolkit", "serve", "-m", str(path), "--port", "0", "-t", str(THREADS),
                   "-np", str(SLOTS), "-c", str(CTX_PER_SLOT), "--chat-template", TEMPLATE, "--metrics"])


def theirs(bin_dir: Path, path: Path) -> Server:
    port = free_port()
    return Server([str(bin_dir / "llama-server"), "-m", str(path), "--host", "127.0.0.1", "--port", str(port),
                   "-t", str(THREADS), "-tb", str(THREADS), "-np", str(SLOTS), "-c", str(SLOTS * CTX_PER_SLOT),
                   "--chat-template", TEMPLATE, "--metrics"], url=f"http://127.0.0.1:{port}")


def slot_context(server: Server, mine: bool) -> int:
    if mine:
        return int(httpx.get(server.url + "/v1/models", timeout=30).json()["data"][0]["meta"]["n_ctx"])
    return int(httpx.get(server.url + "/props", timeout=30).json()["default_generation_settings"]["n_ctx"])


def measure(bin_dir: Path, path: Path, rounds: int, n_gen: int) -> dict[str, Figures]:
    figs = {name: Figures({n: [] for n in CLIENTS}, {n: [] for n in CLIENTS}, {n: [] for n in CLIENTS}, [], [])
            for name in (OURS, THEIRS)}
    eos = eos_id(path)
    for r in range(rounds):
        for name in ((OURS, THEIRS) if r % 2 == 0 else (THEIRS, OURS)):
            server = ours(path) if name == OURS else theirs(bin_dir, path)
            try:
                got = slot_context(server, name == OURS)
                if got != CTX_PER_SLOT:
                    raise RuntimeError(f"{name}'s slots hold {got} tokens, not {CTX_PER_SLOT}")
                session(server, eos, n_gen, figs[name])
            finally:
                server.close()
    return figs


def _med(xs) -> float:
    return statistics.median(xs)


def report(name: str, figs: dict[str, Figures], rounds: int, n_gen: int) -> None:
    a, b = figs[OURS], figs[THEIRS]
    rows = []
    for n in CLIENTS:
        ra, rb, ta, tb = _med(a.rate[n]), _med(b.rate[n]), _med(a.ttft[n]), _med(b.ttft[n])
        ok = ra / rb >= TARGET_VS_LLAMA
        rows.append([str(n), f"{ra:.2f}", f"{rb:.2f}", f"{ra / rb:.2f}×", f"{ta * 1000:.0f}", f"{tb * 1000:.0f}",
                     f"{ta / tb:.2f}×", f"{_med(a.prompt[n]):.0f} / {_med(b.prompt[n]):.0f}",
                     "met" if ok else "MISSED"])
    table(f"serve under load, {name}: {SLOTS} slots of {CTX_PER_SLOT} tokens, {THREADS} threads, /v1/completions "
          f"streamed, {n_gen} greedy tokens each, each client one request, median of {rounds} alternating rounds "
          f"(target: throughput ≥ {TARGET_VS_LLAMA}× llama-server at every concurrency)",
          ["clients", f"{OURS} tok/s", f"{THEIRS} tok/s", "ratio", "TTFT ours ms", "TTFT llama-server ms",
           "TTFT ratio", "prompt tokens", "target"], rows)
    sa = _med(a.rate[4]) / _med(a.rate[1])
    sb = _med(b.rate[4]) / _med(b.rate[1])
    console.print(f"4 clients over 1 client: {OURS} {sa:.2f}×, {THEIRS} {sb:.2f}× (target for ours ≥ "
                  f"{TARGET_SCALING}×: {'met' if sa >= TARGET_SCALING else 'MISSED'})")
    rows = []
    for server, f in ((OURS, a), (THEIRS, b)):
        t1 = _med(t[0] for t in f.chat_ttft)
        t8 = _med(t[-1] for t in f.chat_ttft)
        e1 = _med(e[0] for e in f.chat_evaluated)
        e8 = _med(e[-1] for e in f.chat_evaluated)
        target = ("met" if t8 / t1 <= TARGET_CHAT else "MISSED") if server == OURS else "(reference)"
        rows.append([server, f"{t1 * 1000:.0f}", f"{t8 * 1000:.0f}", f"{t8 / t1:.2f}×", f"{e1:.0f}", f"{e8:.0f}",
                     target])
    table(f"{CHAT_TURNS}-turn chat, {name}: /v1/chat/completions streamed, the conversation re-sent each turn, "
          f"{CHAT_GEN}-token replies, median of {rounds} (target: turn-{CHAT_TURNS} TTFT ≤ {TARGET_CHAT}× turn 1's)",
          ["server", "turn-1 TTFT ms", f"turn-{CHAT_TURNS} TTFT ms", "ratio", "turn-1 prompt tokens evaluated",
           f"turn-{CHAT_TURNS} prompt tokens evaluated", "target"], rows)


def run(data: Path, repeat: int = 3, n_gen: int = N_GEN) -> None:
    bin_dir = llama_cpp_tools(data)
    t0 = time.monotonic()
    for name in TYPES:
        path = quantized_input(data, name, THREADS)
        console.print(f"[bold]serve-concurrent[/bold]: {path.name}, {OURS} against llama.cpp b11434's {THEIRS}, "
                      f"{repeat} alternating rounds")
        report(name, measure(bin_dir, path, repeat, n_gen), repeat, n_gen)
    console.print(f"serve-concurrent took {time.monotonic() - t0:.0f} s")


if __name__ == "__main__":
    run(Path(os.environ.get("BENCH", "bench-data")))
