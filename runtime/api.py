"""A `Llama`-like Python API over the runtime, mirroring llama-cpp-python where it makes sense on CPU:
tokenize/detokenize, eval with logits, create_completion (streaming too) and create_chat_completion returning
OpenAI-shaped dicts, embed and create_embedding (with embedding=True)."""
from __future__ import annotations

import time
import uuid
from typing import Iterator

import numpy as np

from runtime.arch.base import CACHE_TYPES
from runtime.chat import chat_format, prompt_tokens
from runtime.embeddings import embeddings, pooling_type as _pooling_type
from runtime.generate import Session
from runtime.logprobs import ProbsFormat, token_logprob
from runtime.sampling import RANGES, SamplingParams, check, check_bias, samplers_from_chars, samplers_from_names
from runtime.stops import StopScanner
from runtime.structured import one_constraint
from runtime.tools import ToolPlan
from common.errors import UserError

# llama.cpp's sampler settings llama-cpp-python has no argument for, by llama-server's names (= SamplingParams')
EXTRA = ("top_n_sigma", "xtc_probability", "xtc_threshold", "dry_multiplier", "dry_base", "dry_allowed_length",
         "dry_penalty_last_n", "dry_sequence_breakers", "samplers")


class _Rows:
    """Rows of float32 logits appended in place, the storage doubled when full: appending n rows costs O(n) in all,
    where rebuilding one array of them per access cost O(n) per access."""

    def __init__(self, width: int):
        self._data = np.empty((0, width), dtype=np.float32)
        self._n = 0

    def append(self, rows: np.ndarray) -> None:
        end = self._n + len(rows)
        if end > len(self._data):
            grown = np.empty((max(end, 2 * len(self._data), 16), self._data.shape[1]), dtype=np.float32)
            grown[:self._n] = self._data[:self._n]
            self._data = grown
        self._data[self._n:end] = rows
        self._n = end

    def clear(self) -> None:
        self._n = 0

    def view(self) -> np.ndarray:
        return self._data[:self._n]


