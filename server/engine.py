"""The server's generation engine: one loaded model, `parallel` slots (each its own KV cache on that model), a bounded
queue of requests waiting for a slot, and generation on worker threads so that the event loop never runs a forward
pass.

A request's life: `reserve()` on the event loop gives a `Ticket` at once (or raises `Busy` when every slot is taken
and the queue is full); `Ticket.events()` waits for the slot, starts the job on a worker thread and yields its events;
`Ticket.close()` (always called, also when the client went away) stops the job between two tokens or gives up the
place in the queue. The worker thread itself hands the slot back when the job has ended, so a slot is never reused
while its previous job still runs.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import AsyncIterator, Callable

from runtime.chat import ChatFormat, chat_format, prompt_tokens
from runtime.generate import Session, Timings
from runtime.grammar import Grammar
from runtime.logprobs import TokenLogprob, token_logprob
from runtime.sampling import SamplingParams
from runtime.stops import StopScanner


class Busy(Exception):
    """Every slot is generating and the queue is full."""


@dataclass
class GenRequest:
    prompt: list[int]
    n_predict: int                      # -1: until an end-of-generation token or the context is full
    params: SamplingParams
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    grammar: Grammar | None = None      # constrained sampling (runtime.structured)
    n_probs: int | None = None          # log-probabilities of each token and its n_probs most likely (None: off)
    n: int = 1                          # choices: continuations of the prompt, evaluated once
    cache_prompt: bool = True           # reuse the slot's KV cache for the prompt's common prefix


@dataclass
class Piece:
    """Generated text as it is released, with the log-probabilities of the tokens it starts."""
    text: str
    probs: list[TokenLogprob] = field(default_factory=list)
    index: int = 0                      # the choice it belongs to


@dataclass
class GenResult:
    stop_type: str                      # llama.cpp's: "eos", "word", "limit"; ours: "cancelled"
    stopping_word: str
    n_prompt: int                       # the prompt's tokens
    n_predicted: int
    prompt_ms: float                    # from the start to the first sampled token (prompt evaluation)
    predicted_ms: float                 # from the first sampled token to the last: n_predicted - 1 steps
    slot_id: int
    probs: list[TokenLogprob] = field(default_factory=list)   # of the tokens whose text was returned (n_probs)
    index: int = 0                                            # the choice
    text: str = ""                                            # the choice's whole text
    choices: list["GenResult"] = field(default_factory=list)  # with n > 1: each choice's result
    n_cached: int = 0                                         # prompt tokens taken from the slot's cache

    @property
    def finish_reason(self) -> str:
        return "length" if self.stop_type == "limit" else "stop"

    @property
    def tokens_per_second(self) -> float:
        """Generation speed: the steps between the first and the last token over their time."""
        return 1000.0 * (self.n_predicted - 1) / self.predicted_ms if self.predicted_ms > 0 else 0.0

    def timings(self) -> dict:
        """llama.cpp's `timings` object."""
        def per(ms, n):
            return (ms / n if n else 0.0), (1000.0 * n / ms if ms > 0 else 0.0)
        n_eval = self.n_prompt - self.n_cached  # what was really evaluated
        ppt, pps = per(self.prompt_ms, n_eval)
        gpt, gps = per(self.predicted_ms, max(self.n_predicted - 1, 0))
        return {"prompt_n": n_eval, "prompt_ms": self.prompt_ms, "prompt_per_token_ms": ppt,
                "prompt_per_second": pps, "predicted_n": self.n_predicted, "predicted_ms": self.predicted_ms,
                "predicted_per_token_ms": gpt, "predicted_per_second": gps}


@dataclass
class Slot:
    id: int
    session: Session
    n_decoded: int = 0   # the tokens sampled so far by its current (or last) request, all choices (llama-server's)


