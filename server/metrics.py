"""The server's counters, as llama-server b11434 keeps them (server_metrics) and shows them at /metrics in
Prometheus' text format under its names (`llamacpp:prompt_tokens_total`, ...).

Cumulative since start: prompt tokens evaluated and their seconds, prompt tokens taken from a slot's cache, tokens
generated and their seconds, the longest sequence seen, forward passes (decodes) and the busy slots each one served.
Per scrape: the prompt and generation rates since the previous scrape (llama-server's buckets, reset by each
rendering). Gauges read at rendering: requests processing and deferred, KV cache tokens and usage.

The calls, from whoever sees the event (thread-safe):
- on_prompt(n, seconds): n prompt tokens evaluated (not those reused from the cache) in `seconds`;
- on_prompt_cached(n): n prompt tokens reused from a slot's cache;
- on_generated(n, seconds): one request's n generated tokens, `seconds` from the first to the last (n - 1 decode
  steps: the first token comes from the prompt's logits), as llama-server's metrics_on_prediction;
- on_sequence(n): a slot holds a sequence of n tokens (prompt and generated).
The forward passes (`llamacpp:n_decode_total`) and the sequences they carried (`llamacpp:n_busy_slots_per_decode`)
are the batcher's own counts (runtime.batching), read at rendering with the gauges."""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass


@dataclass
class Bucket:
    """Tokens, the decode steps that produced them and their seconds (llama-server's server_metrics::bucket)."""
    count: int = 0
    steps: int = 0
    seconds: float = 0.0

    def add(self, n: int, steps: int, seconds: float) -> None:
        self.count += n
        self.steps += steps
        self.seconds += seconds

    def per_second(self) -> float:
        """The rate in decode steps per second, as llama-server's n_per_second (a token that took no step of its
        own does not inflate it)."""
        return self.steps / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Gauges:
    """What the server reads when it renders: requests generating and waiting, tokens in the slots' KV caches and
    their capacity, the forward passes run and the sequences they carried in all."""
    requests_processing: int
    requests_deferred: int
    kv_cache_tokens: int
    kv_cache_capacity: int
    n_decode: int = 0
    n_decode_sequences: int = 0


class Metrics:
    def __init__(self, clock=time.time):
        self.t_start = clock()
        self._lock = threading.Lock()
        self.prompt, self.predict = Bucket(), Bucket()                  # since start
        self.prompt_window, self.predict_window = Bucket(), Bucket()    # since the last rendering (the rates)
        self.n_prompt_cached = 0
        self.n_tokens_max = 0

    def on_prompt(self, n_tokens: int, seconds: float) -> None:
        with self._lock:
            self.prompt.add(n_tokens, n_tokens, seconds)
            self.prompt_window.add(n_tokens, n_tokens, seconds)

    def on_prompt_cached(self, n_tokens: int) -> None:
        with self._lock:
            self.n_prompt_cached += n_tokens

    def on_generated(self, n_tokens: int, seconds: float) -> None:
        steps = max(n_tokens - 1, 0)
        with self._lock:
            self.predict.add(n_tokens, steps, seconds)
            self.predict_window.add(n_tokens, steps, seconds)

    def on_sequence(self, n_tokens: int) -> None:
        with self._lock:
            self.n_tokens_max = max(self.n_tokens_max, n_tokens)

    def render(self, gauges: Gauges) -> str:
        """The Prometheus text (format 0.0.4): llama-server's counters, then its gauges and the KV cache's; the rates
        cover the time since the previous rendering, whose windows this one starts afresh."""
        with self._lock:
            counters = [
                ("prompt_tokens_total", "Number of prompt tokens processed, excluding cached tokens",
                 self.prompt.count),
                ("prompt_tokens_cached_total", "Number of prompt tokens reused from the cache", self.n_prompt_cached),
                ("prompt_seconds_total", "Total time spent processing prompts", self.prompt.seconds),
                ("tokens_predicted_total", "Number of generation tokens processed", self.predict.count),
                ("tokens_predicted_seconds_total", "Total time spent generating tokens", self.predict.seconds),
                ("n_tokens_max", "Largest observed sequence length (prompt + generation)", self.n_tokens_max),
                ("n_decode_total", "Total number of llama_decode() calls, excluding speculative decoding and "
                 "multimodal decoding", gauges.n_decode)]
            gauge_items = [
                ("prompt_tokens_seconds", "Average prompt throughput in tokens/s", self.prompt_window.per_second()),
                ("predicted_tokens_seconds", "Average generation throughput in tokens/s",
                 self.predict_window.per_second()),
                ("requests_processing", "Number of requests processing", gauges.requests_processing),
                ("requests_deferred", "Number of requests deferred", gauges.requests_deferred),
                ("kv_cache_usage_ratio", "KV-cache usage. 1 means 100 percent usage.",
                 gauges.kv_cache_tokens / gauges.kv_cache_capacity if gauges.kv_cache_capacity else 0.0),
                ("kv_cache_tokens", "KV-cache tokens.", gauges.kv_cache_tokens),
                ("n_busy_slots_per_decode", "Average number of busy slots per llama_decode() call",
                 gauges.n_decode_sequences / max(gauges.n_decode, 1))]
            self.prompt_window, self.predict_window = Bucket(), Bucket()
        lines = []
        for kind, items in (("counter", counters), ("gauge", gauge_items)):
            for name, help_text, value in items:
                lines += [f"# HELP llamacpp:{name} {help_text}", f"# TYPE llamacpp:{name} {kind}",
                          f"llamacpp:{name} {number(value)}"]
        return "\n".join(lines) + "\n"


def number(value: float) -> str:
    """A sample value: integers as integers, other numbers with every significant digit."""
    if isinstance(value, int) or (math.isfinite(value) and value == int(value) and abs(value) < 2**53):
        return str(int(value))
    return repr(float(value))
