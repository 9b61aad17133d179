"""Request bodies: OpenAI's (/v1/completions, /v1/chat/completions) and llama.cpp's native ones (/completion,
/tokenize, /detokenize), and the one error body. Unknown fields are ignored, as both servers do; fields we do not
implement are declared so that a request that relies on them is refused (see `unsupported`) instead of silently
answered otherwise.

Validation refuses, with a 400 naming the field (never a 500 later on):
- non-finite numbers (`1e309`, `Infinity`, `NaN`) in every float field (`allow_inf_nan=False`);
- sampling settings outside `runtime.sampling.RANGES` (the one definition, shared with `toolkit run` and the API);
- text with a lone surrogate (`"a\\ud800b"`, valid JSON but not Unicode text): refused rather than replaced, because
  replacing would silently change what the model is asked (a prompt, a stop string);
- more than MAX_STOP stop strings, or one longer than MAX_STOP_CHARS characters (each generated token is checked
  against every stop string, so these bound the work a request can ask for per token; OpenAI allows 4 strings)."""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from runtime.logprobs import MAX_TOP
from runtime.sampling import RANGES, SamplingParams

# `toolkit run`'s defaults, so that a request without sampling fields samples as `toolkit run` does
RUN = SamplingParams()
MAX_STOP, MAX_STOP_CHARS = 16, 256
MAX_CHOICES = 16  # n: each choice is generated in turn on the request's slot


