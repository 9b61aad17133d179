"""Token sampling in llama.cpp's default chain order: grammar mask → logit bias → penalties (repetition, frequency,
presence) → top-k → top-p → min-p → temperature → random draw. `temp <= 0` is greedy. A seed makes the draws
reproducible.

Sampling is total: every setting is checked against `RANGES` (the one definition of what each accepts, also used by
the command line, the Python API and the server's request schemas), and any setting in range gives a token:
- a temperature so small that logits/temp overflows (1e-310) samples the limit of the distribution as temp → 0,
  i.e. greedily (the largest logit; ties shared), because the logits are scaled after the largest is subtracted;
- a penalty so small or so large that the penalized logits overflow clamps them to the largest (or lowest) finite
  float: with a tiny penalty a repeated token with a positive logit wins, as at the limit, with a huge one it loses;
- logits that are NaN or +inf, or that leave every token masked (-inf), come from a damaged model: `DamagedModel`
  (llama.cpp would sample garbage from them; we refuse, naming the model)."""
from __future__ import annotations

import math
import numbers
import random
from dataclasses import dataclass, field

import numpy as np

from common.errors import DamagedModel, UserError

_FLOAT_MAX = np.finfo(np.float64).max


@dataclass(frozen=True)
class Range:
    """The values a sampling setting accepts: a finite number (a whole one when `whole`) from `low` (excluded when
    `low_open`) to `high`."""
    low: float
    high: float = math.inf
    low_open: bool = False
    whole: bool = False

    def describe(self) -> str:
        low = f"> {self.low:g}" if self.low_open else f">= {self.low:g}"
        high = f" and <= {self.high:g}" if self.high < math.inf else ""
        return f"{'an integer' if self.whole else 'a finite number'} {low}{high}"

    def contains(self, value) -> bool:
        kind = numbers.Integral if self.whole else numbers.Real
        return (isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value)
                and (value > self.low if self.low_open else value >= self.low) and value <= self.high)

    def bounds(self) -> dict:
        """The same range as pydantic Field constraints (finiteness: the schema's allow_inf_nan=False)."""
        return {"gt" if self.low_open else "ge": self.low, **({"le": self.high} if self.high < math.inf else {})}


# SamplingParams field → what it accepts
RANGES: dict[str, Range] = {
    "temp": Range(0.0),                           # 0 = greedy
    "top_k": Range(0, whole=True),                # 0 = off
    "top_p": Range(0.0, 1.0),                     # 1 = off
    "min_p": Range(0.0, 1.0),                     # 0 = off
    "repeat_penalty": Range(0.0, low_open=True),  # 1 = off
    "repeat_last_n": Range(-1, whole=True),       # -1 = the whole context, 0 = off
    "presence_penalty": Range(-2.0, 2.0),         # 0 = off (OpenAI's range)
    "frequency_penalty": Range(-2.0, 2.0),        # 0 = off (OpenAI's range)
    "logit_bias": Range(-100.0, 100.0),           # each bias (OpenAI's range); -100 bans the token
}


def check(field: str, value, name: str | None = None) -> None:
    """UserError unless `value` is in RANGES[field]; the message calls the setting `name` (a flag, a JSON field)."""
    if field == "logit_bias":
        for token, bias in dict(value).items():
            check_bias(token, bias, name)
        return
    if not RANGES[field].contains(value):
        raise UserError(f"{name or field} must be {RANGES[field].describe()}, got {value!r}")


def check_bias(token, bias, name: str | None = None) -> None:
    """One logit_bias entry: a token id (an integer >= 0) and a bias in RANGES["logit_bias"] or -inf (a ban, as
    llama-server's `false`)."""
    where = name or "logit_bias"
    if not isinstance(token, numbers.Integral) or isinstance(token, bool) or token < 0:
        raise UserError(f"{where}: token ids must be integers >= 0, got {token!r}")
    if not (RANGES["logit_bias"].contains(bias) or (isinstance(bias, float) and bias == -math.inf)):
        raise UserError(f"{where}[{token}] must be {RANGES['logit_bias'].describe()}, got {bias!r}")


@dataclass
class SamplingParams:
    temp: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int = -1  # -1: random
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit; -100 or -inf bans

    def __post_init__(self):
        for name in RANGES:
            check(name, getattr(self, name))

    @property
    def penalizes(self) -> bool:
        """Whether the penalties sampler does anything (llama.cpp's is_disabled, negated)."""
        return self.repeat_last_n != 0 and (self.repeat_penalty != 1.0 or self.frequency_penalty != 0.0
                                            or self.presence_penalty != 0.0)


