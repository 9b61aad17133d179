"""A model session: KV cache, batched prompt evaluation, the generation loop, and llama.cpp-style timings."""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

import native
from runtime.arch import build
from runtime.arch.base import kv_cache_bytes
from runtime.batching import Batcher
from runtime.grammar import Grammar, GrammarConstraint
from runtime.model import HParams, Model
from runtime.sampling import Sampler, SamplingParams
from runtime.tokenizer import Tokenizer
from common.errors import DamagedModel, UserError


def memory_available() -> int:
    """The bytes of memory a new allocation can have now: Linux's MemAvailable (free plus reclaimable), else the
    machine's RAM; less under a cgroup (v2) limit."""
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/meminfo") as f:
            have = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    with contextlib.suppress(OSError, ValueError):
        with open("/sys/fs/cgroup/memory.max") as f, open("/sys/fs/cgroup/memory.current") as g:
            have = min(have, int(f.read()) - int(g.read()))  # "max" (no limit) is a ValueError
    return have


def size_text(n: float) -> str:
    """Bytes as people read them: 512 B, 1.5 KiB, ..., 12.2 TiB, 4.0 EiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} EiB"


def check_kv_memory(hp: HParams, n_ctx: int, cache_type: str, slots: int, what: str,
                    cache_type_v: str | None = None) -> None:
    """Refuse, before anything is allocated, `slots` KV caches of n_ctx positions that do not fit in memory (keys
    stored as cache_type, values as cache_type_v, default the same); `what` names the numbers the user gave (e.g.
    "-c 100000000")."""
    need = slots * kv_cache_bytes(hp, n_ctx, cache_type, cache_type_v)
    have = memory_available()
    if need > have:
        types = cache_type if cache_type_v in (None, cache_type) else f"{cache_type}/{cache_type_v}"
        raise UserError(f"{what} needs a KV cache of {size_text(need)} ({types}), more than the "
                        f"{size_text(have)} of memory available; lower it")


def context_size(hp: HParams, n_ctx: int, slots: int, cache_type: str, cache_type_v: str | None = None) -> int:
    """The context per slot: n_ctx as given; with n_ctx 0 (llama.cpp's default) the model's training context shared by
    the slots (as llama.cpp divides -c among its sequences), lowered in steps of 256 positions — not below 256 —
    while all the slots' caches would take more than half of the memory available."""
    if n_ctx:
        return n_ctx
    per_slot = max(1, hp.n_ctx_train // slots)
    budget = memory_available() // 2
    while per_slot > 256 and slots * kv_cache_bytes(hp, per_slot, cache_type, cache_type_v) > budget:
        per_slot = max(256, (per_slot - 1) // 256 * 256)
    return per_slot


def check_context_memory(model_path, n_ctx: int, cache_type: str, slots: int, what: str,
                         cache_type_v: str | None = None) -> int:
    """The context per slot (context_size) for a model file not loaded yet, its caches checked against the memory
    available (check_kv_memory): the file's header is read, its weights are not touched."""
    model = Model(model_path, populate=False)
    try:
        n_ctx = context_size(model.hp, n_ctx, slots, cache_type, cache_type_v)
        check_kv_memory(model.hp, n_ctx, cache_type, slots, what, cache_type_v)
        return n_ctx
    finally:
        model.close()


def _peak_rss_mib() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclass
class Timings:
    load_ms: float = 0.0
    sample_ms: float = 0.0
    n_sample: int = 0
    prompt_ms: float = 0.0
    n_prompt: int = 0
    eval_ms: float = 0.0
    n_eval: int = 0
    started: float = field(default_factory=time.perf_counter)

    def report(self, peak_rss: bool = False) -> str:
        """The timings block as llama.cpp prints it (llama_perf_sampler_print / llama_perf_context_print), with the
        process's peak resident memory after it when asked (-v)."""
        def rate(ms, n):
            per = ms / n if n else 0.0
            tps = 1000.0 * n / ms if ms > 0 else 0.0
            return f"({per:8.2f} ms per token, {tps:8.2f} tokens per second)"
        total = (time.perf_counter() - self.started) * 1000.0
        return "\n".join([
            f"llama_perf_sampler_print:    sampling time = {self.sample_ms:10.2f} ms / {self.n_sample:5d} runs   "
            + rate(self.sample_ms, self.n_sample),
            f"llama_perf_context_print:        load time = {self.load_ms:10.2f} ms",
            f"llama_perf_context_print: prompt eval time = {self.prompt_ms:10.2f} ms / {self.n_prompt:5d} tokens "
            + rate(self.prompt_ms, self.n_prompt),
            f"llama_perf_context_print:        eval time = {self.eval_ms:10.2f} ms / {self.n_eval:5d} runs   "
            + rate(self.eval_ms, self.n_eval),
            f"llama_perf_context_print:       total time = {total:10.2f} ms / {self.n_prompt + self.n_eval:5d} tokens",
        ] + ([f"llama_perf_context_print:    peak memory = {_peak_rss_mib():10.2f} MiB (resident)"] if peak_rss else []))


@dataclass
class Step:
    """A generated token and the model's logits it was sampled from (before any sampling filter)."""
    token: int
    logits: np.ndarray


def _only_end_allowed(constraint: GrammarConstraint) -> bool:
    """The grammar is complete and allows no other token: the generation is over (llama.cpp would sample the
    end-of-generation token)."""
    return constraint.is_complete() and not (constraint.mask() & ~constraint.eog).any()


class Session:
    """One model, one context: tokens evaluated so far and their KV cache."""

    def __init__(self, model_path, n_ctx: int = 512, n_batch: int = 512, n_threads: int | None = None,
                 cache_type: str = "f16", ctx_name: str = "n_ctx", cache_type_v: str | None = None,
                 n_ubatch: int | None = None, use_mmap: bool = True):
        """cache_type / cache_type_v: the KV cache's key and value types (f32, f16, q8_0, q4_0; values default to
        the keys' type); ctx_name: what the caller calls n_ctx (the command line's -c), for the message when it is
        too large; n_ubatch: the most tokens a native pass takes (default n_batch), prompts evaluated in pieces of
        that size; use_mmap: runtime.model.Model's."""
        t0 = time.perf_counter()
        if n_ubatch is not None and n_ubatch >= 1:
            n_batch = min(n_batch, n_ubatch)
        if n_ctx < 0 or n_batch < 1:
            raise UserError("n_ctx must be 0 (the model's) or positive, n_batch positive")
        self.model = Model(model_path, use_mmap=use_mmap)
        try:
            n_ctx = context_size(self.model.hp, n_ctx, 1, cache_type, cache_type_v)
            check_kv_memory(self.model.hp, n_ctx, cache_type, 1, f"{ctx_name} {n_ctx}", cache_type_v)
        except UserError:
            self.model.close()
            raise
        self.tokenizer = Tokenizer.from_gguf(self.model.gguf)
        self.n_threads = n_threads or native.default_threads()
        self.net = build(self.model, self.n_threads)
        self.n_ctx, self.n_batch = n_ctx, n_batch
        self.cache_type, self.cache_type_v = cache_type, cache_type_v or cache_type
        self.cache = self.net.new_cache(n_ctx, cache_type, cache_type_v)
        self.tokens: list[int] = []
        # a full context during generation: stop (False), or drop half of what follows the first n_keep tokens and
        # go on (llama.cpp's --context-shift / --keep)
        self.context_shift, self.n_keep = False, 0
        self.timings = Timings(load_ms=(time.perf_counter() - t0) * 1000.0)
        # the forward passes of this session and of its slots (new_slot), batched together when they coincide
        self.batcher = Batcher(self.net, n_ubatch=n_batch)

    def new_slot(self, n_ctx: int | None = None) -> "Session":
        """Another context on the same loaded model (its own KV cache, tokens and timings), as a server slot.
        Sessions made this way may be used from different threads; their forward passes run batched together."""
        slot = object.__new__(Session)
        slot.__dict__.update(self.__dict__)
        slot.n_ctx = n_ctx or self.n_ctx
        slot.cache = self.net.new_cache(slot.n_ctx, self.cache_type, self.cache_type_v)
        slot.tokens = []
        slot.timings = Timings()
        return slot

    def reset(self) -> None:
        self.cache.n = 0
        self.tokens = []

    def rewind(self, n: int) -> None:
        """Keep only the first n tokens of the context (their KV entries stay; later ones are overwritten), e.g. to
        sample another continuation of an evaluated prompt."""
        self.cache.truncate(n)
        del self.tokens[n:]

    def reuse_prefix(self, prompt: list[int]) -> int:
        """Keep the longest prefix of the context that `prompt` starts with (llama.cpp's cache_prompt), but not the
        whole prompt: its last token is evaluated again for the logits. Returns the tokens kept; the caller evaluates
        prompt[kept:]."""
        kept = 0
        for a, b in zip(self.tokens, prompt[:-1]):
            if a != b:
                break
            kept += 1
        self.rewind(kept)
        return kept

    def shift_context(self) -> None:
        """Make room as llama.cpp's context shift does: keep the first n_keep tokens, drop half of the n_left after
        them (the older half), the rest moves down. The kept tokens are evaluated again at their new positions (exact,
        where llama.cpp rotates the cached keys by the shift)."""
        keep = min(max(self.n_keep, 0), len(self.tokens) - 1)
        discard = (len(self.tokens) - keep) // 2
        kept = self.tokens[:keep] + self.tokens[keep + discard:]
        self.reset()
        self.eval(kept)

    def eval(self, tokens: list[int], all_logits: bool = False, skip_logits: int = 0) -> np.ndarray:
        """Evaluate tokens after those already in the context, in batches of n_batch; the last (or all) logits.
        skip_logits, with all_logits: the rows start at token skip_logits (< len(tokens)): the tokens before it get no
        logits (llama.cpp's output flags; a batch wholly before it computes only its last row, left out)."""
        if not 0 <= skip_logits < max(len(tokens), 1) or (skip_logits and not all_logits):
            raise ValueError(f"skip_logits {skip_logits} needs all_logits and fewer than {len(tokens)}")
        if len(self.tokens) + len(tokens) > self.n_ctx:
            raise UserError(f"the context is full: {len(self.tokens)} + {len(tokens)} tokens > n_ctx {self.n_ctx}")
        bad = [t for t in tokens if not 0 <= t < self.model.hp.n_vocab]
        if bad:
            raise UserError(f"token id {bad[0]} is outside the vocabulary (0..{self.model.hp.n_vocab - 1})")
        t0 = time.perf_counter()
        outs = []
        for i in range(0, len(tokens), self.n_batch):
            batch = tokens[i:i + self.n_batch]
            skip = max(skip_logits - i, 0)
            if skip >= len(batch):
                self.batcher.forward(batch, self.cache)
            else:
                outs.append(self.batcher.forward(batch, self.cache, all_logits=all_logits, skip_logits=skip))
            self.tokens.extend(batch)
        ms = (time.perf_counter() - t0) * 1000.0
        if len(tokens) > 1:
            self.timings.prompt_ms += ms
            self.timings.n_prompt += len(tokens)
        else:
            self.timings.eval_ms += ms
            self.timings.n_eval += len(tokens)
        return np.vstack(outs) if all_logits else outs[-1][-1]

    def eval_slots(self, slots: list["Session"], token_lists: list[list[int]], skip_logits: int) -> list[np.ndarray]:
        """Each list of tokens evaluated from an empty context in its own slot (this session or ones of new_slot), all
        in one native pass: together at most n_batch tokens, each list longer than skip_logits; each list's logits of
        every token but the first skip_logits, the bits eval(tokens, all_logits=True, skip_logits) gives it alone
        (llama-perplexity's n_seq chunks per batch). The timings go to this session."""
        if len(slots) != len(token_lists) or sum(map(len, token_lists)) > self.n_batch or \
                len({id(s.cache) for s in slots}) != len(slots):
            raise ValueError("eval_slots: one token list per slot of its own, at most n_batch tokens in all")
        for slot, tokens in zip(slots, token_lists):
            if not skip_logits < len(tokens) <= slot.n_ctx:
                raise ValueError(f"eval_slots: {len(tokens)} tokens for a context of {slot.n_ctx}, "
                                 f"skip_logits {skip_logits}")
            slot.reset()
        t0 = time.perf_counter()
        outs = self.batcher.forward_many([(tokens, slot.cache, True, False, skip_logits)
                                          for slot, tokens in zip(slots, token_lists)])
        for slot, tokens in zip(slots, token_lists):
            slot.tokens = list(tokens)
        self.timings.prompt_ms += (time.perf_counter() - t0) * 1000.0
        self.timings.n_prompt += sum(map(len, token_lists))
        return outs

    def generate(self, prompt: list[int], n_predict: int, params: SamplingParams, ignore_eos: bool = False,
                 sampler: Sampler | None = None, grammar: Grammar | None = None) -> Iterator[int]:
        """The tokens of `steps` (the same arguments)."""
        steps = self.steps(prompt, n_predict, params, ignore_eos, sampler, grammar)
        try:
            for step in steps:
                yield step.token
        finally:
            steps.close()

    def steps(self, prompt: list[int], n_predict: int, params: SamplingParams, ignore_eos: bool = False,
              sampler: Sampler | None = None, grammar: Grammar | None = None,
              start: np.ndarray | None = None) -> Iterator["Step"]:
        """Yield each sampled token with the logits it was drawn from, after evaluating `prompt` (or, with `start`,
        from these logits of the context already evaluated); stops at an end-of-generation token (unless
        ignore_eos), after n_predict tokens (-1: until the context is full), when the context is full (unless
        context_shift: then it is shifted, see shift_context), or when `grammar` is complete and allows nothing but
        end-of-generation."""
        sampler = sampler or Sampler(params, self.tokenizer)
        constraint = GrammarConstraint(grammar, self.tokenizer) if grammar is not None else None
        with self.batcher.member(self.cache):
            yield from self._steps(prompt, n_predict, sampler, ignore_eos, constraint, start)

    def _steps(self, prompt, n_predict, sampler, ignore_eos, constraint, start) -> Iterator["Step"]:
        logits = start if start is not None else self.eval(prompt) if prompt else None
        produced = 0
        while logits is not None and (n_predict < 0 or produced < n_predict) and (
                self.context_shift or len(self.tokens) < self.n_ctx):
            t0 = time.perf_counter()
            if constraint is not None and _only_end_allowed(constraint):
                return
            token = self._sample(sampler, logits, ignore_eos, constraint)
            self.timings.sample_ms += (time.perf_counter() - t0) * 1000.0
            self.timings.n_sample += 1
            if not ignore_eos and token in self.tokenizer.eog_ids:
                return
            if constraint is not None:
                constraint.accept(token)
            produced += 1
            yield Step(token, logits)
            if len(self.tokens) >= self.n_ctx:
                if not self.context_shift:
                    return
                self.shift_context()
            logits = self.eval([token])

    def _sample(self, sampler: Sampler, logits: np.ndarray, ignore_eos: bool, constraint) -> int:
        if ignore_eos:
            logits = logits.copy()
            logits[list(self.tokenizer.eog_ids)] = -np.inf
        try:
            return sampler.sample(logits, self.tokens, constraint=constraint)
        except DamagedModel as e:
            raise DamagedModel(f"{self.model.path.name}: {e}") from None

    def close(self) -> None:
        self.model.close()