def choice_params(params: SamplingParams, index: int) -> SamplingParams:
    """Choice `index`'s sampling: llama-server's n_cmpl children take the seed + index (a random seed stays random,
    drawn afresh for each choice)."""
    return replace(params, seed=(params.seed + index) % 2**32 if params.seed >= 0 else -1)


def generate(slot: Slot, req: GenRequest, emit: Callable[[Piece], None], cancelled: Callable[[], bool]) -> GenResult:
    """Run one request on a slot (on a worker thread): the prompt is evaluated once — after the prefix it shares with
    the slot's previous context, kept in the cache (cache_prompt) — then each of the n choices continues it (the
    context rewound to the prompt, whose KV entries stay). The slot's forward passes are batched with the other
    slots' (runtime.batching). Text pieces (with their tokens' log-probabilities when asked) go to `emit` as they are
    decoded; stop strings as runtime.stops.StopScanner handles them. `cancelled` is polled between tokens. The
    result: the one choice's, or for n > 1 their sum with each choice's own in `choices`."""
    session = slot.session
    with session.batcher.member(session.cache):
        return _generate(slot, req, emit, cancelled)


def _generate(slot: Slot, req: GenRequest, emit: Callable[[Piece], None], cancelled: Callable[[], bool]) -> GenResult:
    session = slot.session
    if req.cache_prompt:
        cached = session.reuse_prefix(req.prompt)
    else:
        session.reset()
        cached = 0
    session.timings = Timings()
    slot.n_decoded = 0
    t0 = time.perf_counter()
    logits = session.eval(req.prompt[cached:])
    t_prompt = time.perf_counter()
    results = []
    for index in range(req.n):
        session.rewind(len(req.prompt))
        results.append(_one_choice(slot, req, index, logits, emit, cancelled))
        if results[-1].stop_type == "cancelled":
            break
    prompt_ms = (t_prompt - t0) * 1000.0
    if len(results) == 1:
        return replace(results[0], prompt_ms=prompt_ms + results[0].prompt_ms, n_cached=cached)
    last = results[-1]
    return GenResult(stop_type=last.stop_type, stopping_word=last.stopping_word, n_prompt=len(req.prompt),
                     n_predicted=sum(r.n_predicted for r in results), prompt_ms=prompt_ms,
                     predicted_ms=sum(r.prompt_ms + r.predicted_ms for r in results), slot_id=slot.id,
                     choices=results, n_cached=cached)


def _one_choice(slot: Slot, req: GenRequest, index: int, logits, emit: Callable[[Piece], None],
                cancelled: Callable[[], bool]) -> GenResult:
    """One continuation of the evaluated prompt, from its last logits."""
    session = slot.session
    t0 = time.perf_counter()
    t_first = t_last = None
    scanner, n, probs, text = StopScanner(session.tokenizer, req.stop), 0, [], []
    stop_type = None
    steps = session.steps([], req.n_predict, choice_params(req.params, index), ignore_eos=req.ignore_eos,
                          grammar=req.grammar, start=logits)

    def release(piece: str, items: list) -> None:
        probs.extend(items)
        text.append(piece)
        if piece or items:
            emit(Piece(piece, items, index))
    try:
        for step in steps:
            t_last = time.perf_counter()
            if t_first is None:
                t_first = t_last
            n += 1
            slot.n_decoded += 1
            item = token_logprob(step.token, step.logits, req.n_probs) if req.n_probs is not None else None
            release(*scanner.feed(step.token, item))
            if scanner.word is not None:
                stop_type = "word"
                break
            if cancelled():
                stop_type = "cancelled"
                break
    finally:
        steps.close()
    if stop_type is None:
        release(*scanner.flush())
        room = float("inf") if session.context_shift else session.n_ctx - len(req.prompt)
        limit = room if req.n_predict < 0 else min(req.n_predict, room)
        stop_type = "limit" if n >= limit else "eos"
    if t_first is None:
        t_first = t_last = time.perf_counter()
    return GenResult(stop_type=stop_type, stopping_word=scanner.word or "", n_prompt=len(req.prompt), n_predicted=n,
                     prompt_ms=(t_first - t0) * 1000.0, predicted_ms=(t_last - t_first) * 1000.0, slot_id=slot.id,
                     probs=probs, index=index, text="".join(text))


