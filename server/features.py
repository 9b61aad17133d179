"""What a request asks of the sampler beyond the basic settings, read from the request bodies (server.schemas) into
runtime terms: penalties, logit_bias and llama.cpp's extra samplers and their sequence (SamplingParams), a grammar
(response_format on the OpenAI routes, grammar / json_schema on /completion), log-probabilities (how many top tokens,
and their shape in the answer). Faults are UserErrors, answered 400."""
from __future__ import annotations

import math

from runtime.grammar import Grammar
from runtime.sampling import SAMPLERS, SamplingParams, check_bias, samplers_from_chars, samplers_from_names
from runtime.structured import one_constraint
from runtime.tools import ToolPlan
from common.errors import UserError


def sampling_params(body, seed: int, tokenizer) -> SamplingParams:
    """The request's sampling settings (`seed` already resolved: the request's, else the server's)."""
    return SamplingParams(temp=body.temperature, top_k=body.top_k, top_p=body.top_p, min_p=body.min_p,
                          repeat_penalty=body.repeat_penalty, repeat_last_n=body.repeat_last_n, seed=seed,
                          presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
                          logit_bias=logit_bias(body.logit_bias, tokenizer), typ_p=body.typical_p,
                          top_n_sigma=body.top_n_sigma, xtc_probability=body.xtc_probability,
                          xtc_threshold=body.xtc_threshold, dry_multiplier=body.dry_multiplier, dry_base=body.dry_base,
                          dry_allowed_length=body.dry_allowed_length, dry_penalty_last_n=body.dry_penalty_last_n,
                          dry_sequence_breakers=tuple(body.dry_sequence_breakers), mirostat=body.mirostat,
                          mirostat_tau=body.mirostat_tau, mirostat_eta=body.mirostat_eta,
                          samplers=sampler_sequence(body.samplers))


def sampler_sequence(value) -> tuple[str, ...]:
    """llama-server's `samplers`: a list of names or a string of letters; none: llama.cpp's default sequence."""
    if value is None:
        return SAMPLERS
    return samplers_from_chars(value) if isinstance(value, str) else samplers_from_names(value)


def logit_bias(value, tokenizer) -> dict[int, float]:
    """OpenAI's object form ({"token id": bias}) and llama-server's forms: a key or list entry that is text biases
    each of its tokens, `false` bans; ids outside the vocabulary are refused (llama-server skips them)."""
    if not value:
        return {}
    pairs = value.items() if isinstance(value, dict) else value
    out: dict[int, float] = {}
    for pair in pairs:
        if isinstance(value, list) and (not isinstance(pair, (list, tuple)) or len(pair) != 2):
            raise UserError(f"logit_bias entries must be [token, bias] pairs, got {pair!r}")
        key, bias = pair
        bias = -math.inf if bias is False else bias
        if bias is True or not isinstance(bias, (int, float)):
            raise UserError(f"logit_bias[{key!r}] must be a number or false, got {bias!r}")
        for token in _bias_tokens(key, tokenizer):
            check_bias(token, float(bias), "logit_bias")
            out[token] = float(bias)
    return out


def _bias_tokens(key, tokenizer) -> list[int]:
    if isinstance(key, str) and key.lstrip("-").isdigit():
        key = int(key)
    if isinstance(key, int):
        if not 0 <= key < tokenizer.n_vocab:
            raise UserError(f"logit_bias: token id {key} is outside the vocabulary (0..{tokenizer.n_vocab - 1})")
        return [key]
    return tokenizer.encode(str(key), add_bos=False, parse_special=False)


def openai_grammar(body, tools: ToolPlan | None = None) -> Grammar | None:
    """`response_format`, llama-server's `grammar`, or the tool calls' grammar (tool_choice required or a function)."""
    return one_constraint(response_format=body.response_format, grammar=body.grammar or None,
                          tool_choice=tools.grammar() if tools else None)


def tool_plan(body, chat) -> ToolPlan:
    """/v1/chat/completions: `tools`, `tool_choice`, `parallel_tool_calls` for the served chat format."""
    return ToolPlan(chat, body.tools, body.tool_choice, body.parallel_tool_calls)


def llama_grammar(body) -> Grammar | None:
    """/completion: `grammar` (GBNF), `json_schema`, or llama-server's `response_format`."""
    return one_constraint(grammar=body.grammar or None, json_schema=body.json_schema,
                          response_format=body.response_format)


def chat_top(body) -> int | None:
    """/v1/chat/completions: `logprobs: true` with `top_logprobs` (0 when not given); top_logprobs without logprobs
    is refused, as OpenAI and llama-server do."""
    if body.top_logprobs is not None and not body.logprobs:
        raise UserError("top_logprobs requires logprobs to be true")
    return (body.top_logprobs or 0) if body.logprobs else None


def completion_top(body) -> int | None:
    """/v1/completions: `logprobs: N` (0..MAX_TOP; null: none)."""
    if body.logprobs is None or body.logprobs is False:
        return None
    return int(body.logprobs)
