"""Continuous batching: the forward passes that sessions on one model ask for at about the same time run as one native
pass (runtime.arch.base.Transformer.forward_batch), so that N generating sequences read the weights once per step
instead of N times.

Sessions call `Batcher.forward` from their own threads. Each request waits until a pass is free; the first waiting
thread that finds the pass free becomes the leader, takes the waiting requests (one-token steps first, then prompt
chunks while the batch has room) and runs them; the others get their logits when it is done. So that the sequences of
a step meet in one pass, a leader waits a moment for the members that are still sampling their next token — at most
until every member has asked, or a quarter of the last pass's time (at least `gather_s`): a member that comes later
costs less than a pass of its own. Requests join between passes and leave when they are answered; each one's
logits are the same bits as in a pass of its own (the engine's guarantee), so what a request generates does not depend
on what runs beside it.
"""
from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from runtime.arch.base import KVCache, Transformer


@dataclass(eq=False)
class _Request:
    tokens: list[int]
    cache: KVCache
    all_logits: bool
    since: float
    hidden: bool = False
    skip_logits: int = 0
    result: np.ndarray | None = None
    error: BaseException | None = None
    done: bool = False


class Batcher:
    def __init__(self, net: Transformer, n_ubatch: int = 512, gather_s: float = 0.002):
        """n_ubatch: tokens a pass takes (at least one request always goes); gather_s: the least time a leader waits
        for the members that have not asked yet."""
        self.net, self.n_ubatch, self.gather_s = net, n_ubatch, gather_s
        self._last_pass_s = 0.0
        self._free_since = 0.0              # when the last pass ended
        self._cv = threading.Condition()
        self._waiting: list[_Request] = []
        self._running = False
        self._members: dict[int, int] = {}   # id(cache) → nesting depth of `member`
        self.n_passes = 0                    # native passes run (llama-server's n_decode_total)
        self.n_sequences = 0                 # sequences over all passes (/ n_passes: n_busy_slots_per_decode)

    @contextlib.contextmanager
    def member(self, cache: KVCache) -> Iterator[None]:
        """While a sequence generates, its next step is expected: leaders wait a moment for it to join their pass."""
        key = id(cache)
        with self._cv:
            self._members[key] = self._members.get(key, 0) + 1
        try:
            yield
        finally:
            with self._cv:
                self._members[key] -= 1
                if not self._members[key]:
                    del self._members[key]
                self._cv.notify_all()

    def forward(self, tokens: list[int], cache: KVCache, all_logits: bool = False, hidden: bool = False,
                skip_logits: int = 0) -> np.ndarray:
        """`tokens` evaluated after the cache's positions, in a pass shared with whatever else is waiting; the logits as
        Transformer.forward returns them (hidden: every token's hidden state as Transformer.hidden returns them;
        skip_logits, with all_logits: no rows for the first that many tokens)."""
        return self.forward_many([(tokens, cache, all_logits, hidden, skip_logits)])[0]

    def forward_many(self, items: list[tuple]) -> list[np.ndarray]:
        """Several sequences asked for at once, each (tokens, its own cache, all_logits, hidden[, skip_logits]) as
        `forward` takes them: they wait together, so that a pass takes as many of them as n_ubatch allows."""
        now = time.perf_counter()
        reqs = [_Request(list(tokens), cache, all_logits, now, hidden, *skip) for tokens, cache, all_logits, hidden, *skip
                in items]
        with self._cv:
            self._waiting.extend(reqs)
            self._cv.notify_all()
            while not all(r.done for r in reqs):
                delay = self._leader_delay()
                if delay == 0:
                    batch = self._take()
                    self._running = True
                    self._cv.release()
                    try:
                        self._run(batch)
                    finally:
                        self._cv.acquire()
                        self._running = False
                        self._cv.notify_all()
                else:
                    self._cv.wait(delay)
        for r in reqs:
            if r.error is not None:
                raise r.error
        return [r.result for r in reqs]

    def _leader_delay(self) -> float | None:
        """0 when a pass should start now; else how long to wait (None: until notified)."""
        if self._running or not self._waiting:
            return None
        caches = {id(r.cache) for r in self._waiting}
        if all(key in caches for key in self._members):
            return 0
        # the window opens when the first request waits for a free pass: a request that waited through a pass
        # gives the members answered by it the time to sample and ask again
        opened = max(self._waiting[0].since, self._free_since)
        left = opened + max(self.gather_s, self._last_pass_s / 4) - time.perf_counter()
        return 0 if left <= 0 else left

    def _take(self) -> list[_Request]:
        """The next pass: one request per cache (a second one for the same cache waits for the first), one-token
        steps before prompt chunks, within n_ubatch tokens (the first request always)."""
        order = sorted(self._waiting, key=lambda r: len(r.tokens) > 1)
        batch, seen, total = [], set(), 0
        for r in order:
            if id(r.cache) in seen or (batch and total + len(r.tokens) > self.n_ubatch):
                continue
            batch.append(r)
            seen.add(id(r.cache))
            total += len(r.tokens)
        for r in batch:
            self._waiting.remove(r)
        return batch

    def _run(self, batch: list[_Request]) -> None:
        t0 = time.perf_counter()
        try:
            outs = self.net.forward_batch([(r.tokens, r.cache, r.all_logits, r.hidden, r.skip_logits) for r in batch])
            for r, out in zip(batch, outs):
                r.result = out
        except BaseException as e:  # noqa: BLE001 — every request of the pass gets the error
            for r in batch:
                r.error = e
        self.n_passes += 1
        self.n_sequences += len(batch)
        self._free_since = time.perf_counter()
        self._last_pass_s = self._free_since - t0
        for r in batch:
            r.done = True