class Engine:
    def __init__(self, model_path: str, n_ctx: int = 512, n_threads: int | None = None, parallel: int = 1,
                 queue_size: int = 32, chat_template: str | None = None, n_batch: int = 512, cache_type: str = "f16",
                 cache_type_v: str | None = None, n_ubatch: int | None = None, context_shift: bool = False,
                 n_keep: int = 0, jinja: bool = True, use_mmap: bool = True):
        """jinja: chats rendered with the file's own template (else the architecture's built-in format).
        use_mmap: runtime.model.Model's.
        n_ctx: per slot (0: the model's training context shared by the slots, as runtime.generate.context_size
        gives it); the slots' forward passes run batched (runtime.batching), n_ubatch tokens at most."""
        if n_ctx == 0:
            from runtime.generate import check_context_memory
            n_ctx = check_context_memory(model_path, 0, cache_type, parallel, "-c 0", cache_type_v)
        base = Session(model_path, n_ctx=n_ctx, n_batch=n_batch, n_threads=n_threads, cache_type=cache_type,
                       cache_type_v=cache_type_v, n_ubatch=n_ubatch, use_mmap=use_mmap)
        # the slots below copy them; --keep counts the tokens after the BOS, as llama-server does
        base.context_shift, base.n_keep = context_shift, n_keep + int(base.tokenizer.add_bos)
        self.base = base
        self.context_shift = context_shift
        self.model_path = str(model_path)
        self.n_ctx, self.n_threads, self.queue_size = base.n_ctx, base.n_threads, queue_size
        self.tokenizer = base.tokenizer
        self.hp = base.model.hp
        self.chat: ChatFormat = chat_format(
            self.hp.arch, base.model.gguf.value("tokenizer.chat_template") if jinja else None, chat_template)
        self.slots = [Slot(0, base)] + [Slot(i, base.new_slot()) for i in range(1, parallel)]
        self._free: deque[Slot] = deque(self.slots)
        self._waiting: deque[asyncio.Future] = deque()
        self._executor = ThreadPoolExecutor(parallel, thread_name_prefix="slot")
        self._jobs: set[Job] = set()

    # -- prompts --------------------------------------------------------------------------------------------------
    def tokenize(self, text: str, add_bos: bool = True, special: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_bos=add_bos and self.tokenizer.add_bos, parse_special=special)

    def prompt(self, text: str) -> list[int]:
        """A completion prompt as `toolkit run` tokenizes it (BOS alone for an empty prompt, when the model has one)."""
        tokens = self.tokenize(text)
        if not tokens and self.tokenizer.bos_id is not None:
            tokens = [self.tokenizer.bos_id]
        return tokens

    def chat_prompt(self, messages: list[dict]) -> list[int]:
        return prompt_tokens(self.chat, self.tokenizer, messages)

    # -- slots and the queue (event loop only) --------------------------------------------------------------------
    @property
    def n_processing(self) -> int:
        return len(self.slots) - len(self._free)

    @property
    def n_waiting(self) -> int:
        return len(self._waiting)

    def reserve(self) -> "Ticket":
        fut = asyncio.get_running_loop().create_future()
        if self._free and not self._waiting:
            fut.set_result(self._free.popleft())
        elif len(self._waiting) >= self.queue_size:
            raise Busy(f"the server is busy: {len(self.slots)} slot(s) generating and {len(self._waiting)} "
                       f"request(s) waiting (queue size {self.queue_size}); retry later")
        else:
            self._waiting.append(fut)
        return Ticket(self, fut)

    def _release(self, slot: Slot) -> None:
        while self._waiting:
            fut = self._waiting.popleft()
            if not fut.done():
                fut.set_result(slot)
                return
        self._free.append(slot)

    def _best_slot(self, held: Slot, prompt: list[int]) -> Slot:
        """The slot for a prompt: of the one it was handed and the free ones, the one whose cached context shares the
        longest prefix with it (the held slot when none shares more); the other goes back to the free ones."""
        def shared(slot: Slot) -> int:
            return next((i for i, (a, b) in enumerate(zip(slot.session.tokens, prompt)) if a != b),
                        min(len(slot.session.tokens), len(prompt)))
        best = max(self._free, key=shared, default=held)
        if shared(best) <= shared(held):
            return held
        self._free.remove(best)
        self._free.append(held)
        return best

    def _abandon(self, fut: asyncio.Future) -> None:
        """A request leaves before its job started: give back the slot it was handed, or its place in the queue."""
        if fut.done() and not fut.cancelled():
            self._release(fut.result())
            return
        fut.cancel()
        try:
            self._waiting.remove(fut)
        except ValueError:
            pass

    def close(self) -> None:
        """Stop every job, wait for the worker threads, then close the model (only the original session owns it)."""
        for job in list(self._jobs):
            job.cancel.set()
        self._executor.shutdown(wait=True)
        self.base.close()


