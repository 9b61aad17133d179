"""OpenAI's /v1/embeddings, and llama.cpp's /embeddings, as llama-server (b11434) answers them: `input` a text, a
list of texts, token ids or a list of token-id lists (texts tokenized with BOS and special tokens parsed, as there);
each input pooled and normalized (runtime.embeddings; `embd_normalize` in the body overrides --embd-normalize;
with pooling none, every token's hidden state, unnormalized, on /embeddings only); `encoding_format` float or base64
(little-endian float32 bytes); `usage` counts the tokens evaluated. Without --embedding the routes answer 501
(not_supported_error), and /v1/embeddings with pooling none 400, as llama-server does."""
from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Callable, Literal, Union

import numpy as np
from fastapi import FastAPI
from gguf import PoolingType
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from runtime.embeddings import DEFAULT_NORMALIZE, embeddings, pooling_type
from server.engine import Engine
from server.schemas import Body, Text
from common.errors import DamagedModel, UserError


@dataclass
class EmbeddingOptions:
    enabled: bool = False                 # --embedding
    pooling: str | None = None            # --pooling (None: the model's, else none)
    normalize: int = DEFAULT_NORMALIZE    # --embd-normalize


Input = Union[Text, list[Union[Text, list[int]]], list[int]]


class EmbeddingRequest(Body):
    input: Input | None = Field(None, description="a text, a list of texts, token ids, or a list of token-id lists")
    content: Input | None = Field(None, description="llama.cpp's name for input (answered in llama.cpp's shape)")
    model: Text | None = Field(None, description="echoed in the answer (any name unless --strict-model)")
    encoding_format: Literal["float", "base64"] = "float"
    embd_normalize: int | None = Field(None, ge=-1, description="-1 none, 0 max-abs (int16 range), 1 taxicab, "
                                       "2 Euclidean, p > 2 p-norm (default: the server's --embd-normalize)")


def add_embeddings(app: FastAPI, engine: Engine, options: EmbeddingOptions, name: str,
                   check_model: Callable, errors: dict) -> None:
    """Register POST /v1/embeddings (OpenAI's shape) and llama-server's /embeddings and /embedding (its own shape: a
    list of {index, embedding: [vector, ...]}, every token's with pooling none); `name` is the model's name in
    answers, check_model the app's --strict-model check, errors the routes' error statuses for the OpenAPI document.
    With --embedding the pooling is resolved here: a model whose pooling key is not one this runtime has fails at
    start-up."""
    from server.app import ApiError, model_damaged  # server.app registers these routes: imported once it is loaded
    pooling = pooling_type(engine.base, options.pooling) if options.enabled else None
    responses = {**errors, 501: {"model": errors[400]["model"], "description": "The server was started without "
                                 "--embedding"},
                 500: {"model": errors[400]["model"], "description": "The model is damaged (it computed NaN or "
                       "infinite hidden states): code model_damaged"}}

    def inputs(items: Input) -> list[list[int]]:
        if isinstance(items, list) and items and all(isinstance(t, int) for t in items):
            items = [items]
        elif isinstance(items, str):
            items = [items]
        if not items:
            raise ApiError(400, '"input" must not be empty', param="input", code="invalid_value")
        prompts = [engine.tokenize(p) if isinstance(p, str) else list(p) for p in items]
        n_vocab = engine.hp.n_vocab
        for i, tokens in enumerate(prompts):
            if not tokens:
                raise ApiError(400, f"input {i}: Input content cannot be empty", param="input", code="invalid_value")
            bad = [t for t in tokens if not 0 <= t < n_vocab]
            if bad:
                raise ApiError(400, f"input {i}: token id {bad[0]} is outside the vocabulary (0..{n_vocab - 1})",
                               param="input", code="invalid_value")
            if len(tokens) > engine.n_ctx:
                raise ApiError(400, f"input {i} ({len(tokens)} tokens) is larger than the max context size "
                               f"({engine.n_ctx} tokens, the server's -c)", param="input",
                               code="context_length_exceeded")
        return prompts

    def compute(prompts: list[list[int]], embd_norm: int) -> list[np.ndarray]:
        # llama-server normalizes only pooled embeddings
        embd_norm = -1 if pooling == PoolingType.NONE else embd_norm
        return embeddings(engine.base, prompts, pooling, embd_norm)

    async def answer(body: EmbeddingRequest, oai: bool):
        """llama-server's handle_embeddings_impl: `content` instead of `input` is answered in llama.cpp's shape."""
        if not options.enabled:
            raise ApiError(501, "This server does not support embeddings. Start it with `--embedding`",
                           "not_supported_error")
        if oai and pooling == PoolingType.NONE:
            raise ApiError(400, "Pooling type 'none' is not OAI compatible. Please use a different pooling type")
        if body.input is None and body.content is None:
            raise ApiError(400, '"input" or "content" must be provided', param="input", code="invalid_value")
        oai = oai and body.input is not None
        if oai:
            check_model(body)
        try:
            prompts = await run_in_threadpool(inputs, body.input if body.input is not None else body.content)
            vectors = await run_in_threadpool(compute, prompts, options.normalize if body.embd_normalize is None
                                              else body.embd_normalize)
        except DamagedModel as e:
            raise model_damaged(e) from None
        except UserError as e:
            raise ApiError(400, str(e)) from None
        if not oai:
            return [{"index": i, "embedding": (v if v.ndim == 2 else v[None]).tolist()} for i, v in enumerate(vectors)]
        data = []
        for i, v in enumerate(vectors):
            if body.encoding_format == "base64":
                raw = base64.b64encode(np.ascontiguousarray(v, dtype="<f4").tobytes()).decode("ascii")
                data.append({"embedding": raw, "index": i, "object": "embedding", "encoding_format": "base64"})
            else:
                data.append({"embedding": v.tolist(), "index": i, "object": "embedding"})
        n = sum(len(p) for p in prompts)
        return {"model": body.model if body.model is not None else name, "object": "list",
                "usage": {"prompt_tokens": n, "total_tokens": n}, "data": data}

    # without --embedding the routes answer 501 and are left out of /openapi.json, as /metrics and /slots are
    shown = options.enabled

    @app.post("/v1/embeddings", summary="OpenAI embeddings (--embedding; pooled as --pooling, normalized as "
              "--embd-normalize)", responses=responses, include_in_schema=shown)
    async def embeddings_oai(body: EmbeddingRequest):
        return await answer(body, True)

    @app.post("/embeddings", summary="llama.cpp's embeddings (--embedding; every token's with pooling none)",
              responses=responses, include_in_schema=shown)
    async def embeddings_llama(body: EmbeddingRequest):
        return await answer(body, False)

    app.post("/embedding", summary="llama.cpp's embeddings (legacy name)", responses=responses,
             include_in_schema=shown)(embeddings_llama)
