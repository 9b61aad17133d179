"""The HTTP API on FastAPI: OpenAI's /v1/completions, /v1/chat/completions and /v1/models, llama.cpp's /completion,
/tokenize, /detokenize and /health. Every error is an OpenAI-style body
`{"error": {"message", "type", "param", "code"}}` (schemas.ErrorResponse) with a status the OpenAPI document
declares for the route (ERRORS): a request the server cannot take is a 4xx — a body that fails validation is a 400,
not FastAPI's 422 — and a 5xx is the server's own condition (503: busy; 500: a damaged model, or a bug, logged);
streaming is Server-Sent Events, where an error after the first event is the last event."""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from runtime.chat import prompt_tokens
from runtime.logprobs import ProbsFormat
from runtime.reasoning import DEFAULT_FORMAT, Splitter, splitter, thinking_format
from runtime.sampling import SamplingParams
from runtime.tools import ToolPlan
from server.api_key import api_key_bytes
from server.embeddings import EmbeddingOptions, add_embeddings
from server.engine import Busy, Engine, GenRequest, GenResult, Piece, Ticket
from server.features import chat_top, completion_top, llama_grammar, openai_grammar, sampling_params, tool_plan
from server.limits import Limits
from server.schemas import (ChatRequest, CompletionRequest, DetokenizeRequest, ErrorResponse, LlamaCompletionRequest,
                            Message, OpenAIRequest, Sampling, TokenizeRequest)
from common.errors import DamagedModel, UserError

log = logging.getLogger("toolkit.server")


@dataclass
class AppConfig:
    name: str                      # the model's name in responses and /v1/models (--alias, else the file name)
    api_key: str | None = None
    strict_model: bool = False
    seed: int = -1
    limits: Limits = field(default_factory=Limits)
    embeddings: EmbeddingOptions = field(default_factory=EmbeddingOptions)
    reasoning_format: str = DEFAULT_FORMAT  # --reasoning-format: a request's `reasoning_format` wins

    def __post_init__(self):
        if self.api_key is not None:
            api_key_bytes(self.api_key)  # a key no header can carry is refused here, not on the first request


class ApiError(StarletteHTTPException):
    """An error answered in the API's shape. An HTTPException, so that one raised while FastAPI reads the body
    (RequestLimits' 413 and 408) reaches its handler as it is, not as "There was an error parsing the body"."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(status, message, headers)
        self.status, self.message, self.type, self.param, self.code, self.headers = (status, message, type, param,
                                                                                     code, headers)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_json(message: str, type: str, param: str | None = None, code: str | None = None) -> bytes:
    """ASCII JSON (non-ASCII escaped), so that any message can be sent, even one quoting text that is not Unicode."""
    return json.dumps(error_body(message, type, param, code)).encode()


def error_response(e: ApiError) -> Response:
    return Response(error_json(e.message, e.type, e.param, e.code), status_code=e.status, headers=e.headers,
                    media_type="application/json")


def model_damaged(e: DamagedModel) -> ApiError:
    """Not the request's fault: a 500 with its own code, logged as one line (no traceback); the server stays up."""
    log.error("model damaged: %s", e)
    return ApiError(500, str(e), "server_error", code="model_damaged")


# the statuses each kind of route answers besides 200, as the OpenAPI document states them
_STATUS_TEXT = {408: "The request body was not received within the server's --timeout",
                413: "The request body is larger than the server's limit",
                400: "Invalid request: a field fails validation (non-finite number, value out of range, text that is "
                     "not Unicode, too many or too long stop strings), an unsupported parameter, or a prompt and "
                     "max_tokens that do not fit the context",
                401: "Missing or incorrect API key (with --api-key)",
                404: "The model named is not this server's (with --strict-model)",
                500: "The model is damaged (it computed NaN or infinite logits): code model_damaged",
                503: "Every slot is generating and the queue is full: retry later (Retry-After)"}


def _errors(*statuses: int) -> dict:
    return {s: {"model": ErrorResponse, "description": _STATUS_TEXT[s]} for s in statuses}


# a generation answers JSON, or with `stream: true` Server-Sent Events, described one event at a time
_EVENT = {"type": "object", "required": ["data"], "properties": {"data": {
    "type": "string", "description": "a JSON object: a piece, the end, or an error; the OpenAI routes end with [DONE]"}}}
