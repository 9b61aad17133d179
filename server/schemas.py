"""Request bodies: OpenAI's (/v1/completions, /v1/chat/completions) and llama.cpp's native ones (/completion,
/tokenize, /detokenize). Unknown fields are ignored, as both servers do; fields we do not implement are declared so
that a request that relies on them is refused (see `unsupported`) instead of silently answered otherwise."""
from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field

# `toolkit run`'s defaults, so that a request without sampling fields samples as `toolkit run` does
TEMPERATURE, TOP_K, TOP_P, MIN_P, REPEAT_PENALTY, REPEAT_LAST_N = 0.8, 40, 0.95, 0.05, 1.0, 64

Stop = Union[str, list[str], None]


class Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Sampling(Body):
    temperature: float = Field(TEMPERATURE, ge=0.0, description="0 = greedy")
    top_p: float = Field(TOP_P, ge=0.0, le=1.0)
    top_k: int = Field(TOP_K, ge=0, description="0 = off")
    min_p: float = Field(MIN_P, ge=0.0, le=1.0)
    repeat_penalty: float = Field(REPEAT_PENALTY, gt=0.0, description="1.0 = off")
    repeat_last_n: int = Field(REPEAT_LAST_N, ge=-1)
    seed: int | None = Field(None, description="none or -1: the server's seed (random unless --seed)")
    stop: Stop = Field(None, description="a string or a list of strings that end the generation")


class StreamOptions(Body):
    include_usage: bool = False


class OpenAIRequest(Sampling):
    model: str | None = Field(None, description="the served model's name (any name unless --strict-model)")
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, description="only 1 is supported")
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict | None = None
    logprobs: int | bool | None = None
    tools: list | None = None
    response_format: dict | None = None

    def unsupported(self) -> str | None:
        if self.n != 1:
            return "n"
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                return name
        for name in ("logit_bias", "logprobs", "tools"):
            if getattr(self, name):
                return name
        if self.response_format and self.response_format.get("type", "text") != "text":
            return "response_format"
        return None


Prompt = Union[str, list[int], list[str], list[list[int]]]


class CompletionRequest(OpenAIRequest):
    prompt: Prompt = Field("", description="text or token ids (one prompt)")
    max_tokens: int | None = Field(16, ge=1, description="tokens to generate; null: until the context is full")
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def unsupported(self) -> str | None:
        if self.echo:
            return "echo"
        if self.suffix:
            return "suffix"
        if self.best_of not in (None, 1):
            return "best_of"
        return super().unsupported()


class ContentPart(Body):
    type: str
    text: str | None = None


class Message(Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class ChatRequest(OpenAIRequest):
    messages: list[Message] = Field(..., min_length=1)
    max_tokens: int | None = Field(None, ge=1, description="tokens to generate; null: until the context is full")
    max_completion_tokens: int | None = Field(None, ge=1, description="the newer name of max_tokens")


class LlamaCompletionRequest(Sampling):
    """llama.cpp's /completion."""
    prompt: str | list[int] = Field(..., description="text or token ids")
    n_predict: int = Field(-1, ge=-1, description="tokens to generate; -1: until the context is full")
    stop: list[str] = Field(default_factory=list)
    seed: int = -1
    stream: bool = False
    ignore_eos: bool = False


class TokenizeRequest(Body):
    content: str
    add_special: bool = Field(False, description="add BOS as the model does")
    parse_special: bool = Field(True, description="special tokens written as text become their ids")
    with_pieces: bool = False


class DetokenizeRequest(Body):
    tokens: list[int]