class Llama:
    def __init__(self, model_path: str, n_ctx: int = 512, n_batch: int = 512, n_threads: int | None = None,
                 seed: int = -1, verbose: bool = True, chat_template: str | None = None, logits_all: bool = False,
                 type_k: int | None = None, type_v: int | None = None, embedding: bool = False,
                 pooling_type: int = -1, use_mmap: bool = True):
        """embedding, pooling_type: as llama-cpp-python takes them (llama.cpp's enum: -1 unspecified, that is the
        model's, 0 none, 1 mean, 2 cls, 3 last); use_mmap False: the weights read into memory of their own, in huge
        pages (llama-cpp-python's use_mmap, llama.cpp's --no-mmap)."""
        self.model_path = str(model_path)
        # KV cache element types as llama-cpp-python takes them (ggml type ids; F16 by default)
        kinds = {None: "f16", **{t: name for name, t in CACHE_TYPES.items()}}
        for what, t in (("type_k", type_k), ("type_v", type_v)):
            if t not in kinds:
                raise UserError(f"{what} must be one of the ggml type ids "
                                f"{', '.join(f'{t} ({n.upper()})' for n, t in CACHE_TYPES.items())}, got {t!r}")
        self.session = Session(model_path, n_ctx=n_ctx, n_batch=n_batch, n_threads=n_threads,
                               cache_type=kinds[type_k], cache_type_v=kinds[type_v], use_mmap=use_mmap)
        self.tokenizer = self.session.tokenizer
        self.seed = seed
        self.verbose = verbose
        self.logits_all = logits_all
        self._scores = _Rows(self.session.model.hp.n_vocab)
        g = self.session.model.gguf
        self.chat = chat_format(self.session.model.hp.arch, g.value("tokenizer.chat_template"), chat_template)
        self.embedding = embedding
        # resolved now only for embeddings: a file whose pooling this runtime lacks (rank) still generates
        try:
            self._pooling = _pooling_type(self.session, pooling_type) if embedding else pooling_type
        except UserError:
            self.session.close()
            raise

    # -- tokens ---------------------------------------------------------------------------------------------------
    def n_ctx(self) -> int:
        return self.session.n_ctx

    def n_vocab(self) -> int:
        return self.session.model.hp.n_vocab

    def n_embd(self) -> int:
        return self.session.model.hp.n_embd

    def pooling_type(self) -> int:
        return int(_pooling_type(self.session, self._pooling))

    def tokenize(self, text: bytes | str, add_bos: bool = True, special: bool = False) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return self.tokenizer.encode(text, add_bos=add_bos and self.tokenizer.add_bos, parse_special=special)

    def detokenize(self, tokens: list[int]) -> bytes:
        return b"".join(self.tokenizer.piece_bytes(t) for t in tokens)

    # -- evaluation -----------------------------------------------------------------------------------------------
    def reset(self) -> None:
        self.session.reset()
        self._scores.clear()

    def eval(self, tokens: list[int]) -> None:
        """Evaluate tokens after the current context; `scores` then holds their logits (all of them with
        logits_all, else the last)."""
        logits = self.session.eval(list(tokens), all_logits=self.logits_all)
        self._scores.append(logits if self.logits_all else logits[None, :])

    @property
    def scores(self) -> np.ndarray:
        """The logits of the evaluations since the last reset or completion, a row per eval (per token with
        logits_all): a view, as llama-cpp-python's, valid until the next reset (no copy per access)."""
        return self._scores.view()

    @property
    def n_tokens(self) -> int:
        return len(self.session.tokens)

    # -- completions ----------------------------------------------------------------------------------------------
    def _params(self, temperature, top_k, top_p, min_p, repeat_penalty, seed, presence_penalty=0.0,
                frequency_penalty=0.0, logit_bias=None, typical_p=1.0, mirostat_mode=0, mirostat_tau=5.0,
                mirostat_eta=0.1, **samplers) -> SamplingParams:
        """Checked against sampling.RANGES under the argument names (UserError naming the first one out of range).
        `samplers`: the llama.cpp settings llama-cpp-python has no argument for, by llama-server's names (EXTRA)."""
        unknown = sorted(set(samplers) - set(EXTRA))
        if unknown:
            raise TypeError(f"unexpected keyword argument {unknown[0]!r}")
        extra = dict(samplers)
        for field, value in (("temp", temperature), ("top_k", top_k), ("top_p", top_p), ("min_p", min_p),
                             ("repeat_penalty", repeat_penalty), ("presence_penalty", presence_penalty),
                             ("frequency_penalty", frequency_penalty), ("typ_p", typical_p),
                             ("mirostat", mirostat_mode), ("mirostat_tau", mirostat_tau),
                             ("mirostat_eta", mirostat_eta), *((f, v) for f, v in extra.items() if f in RANGES)):
            check(field, value, {"temp": "temperature", "typ_p": "typical_p", "mirostat": "mirostat_mode"}.get(
                field, field))
        if "samplers" in extra:
            order = extra["samplers"]
            extra["samplers"] = samplers_from_chars(order) if isinstance(order, str) else samplers_from_names(order)
        bias = {}
        for key, value in (logit_bias or {}).items():  # llama-cpp-python's {token id: bias}; "id" keys as JSON has
            token = int(key) if isinstance(key, str) and key.strip().lstrip("-").isdigit() else key
            check_bias(token, value, "logit_bias")
            bias[token] = float(value)
        return SamplingParams(temp=temperature, top_k=top_k, top_p=top_p, min_p=min_p, repeat_penalty=repeat_penalty,
                              seed=self.seed if seed is None else seed, presence_penalty=presence_penalty,
                              frequency_penalty=frequency_penalty, logit_bias=bias, typ_p=typical_p,
                              mirostat=mirostat_mode, mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta, **extra)

    def _stream(self, prompt_tokens: list[int], max_tokens: int | None, params: SamplingParams, stop: list[str],
                grammar, n_top: int | None) -> Iterator[tuple[str, str | None, list]]:
        """(text piece, finish_reason or None, log-probabilities of the tokens it starts when n_top is not None);
        stop strings as runtime.stops.StopScanner handles them. The prefix the prompt shares with the context left by
        the previous call stays in the cache (as llama-cpp-python's generate reuses it): a chat re-sent each turn
        evaluates only its new tokens."""
        if len(prompt_tokens) >= self.session.n_ctx:
            raise UserError(f"the prompt has {len(prompt_tokens)} tokens; the context holds {self.session.n_ctx}")
        self._scores.clear()
        kept = self.session.reuse_prefix(prompt_tokens)
        room = self.session.n_ctx - len(prompt_tokens)
        limit = room if max_tokens is None or max_tokens <= 0 else max_tokens
        scanner, n = StopScanner(self.tokenizer, stop), 0
        for step in self.session.steps(prompt_tokens[kept:], limit, params, grammar=grammar):
            n += 1
            item = token_logprob(step.token, step.logits, n_top) if n_top is not None else None
            text, items = scanner.feed(step.token, item)
            if scanner.word is not None:
                yield text, "stop", items
                return
            if text or items:
                yield text, None, items
        text, items = scanner.flush()
        yield text, "length" if n >= limit else "stop", items

    def _run(self, kind: str, prompt_tokens: list[int], max_tokens, stop, stream: bool, sampling: dict,
             grammar=None, probs: ProbsFormat | None = None, tools: ToolPlan | None = None):
        """Shared by both completion kinds: generate, then shape the result as OpenAI does (`kind` = text or chat);
        `probs` shapes the log-probabilities (with the number of top tokens in `probs.n_top`); `tools` reads a chat's
        answer back into tool calls."""
        params = self._params(**sampling)
        stop = [stop] if isinstance(stop, str) else list(stop or [])
        if kind == "chat":
            stop += list(self.chat.stop)
        pieces = self._stream(prompt_tokens, max_tokens, params, stop, grammar, probs.n_top if probs else None)
        cid, created = (f"chatcmpl-{uuid.uuid4()}" if kind == "chat" else f"cmpl-{uuid.uuid4()}"), int(time.time())
        head = {"id": cid, "created": created, "model": self.model_path}
        if stream:
            return self._chunks(kind, head, pieces, probs, tools)
        text, reason, entries = "", None, []
        for piece, reason, items in pieces:
            text += piece
            entries += items
        logprobs = probs(entries) if probs else None
        n_out = len(self.session.tokens) - len(prompt_tokens) + (1 if reason == "stop" else 0)
        usage = {"prompt_tokens": len(prompt_tokens), "completion_tokens": n_out,
                 "total_tokens": len(prompt_tokens) + n_out}
        if kind == "chat":
            message, reason = tools.message(text, reason) if tools else ({"role": "assistant", "content": text}, reason)
            choice = {"index": 0, "message": message, "logprobs": logprobs, "finish_reason": reason}
            return {**head, "object": "chat.completion", "choices": [choice], "usage": usage}
        choice = {"text": text, "index": 0, "logprobs": logprobs, "finish_reason": reason}
        return {**head, "object": "text_completion", "choices": [choice], "usage": usage}

    @staticmethod
    def _chunks(kind, head, pieces, probs, tools=None):
        def logprobs(items):
            return probs(items) if probs else None
        if kind == "text":
            for piece, reason, items in pieces:
                if piece or reason or items:
                    yield {**head, "object": "text_completion", "choices": [
                        {"text": piece, "index": 0, "logprobs": logprobs(items), "finish_reason": reason}]}
            return
        def chunk(delta, reason, items=None):
            return {**head, "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "logprobs": logprobs(items) if items else None,
                                 "finish_reason": reason}]}
        yield chunk({"role": "assistant"}, None)
        calls = tools.stream() if tools else None
        for piece, reason, items in pieces:
            deltas = calls.feed(piece) if calls else [{"content": piece}] if piece or items else []
            for i, delta in enumerate(deltas or ([{}] if items else [])):
                yield chunk(delta, None, items if i == 0 else None)
            if reason:
                last, reason = calls.end(reason) if calls else ([], reason)
                yield from (chunk(delta, None) for delta in last)
                yield chunk({}, reason)

    def create_completion(self, prompt: str, max_tokens: int | None = 16, temperature: float = 0.8,
                          top_p: float = 0.95, top_k: int = 40, min_p: float = 0.05, repeat_penalty: float = 1.0,
                          stop: str | list[str] | None = None, seed: int | None = None, stream: bool = False,
                          logprobs: int | None = None, presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                          logit_bias: dict | None = None, grammar=None, typical_p: float = 1.0,
                          mirostat_mode: int = 0, mirostat_tau: float = 5.0, mirostat_eta: float = 0.1, **samplers):
        """grammar: GBNF text or a runtime.grammar.Grammar; logprobs: N gives OpenAI's legacy logprobs (the N most
        likely tokens at each step, as llama-cpp-python returns them); typical_p, mirostat_*: llama-cpp-python's
        names of llama.cpp's samplers, `samplers` the others by llama-server's names (EXTRA: top_n_sigma, xtc_*,
        dry_*, and `samplers`, the sequence as names or letters)."""
        tokens = self.tokenize(prompt, add_bos=True, special=True)
        probs = ProbsFormat("text", self.tokenizer, len(prompt), n_top=logprobs) if logprobs is not None else None
        return self._run("text", tokens, max_tokens, stop, stream, dict(
            temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p, repeat_penalty=repeat_penalty, seed=seed,
            presence_penalty=presence_penalty, frequency_penalty=frequency_penalty, logit_bias=logit_bias,
            typical_p=typical_p, mirostat_mode=mirostat_mode, mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta,
            **samplers), one_constraint(grammar=grammar), probs)

    __call__ = create_completion

    def create_chat_completion(self, messages: list[dict], max_tokens: int | None = None, temperature: float = 0.8,
                               top_p: float = 0.95, top_k: int = 40, min_p: float = 0.05,
                               repeat_penalty: float = 1.0, stop: str | list[str] | None = None,
                               seed: int | None = None, stream: bool = False, response_format: dict | None = None,
                               grammar=None, logprobs: bool = False, top_logprobs: int | None = None,
                               presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                               logit_bias: dict | None = None, tools: list[dict] | None = None,
                               tool_choice: str | dict | None = None, parallel_tool_calls: bool = True,
                               typical_p: float = 1.0, mirostat_mode: int = 0, mirostat_tau: float = 5.0,
                               mirostat_eta: float = 0.1, **samplers):
        """response_format: {"type": "json_object"} or {"type": "json_schema", "json_schema": {"schema": ...}};
        logprobs/top_logprobs: OpenAI's chat logprobs; tools/tool_choice/parallel_tool_calls: OpenAI's tool calls
        (runtime.tools), answered with `tool_calls` and finish_reason "tool_calls" as the server answers; the
        samplers' settings as create_completion's."""
        if top_logprobs is not None and not logprobs:
            raise UserError("top_logprobs requires logprobs=True")
        probs = ProbsFormat("chat", self.tokenizer, n_top=top_logprobs or 0) if logprobs else None
        plan = ToolPlan(self.chat, tools, tool_choice, parallel_tool_calls)
        tokens = plan.prompt_tokens(self.tokenizer, messages) if plan.needed(messages) else \
            prompt_tokens(self.chat, self.tokenizer, messages)
        return self._run("chat", tokens, max_tokens, stop, stream, dict(
            temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p, repeat_penalty=repeat_penalty, seed=seed,
            presence_penalty=presence_penalty, frequency_penalty=frequency_penalty, logit_bias=logit_bias,
            typical_p=typical_p, mirostat_mode=mirostat_mode, mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta,
            **samplers), one_constraint(grammar=grammar, response_format=response_format, tool_choice=plan.grammar()),
            probs,
            plan if plan.active else None)

    # -- embeddings -----------------------------------------------------------------------------------------------
    def embed(self, input: str | list[str] | list[int] | list[list[int]], normalize: bool = False,
              truncate: bool = True, return_count: bool = False):
        """llama-cpp-python's embed: one embedding per input (a list of floats; with pooling none, one per token),
        Euclidean-normalized with normalize; inputs are texts (tokenized with BOS, special tokens as text) or token
        ids; truncate cuts each to n_batch tokens, else a longer one is an error; return_count adds the token
        count."""
        if not self.embedding:
            raise UserError("Llama model must be created with embedding=True to call this method")
        single = isinstance(input, str) or (isinstance(input, list) and input != [] and
                                            all(isinstance(t, int) for t in input))
        inputs = [input] if single else list(input)
        limit = min(self.session.n_batch, self.session.n_ctx)
        prompts = []
        for item in inputs:
            tokens = self.tokenize(item.encode("utf-8")) if isinstance(item, str) else [int(t) for t in item]
            if truncate:
                tokens = tokens[:limit]
            if len(tokens) > limit:
                raise UserError(f"Requested tokens ({len(tokens)}) exceed batch size of {limit}")
            prompts.append(tokens)
        data = [e.tolist() for e in embeddings(self.session, prompts, self._pooling, 2 if normalize else -1)]
        output = data[0] if single else data
        return (output, sum(len(p) for p in prompts)) if return_count else output

    def create_embedding(self, input: str | list[str] | list[int] | list[list[int]], model: str | None = None) -> dict:
        """llama-cpp-python's create_embedding: OpenAI's embedding list (unnormalized, as there)."""
        single = isinstance(input, str) or (input != [] and all(isinstance(t, int) for t in input))
        embeds, total = self.embed([input] if single else input, return_count=True)
        return {"object": "list", "data": [{"object": "embedding", "embedding": e, "index": i}
                                           for i, e in enumerate(embeds)],
                "model": model if model is not None else self.model_path,
                "usage": {"prompt_tokens": total, "total_tokens": total}}

    def close(self) -> None:
        self.session.close()