STREAMED = {200: {"description": "The generation: JSON, or with `stream: true` Server-Sent Events",
                  "content": {"text/event-stream": {"schema": _EVENT}}}}
ERRORS = {"models": _errors(401), "openai": {**STREAMED, **_errors(400, 401, 404, 408, 413, 500, 503)},
          "llama": {**STREAMED, **_errors(400, 401, 408, 413, 500, 503)}, "tokens": _errors(400, 401, 408, 413)}
_UNION_TAGS = {"str", "int", "float", "bool", "none"}


def validation_param(loc) -> str | None:
    """The field a validation error is about as a dotted path (`messages.0.content`): without FastAPI's `body` and
    pydantic's union-branch tags (`str`, `list[int]`, `function-before[...]`)."""
    parts = [str(p) for p in loc if p != "body" and (isinstance(p, int) or p.isidentifier() and p not in _UNION_TAGS)]
    return ".".join(parts) or None


def _telling(error: dict) -> tuple:
    """Of the errors pydantic reports for a union (one per branch), the one that says the most: a value wrong for
    the branch it fits (too long, not Unicode, out of range) before a type mismatch (`string_type`: another
    branch), then the branch that got deepest."""
    return not error.get("type", "").endswith("_type"), len(error.get("loc", ()))


def sse(obj) -> bytes:
    return b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj, ensure_ascii=False).encode()) + b"\n\n"


class EventStream(StreamingResponse):
    """Server-Sent Events whose ticket is closed however the response ends — also when the client went away before
    the body started, in which case the body's own generator never runs its `finally`."""

    def __init__(self, body: AsyncIterator[bytes], ticket: Ticket):
        super().__init__(body, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.ticket = ticket

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.ticket.close()


# -- the response shapes: OpenAI text, OpenAI chat, llama.cpp -------------------------------------------------------
class Shape:
    done_marker = True

    def __init__(self, name: str, kind: str, include_usage: bool = False, probs: ProbsFormat | None = None,
                 n: int = 1, reasoning: Splitter | None = None):
        """probs: how to show the tokens' log-probabilities (None: `logprobs: null`); n: the number of choices;
        reasoning: how a chat answer's thought is split into `reasoning_content` (runtime.reasoning)."""
        self.name, self.kind, self.include_usage, self.probs, self.n = name, kind, include_usage, probs, n
        self.reasoning, self.thoughts = reasoning, {}
        self.id = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.name}

    @staticmethod
    def usage(r: GenResult) -> dict:
        return {"prompt_tokens": r.n_prompt, "completion_tokens": r.n_predicted,
                "total_tokens": r.n_prompt + r.n_predicted}

    def start(self, slot_id: int) -> list[dict]:
        if self.kind != "chat":
            return []
        return [self._chunk({"role": "assistant", "content": ""}, None, index=i) for i in range(self.n)]

    def _chunk(self, content, reason, probs: list | None = None, index: int = 0) -> dict:
        logprobs = self.probs(probs, index) if self.probs is not None and probs is not None else None
        if self.kind == "chat":
            return {**self._head("chat.completion.chunk"),
                    "choices": [{"index": index, "delta": content, "logprobs": logprobs, "finish_reason": reason}]}
        return {**self._head("text_completion"),
                "choices": [{"text": content, "index": index, "logprobs": logprobs, "finish_reason": reason}]}

    def pieces(self, piece: Piece, slot_id: int) -> list[dict]:
        if self.reasoning is None:
            return self.content_pieces(piece, slot_id)
        thought, text = self.thoughts.setdefault(piece.index, self.reasoning.stream()).feed(piece.text)
        out = [self._chunk({"reasoning_content": thought}, None, piece.probs, piece.index)] if thought else []
        if text or not out:
            out += self.content_pieces(Piece(text, [] if out else piece.probs, piece.index), slot_id)
        return out

    def content_pieces(self, piece: Piece, slot_id: int) -> list[dict]:
        return [self.piece(piece, slot_id)]

    def piece(self, piece: Piece, slot_id: int) -> dict:
        return self._chunk({"content": piece.text} if self.kind == "chat" else piece.text, None, piece.probs,
                           piece.index)

    def end(self, r: GenResult) -> list[dict]:
        out = []
        for c in (r.choices or [r]) if self.reasoning is not None else []:  # the text a tag's beginning held back
            thought, text = self.thoughts.setdefault(c.index, self.reasoning.stream()).end()
            out += [self._chunk({"reasoning_content": thought}, None, index=c.index)] if thought else []
            out += self.content_pieces(Piece(text, [], c.index), r.slot_id) if text else []
        return out + self.closing(r)

    def closing(self, r: GenResult) -> list[dict]:
        out = [self._chunk({} if self.kind == "chat" else "", self.finish_reason(c), index=c.index)
               for c in r.choices or [r]]
        if self.include_usage:
            out.append({**self._head("chat.completion.chunk" if self.kind == "chat" else "text_completion"),
                        "choices": [], "usage": self.usage(r)})
        return out

    def finish_reason(self, r: GenResult) -> str:
        return r.finish_reason

    def _choice(self, text: str, r: GenResult) -> dict:
        logprobs = self.probs(r.probs, r.index) if self.probs is not None else None
        if self.kind == "chat":
            thought, text = self.reasoning.split(text) if self.reasoning is not None else ("", text)
            message = {"role": "assistant", "content": text, **({"reasoning_content": thought} if thought else {})}
            return {"index": r.index, "message": message, "logprobs": logprobs, "finish_reason": r.finish_reason}
        return {"text": text, "index": r.index, "logprobs": logprobs, "finish_reason": r.finish_reason}

    def whole(self, text: str, r: GenResult) -> dict:
        """`text`: the one choice's (with n > 1, each choice's text is in its result)."""
        choices = [self._choice(c.text, c) for c in r.choices] if r.choices else [self._choice(text, r)]
        obj = "chat.completion" if self.kind == "chat" else "text_completion"
        return {**self._head(obj), "choices": choices, "usage": self.usage(r), "timings": r.timings()}