class Sampler:
    def __init__(self, params: SamplingParams):
        self.params = params
        seed = params.seed if params.seed is not None and params.seed >= 0 else random.SystemRandom().randrange(2**32)
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def sample(self, logits: np.ndarray, history: list[int], constraint=None) -> int:
        """One token; `constraint` (a runtime.grammar.GrammarConstraint) first masks the tokens it does not allow."""
        p = self.params
        logits = np.asarray(logits, dtype=np.float64).reshape(-1).copy()
        _check_logits(logits)
        if constraint is not None:
            constraint.apply(logits)
        if p.logit_bias:
            apply_logit_bias(logits, p.logit_bias)
            if not np.isfinite(logits).any():
                raise UserError("logit_bias bans every token the model (and the grammar) allows here")
        if p.penalizes and history:
            apply_penalties(logits, history, p)
        if p.temp <= 0:
            return int(np.argmax(logits))
        ids = np.arange(logits.size)
        if p.top_k > 0 and p.top_k < logits.size:
            keep = np.argpartition(-logits, p.top_k - 1)[: p.top_k]
            ids, logits = ids[keep], logits[keep]
        order = np.argsort(-logits, kind="stable")
        ids, logits = ids[order], logits[order]
        if p.top_p < 1.0:
            probs = _softmax(logits)
            cut = int(np.searchsorted(np.cumsum(probs), p.top_p)) + 1
            ids, logits = ids[:cut], logits[:cut]
        if p.min_p > 0.0:
            probs = _softmax(logits)
            keep = probs >= p.min_p * probs[0]
            ids, logits = ids[keep], logits[keep]
        probs = _softmax(logits, p.temp)
        return int(ids[self.rng.choice(probs.size, p=probs)])


def _check_logits(logits: np.ndarray) -> None:
    """-inf marks a masked token; NaN, +inf or nothing left to draw from is the model's fault."""
    bad = np.isnan(logits) | np.isposinf(logits)
    if bad.any() or not np.isfinite(logits).any():
        what = f"{int(bad.sum())} NaN or infinite logit(s)" if bad.any() else "no finite logit"
        raise DamagedModel(f"the model computed {what} (of {logits.size}): the model file is damaged or its weights "
                           "overflow")


def apply_logit_bias(logits: np.ndarray, bias: dict[int, float]) -> None:
    """llama.cpp's logit-bias sampler (in place): each bias added to its token's logit; -100 (OpenAI's ban) and
    -inf (llama-server's `false`) mask the token. Ids outside the vocabulary are ignored, as llama.cpp does."""
    for token, b in bias.items():
        if 0 <= token < logits.size:
            logits[token] = -np.inf if b <= -100 else logits[token] + b


def apply_penalties(logits: np.ndarray, history: list[int], p: SamplingParams) -> None:
    """llama.cpp's penalties sampler (in place) over the last repeat_last_n tokens (-1: all of them): a token seen
    `count` times has its logit divided by repeat_penalty (multiplied when <= 0), then lowered by
    count * frequency_penalty + presence_penalty."""
    recent = history[-p.repeat_last_n:] if p.repeat_last_n > 0 else history
    ids, counts = np.unique(np.asarray(recent, dtype=np.int64), return_counts=True)
    keep = (ids >= 0) & (ids < logits.size)
    ids, counts = ids[keep], counts[keep]
    vals = _penalized(logits[ids], p.repeat_penalty) if p.repeat_penalty != 1.0 else logits[ids]
    with np.errstate(over="ignore", invalid="ignore"):
        out = vals - (counts * p.frequency_penalty + p.presence_penalty)
    logits[ids] = np.where(np.isneginf(vals), vals, np.clip(out, -_FLOAT_MAX, _FLOAT_MAX))


def _penalized(vals: np.ndarray, penalty: float) -> np.ndarray:
    """llama.cpp's repetition penalty (positive logits divided, negative ones multiplied), clamped to finite floats:
    an extreme penalty cannot make a logit infinite, and a masked (-inf) token stays masked."""
    with np.errstate(over="ignore", under="ignore"):
        out = np.where(vals > 0, vals / penalty, vals * penalty)
    return np.where(np.isneginf(vals), vals, np.clip(out, -_FLOAT_MAX, _FLOAT_MAX))


def _softmax(x: np.ndarray, temp: float = 1.0) -> np.ndarray:
    """softmax(x / temp), total for any temp > 0 and finite max(x): the scaled differences are <= 0, so exp never
    overflows; where they underflow to -inf (a subnormal temp) only the largest logits keep any probability."""
    with np.errstate(over="ignore", under="ignore"):
        e = np.exp((x - x.max()) / temp)
    return e / e.sum()