def _unicode(value):
    """Before pydantic's own str checks, which would call the same fault 'unable to parse raw data'."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise PydanticCustomError("lone_surrogate", "text must be valid Unicode: lone surrogate U+{code} at "
                                      "character {at}", {"code": f"{ord(value[e.start]):04X}", "at": e.start}) from None
    return value


Text = Annotated[str, BeforeValidator(_unicode)]
StopText = Annotated[str, Field(max_length=MAX_STOP_CHARS), BeforeValidator(_unicode)]
StopList = Annotated[list[StopText], Field(max_length=MAX_STOP)]
Stop = Union[StopText, StopList, None]


LogitBias = Union[dict[Text, Union[float, bool]], list[tuple[Union[int, Text], Union[float, bool]]], None]


class Body(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class Sampling(Body):
    temperature: float = Field(RUN.temp, **RANGES["temp"].bounds(), description="0 = greedy")
    top_p: float = Field(RUN.top_p, **RANGES["top_p"].bounds())
    top_k: int = Field(RUN.top_k, **RANGES["top_k"].bounds(), description="0 = off")
    min_p: float = Field(RUN.min_p, **RANGES["min_p"].bounds())
    repeat_penalty: float = Field(RUN.repeat_penalty, **RANGES["repeat_penalty"].bounds(), description="1.0 = off")
    repeat_last_n: int = Field(RUN.repeat_last_n, **RANGES["repeat_last_n"].bounds())
    seed: int | None = Field(None, description="none or -1: the server's seed (random unless --seed)")
    stop: Stop = Field(None, description=f"a string or a list of strings that end the generation (at most {MAX_STOP}"
                       f" of at most {MAX_STOP_CHARS} characters)")
    presence_penalty: float = Field(RUN.presence_penalty, **RANGES["presence_penalty"].bounds(),
                                    description="subtracted from the logit of each token in the last repeat_last_n")
    frequency_penalty: float = Field(RUN.frequency_penalty, **RANGES["frequency_penalty"].bounds(),
                                     description="times its count, subtracted from each token's logit")
    logit_bias: LogitBias = Field(None, description='{"token id": bias} (-100 bans) or llama.cpp\'s [[token or text, '
                                  'bias or false], ...]')
    # llama.cpp's extra samplers (llama-server takes them on every route), see runtime.sampling
    typical_p: float = Field(RUN.typ_p, **RANGES["typ_p"].bounds(), description="locally typical sampling, 1 = off")
    top_n_sigma: float = Field(RUN.top_n_sigma, **RANGES["top_n_sigma"].bounds(), description="<= 0 = off")
    xtc_probability: float = Field(RUN.xtc_probability, **RANGES["xtc_probability"].bounds(), description="0 = off")
    xtc_threshold: float = Field(RUN.xtc_threshold, **RANGES["xtc_threshold"].bounds(), description="> 0.5 = off")
    dry_multiplier: float = Field(RUN.dry_multiplier, **RANGES["dry_multiplier"].bounds(), description="0 = off")
    dry_base: float = Field(RUN.dry_base, **RANGES["dry_base"].bounds())
    dry_allowed_length: int = Field(RUN.dry_allowed_length, **RANGES["dry_allowed_length"].bounds())
    dry_penalty_last_n: int = Field(RUN.dry_penalty_last_n, **RANGES["dry_penalty_last_n"].bounds(),
                                    description="0 = off")
    dry_sequence_breakers: list[Text] = Field(list(RUN.dry_sequence_breakers), min_length=1)
    mirostat: int = Field(RUN.mirostat, **RANGES["mirostat"].bounds(), description="0 = off, 1 or 2: Mirostat "
                          "1 or 2.0 instead of the sampler sequence")
    mirostat_tau: float = Field(RUN.mirostat_tau, **RANGES["mirostat_tau"].bounds())
    mirostat_eta: float = Field(RUN.mirostat_eta, **RANGES["mirostat_eta"].bounds())
    samplers: list[Text] | Text | None = Field(None, description="the sampler sequence: names (e.g. [\"top_k\", "
                                               "\"temperature\"]) or letters (e.g. \"kt\")")
    response_format: dict | None = Field(None, description='{"type": "text" | "json_object" | "json_schema", '
                                         '"json_schema": {"schema": {...}}}')
    cache_prompt: bool = Field(True, description="reuse the KV cache of the slot's previous request for the prompt's "
                               "common prefix (llama.cpp's default); false evaluates the whole prompt")
    ignore_eos: bool = Field(False, description="generate past end-of-generation tokens (llama-server takes it on "
                             "every route)")


class StreamOptions(Body):
    include_usage: bool = False


class OpenAIRequest(Sampling):
    model: Text | None = Field(None, description="the served model's name (any name unless --strict-model)")
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=MAX_CHOICES, description="choices: continuations of the prompt (evaluated once), "
                   "choice i sampled with the seed + i as llama-server's n_cmpl")
    grammar: Text | None = Field(None, description="llama-server's extension: a GBNF grammar the output follows")

    def unsupported(self) -> str | None:
        return None


Prompt = Union[Text, list[Text], list[int], list[list[int]]]


class CompletionRequest(OpenAIRequest):
    prompt: Prompt = Field("", description="text or token ids (one prompt)")
    max_tokens: int | None = Field(16, ge=1, description="tokens to generate; null: until the context is full")
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP, description="the log-probabilities of each token and of "
                                 "the N most likely")
    echo: bool = False
    suffix: Text | None = None
    best_of: int | None = None
    tools: list | None = None

    def unsupported(self) -> str | None:
        if self.tools:
            return "tools"
        if self.echo:
            return "echo"
        if self.suffix:
            return "suffix"
        if self.best_of not in (None, 1):
            return "best_of"
        return super().unsupported()


class ContentPart(Body):
    type: Text
    text: Text | None = None


class FunctionCall(Body):
    name: Text
    arguments: Text | dict = Field("{}", description="JSON text (OpenAI's form) or an object")


class ToolCall(Body):
    id: Text | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[ContentPart] | None = None
    tool_calls: list[ToolCall] | None = Field(None, description="an assistant's calls")
    tool_call_id: Text | None = Field(None, description="a tool message: the call it answers")
    name: Text | None = None


class ChatRequest(OpenAIRequest):
    messages: list[Message] = Field(..., min_length=1)
    max_tokens: int | None = Field(None, ge=1, description="tokens to generate; null: until the context is full")
    max_completion_tokens: int | None = Field(None, ge=1, description="the newer name of max_tokens")
    logprobs: bool = Field(False, description="the log-probability of each generated token")
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP, description="with logprobs: the N most likely tokens")
    tools: list[dict] | None = Field(None, description='[{"type": "function", "function": {"name", "description", '
                                     '"parameters": JSON Schema}}]')
    tool_choice: Text | dict | None = Field(None, description='auto (with tools), none, required, or {"type": '
                                            '"function", "function": {"name": ...}}')
    parallel_tool_calls: bool = Field(True, description="whether the answer may call several tools")
    reasoning_format: Literal["none", "deepseek", "deepseek-legacy", "auto"] | None = Field(
        None, description="how the thought (<think>...</think>) is returned: none (left in content), deepseek / "
        "deepseek-legacy / auto (in message.reasoning_content); default: the server's --reasoning-format")
    chat_template_kwargs: dict | None = Field(None, description='extra variables for the chat template, e.g. '
                                              '{"enable_thinking": false}')


class LlamaCompletionRequest(Sampling):
    """llama.cpp's /completion."""
    prompt: Text | list[int] = Field(..., description="text or token ids")
    n_predict: int = Field(-1, ge=-1, description="tokens to generate; -1: until the context is full")
    stop: StopList = Field(default_factory=list)
    seed: int = -1
    stream: bool = False
    grammar: Text | None = Field(None, description="a GBNF grammar (llama.cpp's format) the output follows")
    json_schema: dict | bool | None = Field(None, description="a JSON Schema the output follows")
    n_probs: int = Field(0, ge=0, le=MAX_TOP, description="the log-probabilities of each token and the N most likely")


class TokenizeRequest(Body):
    content: Text
    add_special: bool = Field(False, description="add BOS as the model does")
    parse_special: bool = Field(True, description="special tokens written as text become their ids")
    with_pieces: bool = False


class DetokenizeRequest(Body):
    tokens: list[int]


class ErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, not_found_error or server_error")
    param: str | None = Field(None, description="the request field at fault, as a dotted path")
    code: str | None = Field(None, description="e.g. invalid_value, context_length_exceeded, queue_full")


class ErrorResponse(BaseModel):
    """Every error the server answers, in OpenAI's shape."""
    error: ErrorDetail