class ToolShape(Shape):
    """A chat with tools: each choice's text read back into `tool_calls` (runtime.tools.ToolPlan), streamed as OpenAI
    streams them (a runtime.tools.ToolStream per choice)."""

    def __init__(self, plan: ToolPlan, *args, **kw):
        super().__init__(*args, **kw)
        self.plan, self.streams, self.reasons = plan, {}, {}

    def content_pieces(self, piece, slot_id):
        stream = self.streams.setdefault(piece.index, self.plan.stream())
        deltas = stream.feed(piece.text) or ([{}] if piece.probs else [])
        return [self._chunk(d, None, piece.probs if i == 0 else None, piece.index) for i, d in enumerate(deltas)]

    def closing(self, r):
        out = []
        for c in r.choices or [r]:
            deltas, self.reasons[c.index] = self.streams.setdefault(c.index, self.plan.stream()).end(c.finish_reason)
            out += [self._chunk(d, None, index=c.index) for d in deltas]
        return out + super().closing(r)

    def finish_reason(self, r):
        return self.reasons.get(r.index, r.finish_reason)

    def _choice(self, text, r):
        out = super()._choice(text, r)
        thought = out["message"].get("reasoning_content")
        out["message"], out["finish_reason"] = self.plan.message(out["message"]["content"], r.finish_reason)
        if thought:
            out["message"]["reasoning_content"] = thought
        return out


class LlamaShape(Shape):
    """llama.cpp's /completion: `content` pieces with `stop: false`, then the final object with `stop: true`,
    `stop_type`, `stopping_word`, token counts, `generation_settings` and `timings`; no [DONE] marker."""
    done_marker = False

    def __init__(self, name: str, body: LlamaCompletionRequest, prompt_text: str, n_ctx: int, seed: int,
                 probs: ProbsFormat | None = None):
        super().__init__(name, "llama", probs=probs)
        self.body, self.prompt_text, self.n_ctx, self.seed = body, prompt_text, n_ctx, seed

    def start(self, slot_id):
        return []

    def piece(self, piece, slot_id):
        out = {"index": 0, "content": piece.text, "stop": False, "id_slot": slot_id}
        return {**out, "completion_probabilities": self.probs(piece.probs)} if self.probs is not None else out

    def _final(self, text: str, r: GenResult, probs: list) -> dict:
        b = self.body
        settings = {"n_ctx": self.n_ctx, "n_predict": b.n_predict, "model": self.name, "seed": self.seed,
                    "temperature": b.temperature, "top_k": b.top_k, "top_p": b.top_p, "min_p": b.min_p,
                    "repeat_penalty": b.repeat_penalty, "repeat_last_n": b.repeat_last_n, "stop": b.stop,
                    "ignore_eos": b.ignore_eos, "stream": b.stream, "n_probs": b.n_probs,
                    "presence_penalty": b.presence_penalty, "frequency_penalty": b.frequency_penalty}
        extra = {"completion_probabilities": self.probs(probs)} if self.probs is not None else {}
        return {**extra, "index": 0, "content": text, "id_slot": r.slot_id, "stop": True, "model": self.name,
                "tokens_predicted": r.n_predicted, "tokens_evaluated": r.n_prompt, "generation_settings": settings,
                "prompt": self.prompt_text, "has_new_line": "\n" in text, "truncated": False,
                "stop_type": r.stop_type, "stopping_word": r.stopping_word,
                "tokens_cached": r.n_prompt + r.n_predicted, "timings": r.timings()}

    def end(self, r):
        return [self._final("", r, [])]

    def whole(self, text, r):
        return self._final(text, r, r.probs)


