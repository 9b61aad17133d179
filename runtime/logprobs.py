"""Log-probabilities of generated tokens, as llama-server (b11434) and OpenAI report them: from the model's own
distribution, softmax of the raw logits, before any sampling step (grammar, logit bias, penalties, top-k/p, min-p,
temperature) — llama-server's default (`post_sampling_probs: false`: get_token_probabilities over
llama_get_logits_ith), and what llama-cpp-python computes from its scores. One entry per generated token, then shaped
for each API: OpenAI chat (`content[]`), OpenAI's legacy completions (`tokens`, `token_logprobs`, `top_logprobs`,
`text_offset`), llama-server's `completion_probabilities`."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_TOP = 20  # OpenAI's limit on top_logprobs (and legacy logprobs: 5); llama-server's n_probs has none: ours is 20


@dataclass(frozen=True)
class TokenLogprob:
    token: int
    logprob: float
    top: tuple[tuple[int, float], ...]   # the n most probable tokens, most probable first


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64).reshape(-1)
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


def token_logprob(token: int, logits: np.ndarray, n_top: int) -> TokenLogprob:
    """The sampled token's log-probability and the n_top most probable tokens (ties: the lower id first)."""
    lp = log_softmax(logits)
    n_top = min(max(n_top, 0), lp.size)
    top = np.argpartition(-lp, n_top - 1)[:n_top] if n_top else np.zeros(0, dtype=np.int64)
    top = top[np.lexsort((top, -lp[top]))]
    return TokenLogprob(int(token), float(lp[token]), tuple((int(t), float(lp[t])) for t in top))


def _valid_utf8(raw: bytes) -> str:
    """The piece as text, an incomplete UTF-8 sequence at its end left out (llama-server's validate_utf8)."""
    for cut in range(len(raw), max(len(raw) - 4, -1), -1):
        try:
            return raw[:cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return raw.decode("utf-8", errors="replace")


def chat_logprobs(entries: list[TokenLogprob], tokenizer) -> dict:
    """OpenAI chat: {"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}], "refusal"}."""
    def one(token: int, logprob: float) -> dict:
        raw = tokenizer.piece_bytes(token)
        return {"token": _valid_utf8(raw), "logprob": logprob, "bytes": list(raw)}
    return {"content": [{**one(e.token, e.logprob), "top_logprobs": [one(t, lp) for t, lp in e.top]}
                        for e in entries], "refusal": None}


def completion_logprobs(entries: list[TokenLogprob], tokenizer, offset: int) -> dict:
    """OpenAI's legacy completions (as llama-cpp-python fills them): token texts, their log-probabilities, the top
    tokens with the sampled one added, and each token's character offset in the text (starting at `offset`, the
    prompt's length)."""
    tokens, offsets, at = [], [], offset
    for e in entries:
        text = tokenizer.piece_bytes(e.token).decode("utf-8", errors="ignore")
        tokens.append(text)
        offsets.append(at)
        at += len(text)
    tops = []
    for e, text in zip(entries, tokens):
        top = {tokenizer.piece_bytes(t).decode("utf-8", errors="ignore"): lp for t, lp in e.top}
        top[text] = e.logprob
        tops.append(top)
    return {"tokens": tokens, "text_offset": offsets, "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": tops}


def llama_probabilities(entries: list[TokenLogprob], tokenizer) -> list[dict]:
    """llama-server's completion_probabilities: [{id, token, bytes, logprob, top_logprobs: [{id, token, bytes,
    logprob}]}]."""
    def one(token: int, logprob: float) -> dict:
        raw = tokenizer.piece_bytes(token)
        return {"id": token, "token": _valid_utf8(raw), "bytes": list(raw), "logprob": logprob}
    return [{**one(e.token, e.logprob), "top_logprobs": [one(t, lp) for t, lp in e.top]} for e in entries]


class ProbsFormat:
    """The log-probabilities of released pieces in a route's shape; for OpenAI's legacy completions, character
    offsets continue from piece to piece of a choice (starting after the prompt text, as llama-cpp-python counts
    them)."""

    def __init__(self, kind: str, tokenizer, offset: int = 0, n_top: int = 0):
        """n_top: how many most likely tokens each entry lists (kept here for the code that computes them)."""
        self.kind, self.tokenizer, self.start, self.n_top = kind, tokenizer, offset, n_top
        self.offsets: dict[int, int] = {}   # choice -> where its next token starts

    def __call__(self, probs: list, index: int = 0):
        if self.kind == "chat":
            return chat_logprobs(probs, self.tokenizer)
        if self.kind == "llama":
            return llama_probabilities(probs, self.tokenizer)
        out = completion_logprobs(probs, self.tokenizer, self.offsets.get(index, self.start))
        if out["tokens"]:
            self.offsets[index] = out["text_offset"][-1] + len(out["tokens"][-1])
        return out