class Job:
    """One generation on a worker thread; its events reach the event loop through an asyncio queue."""

    def __init__(self, engine: Engine, slot: Slot, req: GenRequest):
        self.engine, self.slot, self.req = engine, slot, req
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancel = threading.Event()

    def _send(self, event: tuple) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop is closed: the server is shutting down
            pass

    def run(self) -> None:
        last: tuple = ("error", RuntimeError("the generation ended without a result"))
        try:
            last = ("done", generate(self.slot, self.req, lambda piece: self._send(("text", piece)),
                                     self.cancel.is_set))
        except BaseException as e:  # noqa: BLE001 — handed to the request, which answers with an error
            last = ("error", e)
        finally:
            try:
                self.loop.call_soon_threadsafe(self._finished, last)
            except RuntimeError:
                pass

    def _finished(self, last: tuple) -> None:
        """The slot is free again before the request sees its last event: a client that sends its next turn as soon
        as it has the answer finds the slot that holds its conversation (sent apart, the two could be taken in the
        other order and the next turn went to another slot, evaluating its whole prompt again)."""
        self.engine._jobs.discard(self)
        self.engine._release(self.slot)
        self.events.put_nowait(last)


class Ticket:
    """A request's place: first in the queue, then on a slot."""

    def __init__(self, engine: Engine, fut: asyncio.Future):
        self.engine, self._fut = engine, fut
        self.job: Job | None = None
        self.closed = False

    async def events(self, req: GenRequest) -> AsyncIterator[tuple]:
        """("text", Piece) events, then ("done", GenResult); a failure in the job is raised here."""
        slot = await self._fut
        if self.closed:
            return
        if req.cache_prompt:
            slot = self.engine._best_slot(slot, req.prompt)
        self.job = Job(self.engine, slot, req)
        self.engine._jobs.add(self.job)
        self.engine._executor.submit(self.job.run)
        while True:
            kind, value = await self.job.events.get()
            if kind == "error":
                raise value
            yield kind, value
            if kind == "done":
                return

    async def run(self, req: GenRequest) -> tuple[str, GenResult]:
        """The whole text and the result."""
        parts = []
        async for kind, value in self.events(req):
            if kind == "text":
                parts.append(value.text)
            else:
                return "".join(parts), value
        raise asyncio.CancelledError

    def close(self) -> None:
        """Idempotent; safe whether the request waits, generates or has finished."""
        if self.closed:
            return
        self.closed = True
        if self.job is not None:
            self.job.cancel.set()
        else:
            self.engine._abandon(self._fut)