# -- the application ----------------------------------------------------------------------------------------------
def create_app(engine: Engine, cfg: AppConfig) -> FastAPI:
    app = FastAPI(title="toolkit serve", version="1", description=(
        f"OpenAI- and llama.cpp-compatible API for {cfg.name}. With --api-key, every route but /health needs "
        "`Authorization: Bearer KEY`."))
    app.state.engine, app.state.cfg = engine, cfg
    install_error_handlers(app)
    app.openapi = without_422(app.openapi)

    # -- helpers --------------------------------------------------------------------------------------------------
    def check_model(body: OpenAIRequest) -> None:
        if cfg.strict_model and body.model is not None and body.model not in (cfg.name, engine.model_path):
            raise ApiError(404, f"the model {body.model!r} does not exist; this server serves {cfg.name!r}",
                           param="model", code="model_not_found")

    def check_supported(body) -> None:
        name = body.unsupported()
        if name:
            raise ApiError(400, f"{name} is not supported by this server", param=name, code="unsupported_parameter")

    def check_fits(prompt: list[int], n_predict: int | None, param: str) -> None:
        n_ctx, n = engine.n_ctx, len(prompt)
        bad = [t for t in prompt if not 0 <= t < engine.hp.n_vocab]
        if bad:
            raise ApiError(400, f"token id {bad[0]} is outside the vocabulary (0..{engine.hp.n_vocab - 1})",
                           param="prompt", code="invalid_value")
        if n == 0:
            raise ApiError(400, "the prompt is empty (no tokens)", param="prompt", code="invalid_value")
        if n >= n_ctx:
            raise ApiError(400, f"the prompt has {n} tokens; the context holds {n_ctx} (the server's -c), with room "
                           "for at least one generated token", param="prompt", code="context_length_exceeded")
        if n_predict is not None and n_predict > 0 and n + n_predict > n_ctx and not engine.context_shift:
            raise ApiError(400, f"{param} {n_predict} plus the prompt's {n} tokens exceed the context of {n_ctx} "
                           f"tokens (at most {n_ctx - n} can be generated)", param=param,
                           code="context_length_exceeded")

    def params(body: Sampling, seed: int | None) -> SamplingParams:
        return sampling_params(body, cfg.seed if seed is None or seed < 0 else seed, engine.tokenizer)

    async def user_input(fn, *args):
        """Tokenize or render off the event loop; the user's mistakes (a template that raises) become 400s."""
        try:
            return await run_in_threadpool(fn, *args)
        except UserError as e:
            raise ApiError(400, str(e)) from None

    def reserve() -> Ticket:
        try:
            return engine.reserve()
        except Busy as e:
            raise ApiError(503, str(e), "server_error", code="queue_full", headers={"Retry-After": "1"}) from None

    async def generate(request: Request, req: GenRequest, shape: Shape, stream: bool):
        request.state.n_prompt = len(req.prompt)
        ticket = reserve()
        request.state.ticket = ticket  # /slots (server.observability) reads its job while it runs
        if stream:
            return EventStream(_events(request, ticket, req, shape), ticket)
        try:
            text, result = await _until_done_or_gone(request, ticket, req)
        finally:
            ticket.close()
        request.state.result = result
        return shape.whole(text, result)

    async def _events(request: Request, ticket: Ticket, req: GenRequest, shape: Shape) -> AsyncIterator[bytes]:
        started = False
        try:
            async for kind, value in ticket.events(req):
                slot_id = ticket.job.slot.id
                if not started:
                    started = True
                    for c in shape.start(slot_id):
                        yield sse(c)
                if kind == "text":
                    for c in shape.pieces(value, slot_id):
                        yield sse(c)
                else:
                    request.state.result = value
                    for c in shape.end(value):
                        yield sse(c)
            if shape.done_marker:
                yield sse(b"[DONE]")
        except Exception as e:  # noqa: BLE001 — headers are sent: the error becomes the last event
            a = stream_error(request, e)
            request.state.failed = a.code or a.type
            yield sse(error_json(a.message, a.type, code=a.code))
        finally:
            if getattr(request.state, "result", None) is None and not getattr(request.state, "failed", None):
                request.state.cancelled = True
            ticket.close()

    def stream_error(request: Request, e: Exception) -> ApiError:
        """What a non-streamed request would have answered (a bug is logged with its traceback)."""
        if isinstance(e, DamagedModel):
            return model_damaged(e)
        if isinstance(e, UserError):
            return ApiError(400, str(e))
        log.exception("internal error while streaming %s", request.url.path)
        return ApiError(500, f"internal error: {type(e).__name__}: {e}", "server_error")

    async def _until_done_or_gone(request: Request, ticket: Ticket, req: GenRequest):
        """The whole generation; stopped early (and nothing answered) when the client disconnects meanwhile."""
        async def gone():
            while (await request.receive())["type"] != "http.disconnect":
                pass
        work = asyncio.ensure_future(ticket.run(req))
        watch = asyncio.ensure_future(gone())
        try:
            await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
        if not work.done():
            ticket.close()
            request.state.cancelled = True
            try:
                await work
            except asyncio.CancelledError:
                pass
            raise ApiError(499, "client disconnected", code="client_closed_request")
        try:
            return work.result()
        except DamagedModel as e:
            raise model_damaged(e) from None
        except UserError as e:
            raise ApiError(400, str(e)) from None

    # -- routes -------------------------------------------------------------------------------------------------
    @app.get("/health", summary="Liveness and slot use (needs no API key)")
    async def health():
        return {"status": "ok", "slots_idle": len(engine.slots) - engine.n_processing,
                "slots_processing": engine.n_processing, "requests_waiting": engine.n_waiting}

    @app.get("/v1/models", summary="The served model", responses=ERRORS["models"])
    async def models():
        hp = engine.hp
        return {"object": "list", "data": [{
            "id": cfg.name, "object": "model", "created": int(Path(engine.model_path).stat().st_mtime),
            "owned_by": "toolkit",
            "meta": {"path": engine.model_path, "arch": hp.arch, "n_vocab": hp.n_vocab, "n_ctx": engine.n_ctx,
                     "n_ctx_train": hp.n_ctx_train, "n_embd": hp.n_embd, "n_layer": hp.n_layer,
                     "n_slots": len(engine.slots)}}]}

    @app.post("/v1/completions", summary="OpenAI text completion (stream: Server-Sent Events)",
              responses=ERRORS["openai"])
    async def completions(body: CompletionRequest, request: Request):
        check_model(body)
        check_supported(body)
        prompt = openai_prompt(body.prompt)
        tokens = await user_input(engine.prompt, prompt) if isinstance(prompt, str) else prompt
        check_fits(tokens, body.max_tokens, "max_tokens")
        req = GenRequest(tokens, body.max_tokens or -1, params(body, body.seed), stops(body.stop),
                         ignore_eos=body.ignore_eos, grammar=openai_grammar(body), n_probs=completion_top(body),
                         n=body.n, cache_prompt=body.cache_prompt)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        probs = ProbsFormat("text", engine.tokenizer, len(prompt) if isinstance(prompt, str) else 0)
        return await generate(request, req, Shape(cfg.name, "text", include_usage, probs if req.n_probs is not None
                                                  else None, body.n), body.stream)

    @app.post("/v1/chat/completions", summary="OpenAI chat completion through the model's chat template",
              responses=ERRORS["openai"])
    async def chat_completions(body: ChatRequest, request: Request):
        check_model(body)
        check_supported(body)
        chat = thinking_format(engine.chat, body.chat_template_kwargs)
        messages = [message_dict(m) for m in body.messages]
        plan = tool_plan(body, chat)
        render = partial(plan.prompt_tokens, engine.tokenizer) if plan.needed(messages) else \
            partial(prompt_tokens, chat, engine.tokenizer)
        tokens = await user_input(render, messages)
        n_predict = body.max_completion_tokens or body.max_tokens
        check_fits(tokens, n_predict, "max_completion_tokens" if body.max_completion_tokens else "max_tokens")
        req = GenRequest(tokens, n_predict or -1, params(body, body.seed), stops(body.stop) + list(engine.chat.stop),
                         ignore_eos=body.ignore_eos, grammar=openai_grammar(body, plan), n_probs=chat_top(body),
                         n=body.n, cache_prompt=body.cache_prompt)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        probs = ProbsFormat("chat", engine.tokenizer) if req.n_probs is not None else None
        thoughts = splitter(chat, body.reasoning_format or cfg.reasoning_format, messages)
        shape = ToolShape(plan, cfg.name, "chat", include_usage, probs, body.n, reasoning=thoughts) if plan.active \
            else Shape(cfg.name, "chat", include_usage, probs, body.n, reasoning=thoughts)
        return await generate(request, req, shape, body.stream)

    @app.post("/apply-template", summary="The prompt a chat request renders (llama-server's), tools included",
              responses=ERRORS["tokens"])
    async def apply_template(body: ChatRequest):
        chat = thinking_format(engine.chat, body.chat_template_kwargs)
        messages = [message_dict(m) for m in body.messages]
        plan = tool_plan(body, chat)
        return {"prompt": await user_input(partial(plan.prompt_text, engine.tokenizer), messages)}

    @app.post("/completion", summary="llama.cpp's native completion", responses=ERRORS["llama"])
    async def completion(body: LlamaCompletionRequest, request: Request):
        if isinstance(body.prompt, str):
            tokens, text = await user_input(engine.prompt, body.prompt), body.prompt
        else:
            tokens = list(body.prompt)
            check_fits(tokens, None, "n_predict")
            text = engine.tokenizer.decode(tokens)
        check_fits(tokens, body.n_predict, "n_predict")
        req = GenRequest(tokens, body.n_predict, params(body, body.seed), stops(body.stop), body.ignore_eos,
                         grammar=llama_grammar(body), n_probs=body.n_probs or None, cache_prompt=body.cache_prompt)
        seed = body.seed if body.seed >= 0 else cfg.seed
        probs = ProbsFormat("llama", engine.tokenizer) if body.n_probs else None
        return await generate(request, req, LlamaShape(cfg.name, body, text, engine.n_ctx, seed, probs), body.stream)

    @app.post("/tokenize", summary="Text to token ids (llama.cpp)", responses=ERRORS["tokens"])
    async def tokenize(body: TokenizeRequest):
        tokens = await user_input(engine.tokenize, body.content, body.add_special, body.parse_special)
        if body.with_pieces:
            tok = engine.tokenizer
            pieces = []
            for t in tokens:
                raw = tok.piece_bytes(t)
                try:
                    piece = raw.decode("utf-8")
                except UnicodeDecodeError:
                    piece = list(raw)
                pieces.append({"id": t, "piece": piece})
            return {"tokens": pieces}
        return {"tokens": tokens}

    @app.post("/detokenize", summary="Token ids to text (llama.cpp)", responses=ERRORS["tokens"])
    async def detokenize(body: DetokenizeRequest):
        bad = [t for t in body.tokens if not 0 <= t < engine.hp.n_vocab]
        if bad:
            raise ApiError(400, f"token id {bad[0]} is outside the vocabulary (0..{engine.hp.n_vocab - 1})",
                           param="tokens", code="invalid_value")
        return {"content": engine.tokenizer.decode(body.tokens)}

    add_embeddings(app, engine, cfg.embeddings, cfg.name, check_model, _errors(400, 401, 404, 408, 413))
    add_middleware(app, cfg)
    return app


# -- reading requests -----------------------------------------------------------------------------------------
def openai_prompt(prompt) -> list[int] | str:
    if isinstance(prompt, str):
        return prompt
    if prompt and all(isinstance(p, str) for p in prompt):
        if len(prompt) != 1:
            raise ApiError(400, "only one prompt per request is supported", param="prompt")
        return prompt[0]
    if prompt and all(isinstance(p, list) for p in prompt):
        if len(prompt) != 1:
            raise ApiError(400, "only one prompt per request is supported", param="prompt")
        return list(prompt[0])
    return list(prompt)


def stops(stop) -> list[str]:
    return [s for s in ([stop] if isinstance(stop, str) else list(stop or [])) if s]


def message_dict(m: Message) -> dict:
    if m.content is None or isinstance(m.content, str):
        content = m.content or ""
    else:
        bad = [p.type for p in m.content if p.type != "text"]
        if bad:
            raise ApiError(400, f"content parts of type {bad[0]!r} are not supported (text only)",
                           param="messages")
        content = "\n".join(p.text or "" for p in m.content)
    calls = [c.model_dump() for c in m.tool_calls] if m.tool_calls else None
    return {"role": "system" if m.role == "developer" else m.role, "content": content, **{
        k: v for k, v in (("tool_calls", calls), ("tool_call_id", m.tool_call_id), ("name", m.name)) if v is not None}}


def install_error_handlers(app: FastAPI) -> None:
    """Every error in the one shape (ErrorResponse): ours, validation (400, not 422), Starlette's (404, 405) and bugs
    (500, logged with the traceback)."""
    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        return error_response(e)

    @app.exception_handler(UserError)
    async def _user_error(request, e: UserError):
        """Raised while a route reads its request (a bad grammar, schema or logit_bias): the request's fault."""
        return error_response(model_damaged(e) if isinstance(e, DamagedModel) else ApiError(400, str(e)))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e: RequestValidationError):
        errs = e.errors()
        first = max(errs, key=_telling, default={"msg": "invalid request", "loc": ()})
        if first.get("type") == "json_invalid":
            return error_response(ApiError(400, f"malformed JSON body: {first.get('ctx', {}).get('error', '')}"
                                           .rstrip(": "), code="json_invalid"))
        param = validation_param(first.get("loc", ()))
        if param is None and first.get("type") in ("model_attributes_type", "dict_type", "missing"):
            return error_response(ApiError(400, "the request body must be a JSON object", code="invalid_value"))
        msg = f"{param}: {first['msg']}" if param else first["msg"]
        if len(errs) > 1:
            msg += f" (and {len(errs) - 1} more problem(s))"
        return error_response(ApiError(400, msg, param=param, code="invalid_value"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, e: StarletteHTTPException):
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return error_response(ApiError(e.status_code, f"{request.method} {request.url.path}: {e.detail}", kind,
                                       headers=getattr(e, "headers", None)))

    @app.exception_handler(Exception)
    async def _bug(request, e: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(ApiError(500, f"internal error: {type(e).__name__}: {e}", "server_error"))


def without_422(fastapi_openapi):
    """FastAPI's document without the 422 it adds to every route with a body: validation errors are 400s (declared
    per route through ERRORS)."""
    def openapi() -> dict:
        doc = fastapi_openapi()
        for operations in doc.get("paths", {}).values():
            for op in operations.values():
                op.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            doc.get("components", {}).get("schemas", {}).pop(name, None)
        return doc
    return openapi


def add_middleware(app: FastAPI, cfg: AppConfig) -> None:
    """Each added around the previous ones: from the outside in, the access log (it sees every answer), the request
    limits, the API key, JSON bodies."""
    app.add_middleware(JsonBodyMiddleware)
    app.add_middleware(AuthMiddleware, api_key=cfg.api_key)
    app.add_middleware(RequestLimits, limits=cfg.limits)
    app.add_middleware(AccessLogMiddleware)


class JsonBodyMiddleware:
    """Bodies are JSON whatever their declared type, as llama.cpp's server takes them (`curl -d '{...}'` sends
    application/x-www-form-urlencoded)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST":
            ctype = dict(scope["headers"]).get(b"content-type", b"").split(b";")[0].strip().lower()
            if not (ctype == b"application/json" or ctype.endswith(b"+json")):
                headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
                scope = {**scope, "headers": headers + [(b"content-type", b"application/json")]}
        return await self.app(scope, receive, send)


class RequestLimits:
    """A request's own limits (server.limits.Limits), answered in the API's shape before any route runs or while it
    reads the body: a head over max_header_bytes (431: h11 bounds a head that arrives in pieces, one that came in a
    single read reaches here), a declared body length over max_body_bytes (413 before a byte of it is read, so a
    client waiting for `100 Continue` sends nothing), a body that grows past it (413) or is not all there `timeout`
    seconds after the head (408). The connection then ends (server.connections lingers, then closes)."""

    def __init__(self, app, limits: Limits):
        self.app, self.limits = app, limits

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refusal = self.refusal(scope)
        if refusal is not None:
            return await error_response(refusal)(scope, receive, send)
        return await self.app(scope, self.limited(receive), send)

    def refusal(self, scope) -> ApiError | None:
        limit = self.limits.max_header_bytes
        head = len(scope["raw_path"]) + len(scope["query_string"]) + sum(len(k) + len(v) + 4 for k, v in
                                                                         scope["headers"])
        if head > limit:
            return ApiError(431, f"the request head (request line and headers) is larger than {limit} bytes",
                            code="headers_too_large")
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limits.max_body_bytes:
            return self.too_large(f"declares {int(declared)} bytes")
        return None

    def too_large(self, what: str) -> ApiError:
        return ApiError(413, f"the request body {what}; the server takes at most {self.limits.max_body_bytes} bytes",
                        code="body_too_large")

    def limited(self, receive):
        deadline = time.monotonic() + self.limits.timeout
        size, done = 0, False

        async def receive_within_limits():
            nonlocal size, done
            if done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.0))
            except asyncio.TimeoutError:
                raise ApiError(408, f"the request body was not received within {self.limits.timeout:g} s "
                               f"({size} bytes came)", code="request_timeout") from None
            size += len(message.get("body", b""))
            done = message["type"] != "http.request" or not message.get("more_body", False)
            if size > self.limits.max_body_bytes:
                raise self.too_large(f"is larger than {self.limits.max_body_bytes} bytes")
            return message
        return receive_within_limits


class AuthMiddleware:
    """With an API key, every route but /health needs `Authorization: Bearer KEY`."""

    def __init__(self, app, api_key: str | None):
        self.app, self.expected = app, b"Bearer " + api_key_bytes(api_key) if api_key else None

    async def __call__(self, scope, receive, send):
        if self.expected is None or scope["type"] != "http" or scope["path"] == "/health":
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"authorization", b"")
        if hmac.compare_digest(given, self.expected):
            return await self.app(scope, receive, send)
        msg = "missing API key: send Authorization: Bearer KEY" if not given else "incorrect API key"
        response = error_response(ApiError(401, msg, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}))
        await response(scope, receive, send)


class AccessLogMiddleware:
    """One line per request once its response has ended: client, request line, status, seconds, and for
    generations the timings: prompt tokens (and how many came from the slot's cache), its evaluation time and speed,
    generated tokens, their time and speed (llama.cpp's `timings`), the stop type. An exception that escapes the app
    is answered 500 by Starlette's outermost middleware, so it is logged as 500."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), [0]
        state = scope.setdefault("state", {})

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)
        try:
            await self.app(scope, receive, send_status)
        except Exception:
            status[0] = status[0] or 500
            raise
        finally:
            client = scope.get("client") or ("-", 0)
            line = (f'{client[0]}:{client[1]} "{scope["method"]} {scope["path"]}" {status[0] or "-"} '
                    f"{time.perf_counter() - t0:.3f} s")
            r: GenResult | None = state.get("result")
            if r is not None:
                t = r.timings()
                line += (f" prompt {r.n_prompt} tok, {r.n_prompt - t['prompt_n']} cached, {t['prompt_ms']:.1f} ms "
                         f"({t['prompt_per_second']:.1f} tok/s) · generated {r.n_predicted} tok, "
                         f"{t['predicted_ms']:.1f} ms ({t['predicted_per_second']:.1f} tok/s) · {r.stop_type}")
            elif state.get("failed"):
                line += f" prompt {state.get('n_prompt', 0)} tok, failed while streaming: {state['failed']}"
            elif state.get("cancelled"):
                line += f" prompt {state.get('n_prompt', 0)} tok, cancelled (client gone)"
            # floods of failures are rate-limited by kind: route and status (server.logs.RateLimit)
            path = "*" if status[0] == 404 else scope["path"]  # a flood of 404s with random paths is one kind
            log.info(line, extra={"kind": f'access {scope["method"]} {path} {status[0]}'} if not 0 < status[0] < 400
                     else None)
