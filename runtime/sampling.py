"""Token sampling as llama.cpp's sampler chain (common/sampling.cpp, b11434): grammar mask → logit bias → the
`samplers` sequence, by default llama.cpp's: penalties (repetition, frequency, presence) → DRY → top-n-sigma → top-k →
typical → top-p → min-p → XTC → temperature → random draw. With `mirostat` 1 or 2 the sequence is replaced, as there, by
temperature → mirostat (which truncates, draws and updates its target surprise `mu`). `temp <= 0` is greedy at the
temperature step (the samplers before it still apply, so DRY, typical or XTC can change the token). A seed makes the
draws reproducible (numpy's generator, not llama.cpp's mt19937: seeded sequences do not match llama.cpp's).

Sampling is total: every setting is checked against `RANGES` (the one definition of what each accepts, also used by
the command line, the Python API and the server's request schemas), and any setting in range gives a token:
- a temperature so small that logits/temp overflows (1e-310) samples the limit of the distribution as temp → 0,
  i.e. greedily (the largest logit; ties shared), because the logits are scaled after the largest is subtracted;
- a penalty so small or so large that the penalized logits overflow clamps them to the largest (or lowest) finite
  float: with a tiny penalty a repeated token with a positive logit wins, as at the limit, with a huge one it loses;
  DRY's penalty (multiplier * base^length) is clamped the same way;
- masked (-inf) tokens leave the candidates before the chain, so no sampler sees a zero probability: typical
  sampling's entropy and mirostat's Zipf estimate (NaN in llama.cpp when a masked token reaches them) stay finite;
  mirostat's mu is kept finite and its k computed in log space (llama.cpp's float k can overflow);
- logits that are NaN or +inf, or that leave every token masked (-inf), come from a damaged model: `DamagedModel`
  (llama.cpp would sample garbage from them; we refuse, naming the model)."""
from __future__ import annotations

import math
import numbers
import random
import weakref
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
    "typ_p": Range(0.0, 1.0),                     # 1 = off
    "top_n_sigma": Range(-1.0),                   # <= 0 = off (llama.cpp's default -1)
    "xtc_probability": Range(0.0, 1.0),           # 0 = off
    "xtc_threshold": Range(0.0, 1.0),             # > 0.5 = off
    "dry_multiplier": Range(0.0),                 # 0 = off
    "dry_base": Range(1.0),
    "dry_allowed_length": Range(0, whole=True),
    "dry_penalty_last_n": Range(0, whole=True),   # 0 = off
    "mirostat": Range(0, 2, whole=True),          # 0 = off, 1 = Mirostat, 2 = Mirostat 2.0
    "mirostat_tau": Range(0.0),                   # the target surprise (entropy)
    "mirostat_eta": Range(0.0),                   # the learning rate of mu
}

# llama.cpp's default sampler sequence (common_params_sampling::samplers), by its names; and its one-letter codes
SAMPLERS = ("penalties", "dry", "top_n_sigma", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature")
SAMPLER_CHARS = {"e": "penalties", "d": "dry", "s": "top_n_sigma", "k": "top_k", "y": "typ_p", "p": "top_p",
                 "m": "min_p", "x": "xtc", "t": "temperature"}
DRY_SEQUENCE_BREAKERS = ("\n", ":", '"', "*")
_ALIASES = {**{n: n for n in SAMPLERS}, **{n.replace("_", "-"): n for n in SAMPLERS},
            **{n.replace("_", ""): n for n in SAMPLERS}, "nucleus": "top_p", "temp": "temperature", "typ": "typ_p"}
_UNSUPPORTED = {"infill", "adaptive_p", "adaptive-p", "adaptivep"}


def samplers_from_names(names, where: str = "samplers") -> tuple[str, ...]:
    """llama.cpp's sampler names and aliases (top_k, top-k, topk, nucleus, temp, typ; any case) → canonical names;
    an unknown name is a UserError (llama.cpp warns and drops it)."""
    out = []
    for name in names:
        key = str(name).lower()
        if key in _UNSUPPORTED:
            raise UserError(f"{where}: the {name!r} sampler is not supported")
        if key not in _ALIASES:
            raise UserError(f"{where}: unknown sampler {name!r} (known: {', '.join(SAMPLERS)})")
        out.append(_ALIASES[key])
    return tuple(out)


def samplers_from_chars(chars: str, where: str = "samplers") -> tuple[str, ...]:
    """llama.cpp's one-letter sequence (--sampler-seq, e.g. the default "edskypmxt")."""
    unknown = sorted(set(chars) - set(SAMPLER_CHARS))
    if unknown:
        raise UserError(f"{where}: unknown sampler letter(s) {''.join(unknown)!r} (known: {''.join(SAMPLER_CHARS)})")
    return tuple(SAMPLER_CHARS[c] for c in chars)


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
    typ_p: float = 1.0
    top_n_sigma: float = -1.0
    xtc_probability: float = 0.0
    xtc_threshold: float = 0.1
    dry_multiplier: float = 0.0
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_penalty_last_n: int = 64
    dry_sequence_breakers: tuple[str, ...] = DRY_SEQUENCE_BREAKERS  # () = none
    mirostat: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    samplers: tuple[str, ...] = SAMPLERS  # the chain's order (names of SAMPLERS, repeats allowed)

    def __post_init__(self):
        for name in RANGES:
            check(name, getattr(self, name))
        self.dry_sequence_breakers = tuple(self.dry_sequence_breakers)
        for b in self.dry_sequence_breakers:
            if not isinstance(b, str) or not b:
                raise UserError(f"dry_sequence_breakers must be non-empty strings, got {b!r}")
        self.samplers = tuple(self.samplers)
        unknown = [s for s in self.samplers if s not in SAMPLERS]
        if unknown:
            raise UserError(f"samplers: unknown sampler {unknown[0]!r} (known: {', '.join(SAMPLERS)})")

    @property
    def dry_enabled(self) -> bool:
        """llama.cpp's DRY is a no-op unless multiplier != 0, base >= 1 and penalty_last_n != 0."""
        return self.dry_multiplier != 0.0 and self.dry_base >= 1.0 and self.dry_penalty_last_n != 0

    @property
    def penalizes(self) -> bool:
        """Whether the penalties sampler does anything (llama.cpp's is_disabled, negated)."""
        return self.repeat_last_n != 0 and (self.repeat_penalty != 1.0 or self.frequency_penalty != 0.0
                                            or self.presence_penalty != 0.0)


class Sampler:
    """One generation's sampler: its random generator, mirostat's mu and DRY's sequence breakers (tokenized with
    `tokenizer`, which DRY with breakers needs) live as long as it does."""

    def __init__(self, params: SamplingParams, tokenizer=None):
        self.params = params
        seed = params.seed if params.seed is not None and params.seed >= 0 else random.SystemRandom().randrange(2**32)
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.mu = _finite(2.0 * params.mirostat_tau)
        self.breakers: dict[int, list[tuple[int, ...]]] = {}
        if params.mirostat == 0 and params.dry_enabled and "dry" in params.samplers and params.dry_sequence_breakers:
            if tokenizer is None:
                raise ValueError("DRY sequence breakers need the model's tokenizer")
            self.breakers = dry_breakers(tokenizer, params.dry_sequence_breakers)

    def sample(self, logits: np.ndarray, history: list[int], constraint=None) -> int:
        """One token; `constraint` (a runtime.grammar.GrammarConstraint) first masks the tokens it does not allow;
        `history` is the context so far (prompt and generated tokens, as llama-server feeds its sampler)."""
        logits = self._masked(logits, constraint)
        if self.params.mirostat:
            return self._mirostat(logits)
        ids, vals = self._chain(logits, history)
        return int(ids[0] if vals.size == 1 else ids[self.rng.choice(vals.size, p=_softmax(vals))])

    def candidates(self, logits: np.ndarray, history: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """The tokens the sampler sequence leaves to the draw and their logits (after temperature), as llama.cpp's
        chain leaves them before its dist sampler (without mirostat)."""
        return self._chain(self._masked(logits, None), history)

    def _masked(self, logits: np.ndarray, constraint) -> np.ndarray:
        p = self.params
        logits = np.asarray(logits, dtype=np.float64).reshape(-1).copy()
        _check_logits(logits)
        if constraint is not None:
            constraint.apply(logits)
        if p.logit_bias:
            apply_logit_bias(logits, p.logit_bias)
            if not np.isfinite(logits).any():
                raise UserError("logit_bias bans every token the model (and the grammar) allows here")
        return logits

    def _chain(self, logits: np.ndarray, history: list[int]) -> tuple[np.ndarray, np.ndarray]:
        p = self.params
        best = self._greedy(logits, history) if p.temp <= 0 else None
        if best is not None:
            return np.array([best]), logits[best:best + 1]
        ids, vals = _unmasked(logits)
        for name in p.samplers:
            if name == "temperature":
                if p.temp <= 0:  # llama.cpp keeps the first largest logit; the samplers after it cannot change that
                    best = int(np.argmax(vals))
                    return ids[best:best + 1], vals[best:best + 1]
                ids, vals = temperature(ids, vals, p.temp)
            elif name == "penalties":
                if p.penalizes and history:
                    vals = _on_vocab(ids, vals, logits.size, lambda full: apply_penalties(full, history, p))
            elif name == "dry":
                if p.dry_enabled and history:
                    vals = apply_dry(ids, vals, history, p, self.breakers)
            elif name == "top_n_sigma":
                ids, vals = top_n_sigma(ids, vals, p.top_n_sigma)
            elif name == "top_k":
                ids, vals = top_k(ids, vals, p.top_k)
            elif name == "typ_p":
                ids, vals = typical(ids, vals, p.typ_p)
            elif name == "top_p":
                ids, vals = top_p(ids, vals, p.top_p)
            elif name == "min_p":
                ids, vals = min_p(ids, vals, p.min_p)
            elif name == "xtc":
                ids, vals = xtc(ids, vals, p.xtc_probability, p.xtc_threshold, self.rng)
        return ids, vals

    def _greedy(self, logits: np.ndarray, history: list[int]) -> int | None:
        """What the chain leaves at temperature 0 (the first largest logit), in one pass over the vocabulary instead of
        the samplers' sorts, when it is sure to be that: the largest logit is unique and every sampler before the
        first temperature keeps it (top-n-sigma, top-k, top-p, min-p) or is off. None: run the chain."""
        p = self.params
        for name in p.samplers:
            if name == "temperature":
                best = int(np.argmax(logits))
                return best if np.count_nonzero(logits == logits[best]) == 1 else None
            if ((name == "penalties" and p.penalizes and history) or (name == "dry" and p.dry_enabled and history)
                    or (name == "typ_p" and p.typ_p < 1.0)
                    or (name == "xtc" and p.xtc_probability > 0.0 and p.xtc_threshold <= 0.5)):
                return None
        return None

    def _mirostat(self, logits: np.ndarray) -> int:
        """llama.cpp's mirostat chain (after the logit bias): temperature, then mirostat 1 (100 tokens for its Zipf
        estimate) or 2; mu moves towards the target surprise tau by eta times the error."""
        p = self.params
        ids, vals = _unmasked(logits)
        if p.temp <= 0:
            ids, vals = ids[[np.argmax(vals)]], vals[[np.argmax(vals)]]
        else:
            ids, vals = temperature(ids, vals, p.temp)
        if p.mirostat == 1:
            ids, vals = mirostat_v1(ids, vals, self.mu, logits.size)
        else:
            ids, vals = mirostat_v2(ids, vals, self.mu)
        logp = _log_softmax(vals)
        pick = int(self.rng.choice(vals.size, p=np.exp(logp)))
        self.mu = mirostat_mu(self.mu, float(logp[pick]), p.mirostat_tau, p.mirostat_eta)
        return int(ids[pick])


# -- the samplers: each takes the candidates (token ids and their logits, masked tokens already gone) and returns
# the ones it keeps, as llama.cpp's sampler of the same name does with its llama_token_data_array ------------------
def _unmasked(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The candidates: every token not masked (-inf), with its logit."""
    allowed = logits > -np.inf
    if allowed.all():
        return np.arange(logits.size), logits
    ids = np.flatnonzero(allowed)
    return ids, logits[ids]


def _sorted(ids: np.ndarray, vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-vals, kind="stable")
    return ids[order], vals[order]


def _on_vocab(ids: np.ndarray, vals: np.ndarray, n_vocab: int, fn) -> np.ndarray:
    """Run `fn` (in place on a whole-vocabulary array, as apply_penalties) on the candidates' logits."""
    if ids.size == n_vocab and np.array_equal(ids, np.arange(n_vocab)):  # none removed or moved yet
        full = vals.copy()
        fn(full)
        return full
    full = np.full(n_vocab, -np.inf)
    full[ids] = vals
    fn(full)
    return full[ids]


def temperature(ids, vals, temp: float):
    """logits / temp (temp > 0); where that overflows (a subnormal temp), the limit: the largest logits stay, the
    others leave (their (logit - max) / temp is -inf)."""
    with np.errstate(over="ignore", divide="ignore"):
        out = vals / temp
    if np.isfinite(out).all():
        return ids, out
    with np.errstate(over="ignore", under="ignore"):
        out = (vals - vals.max()) / temp
    keep = out > -np.inf
    return ids[keep], out[keep]


def top_k(ids, vals, k: int):
    """The k largest, sorted (k <= 0: all)."""
    if k <= 0:
        return ids, vals
    if k < vals.size:
        keep = np.sort(np.argpartition(-vals, k - 1)[:k])  # ties keep their order
        ids, vals = ids[keep], vals[keep]
    return _sorted(ids, vals)


def top_p(ids, vals, p: float):
    """The most probable tokens whose probabilities first sum to >= p (p >= 1: all)."""
    if p >= 1.0:
        return ids, vals
    ids, vals = _sorted(ids, vals)
    cut = int(np.searchsorted(np.cumsum(_softmax(vals)), p)) + 1
    return ids[:cut], vals[:cut]


def min_p(ids, vals, p: float):
    """The tokens with probability >= p times the largest (logit >= max + log p; p <= 0: all)."""
    if p <= 0.0:
        return ids, vals
    keep = vals >= vals.max() + math.log(p)
    return ids[keep], vals[keep]


def typical(ids, vals, p: float):
    """Locally typical sampling: the tokens whose surprise (-log prob) is nearest the distribution's entropy, in that
    order, until their probabilities sum to > p (p >= 1: all)."""
    if p >= 1.0 or vals.size == 0:
        return ids, vals
    ids, vals = _sorted(ids, vals)
    logp = _log_softmax(vals)
    probs = np.exp(logp)
    entropy = -float(np.sum(probs * logp))
    order = np.argsort(np.abs(-logp - entropy), kind="stable")
    cut = min(int(np.searchsorted(np.cumsum(probs[order]), p, side="right")) + 1, vals.size)
    keep = order[:cut]
    return ids[keep], vals[keep]


def top_n_sigma(ids, vals, n: float):
    """The tokens whose logit is within n standard deviations (of all candidates' logits) of the largest
    (n <= 0: all)."""
    if n <= 0.0 or vals.size <= 1:
        return ids, vals
    keep = vals >= vals.max() - n * float(np.std(vals))
    return ids[keep], vals[keep]


def xtc(ids, vals, probability: float, threshold: float, rng):
    """Exclude Top Choices: with chance `probability`, every token with probability >= threshold but the least
    probable of them is removed (off when probability is 0 or threshold > 0.5)."""
    if probability <= 0.0 or threshold > 0.5 or vals.size < 2:
        return ids, vals
    if rng.random() > probability:
        return ids, vals
    ids, vals = _sorted(ids, vals)
    above = _softmax(vals) >= threshold
    last = int(np.argmin(above)) - 1 if not above.all() else vals.size - 1  # the last of the leading run
    if last > 0:
        return ids[last:], vals[last:]
    return ids, vals


def mirostat_v1(ids, vals, mu: float, n_vocab: int, m: int = 100):
    """Mirostat 1: estimate the Zipf exponent s from the m most probable tokens, keep the k most probable with
    k = (e * 2^mu / (1 - N^-e))^(1/s), e = s - 1, N the vocabulary size (computed in log space; at least 1)."""
    head = top_k(ids, vals, m)[1]
    if head.size < 2:
        return top_k(ids, vals, 1)
    i = np.arange(head.size - 1, dtype=np.float64)
    t = np.log((i + 2) / (i + 1))
    b = head[:-1] - head[1:]  # log(p_i / p_i+1)
    s_hat = float(np.sum(t * b) / np.sum(t * t))
    eps = s_hat - 1.0
    ln_n = math.log(n_vocab) if n_vocab > 1 else 0.0
    if ln_n == 0.0:
        return top_k(ids, vals, 1)
    ratio = 1.0 / ln_n if abs(eps) < 1e-12 else eps / -math.expm1(-eps * ln_n)
    log_num = mu * math.log(2.0) + math.log(ratio)
    if s_hat > 0:
        log_k = log_num / s_hat
        k = vals.size if log_k >= math.log(vals.size) else int(math.exp(log_k))
    else:  # a flat head: k is 0 or infinite
        k = vals.size if log_num > 0 else 1
    return top_k(ids, vals, max(k, 1))


def mirostat_v2(ids, vals, mu: float):
    """Mirostat 2: the most probable tokens up to the first whose surprise -log2 p exceeds mu (at least one)."""
    keep = -_log_softmax(vals) / math.log(2.0) <= mu  # in sorted order, the tokens before the first one over mu
    if not keep.any():
        return top_k(ids, vals, 1)
    return _sorted(ids[keep], vals[keep])


def mirostat_mu(mu: float, logp: float, tau: float, eta: float) -> float:
    """mu after drawing a token of log-probability `logp` (among the kept candidates): mu - eta * (surprise - tau),
    kept finite."""
    return _finite(mu - eta * (-logp / math.log(2.0) - tau))


def _finite(x: float) -> float:
    return float(np.clip(x, -_FLOAT_MAX, _FLOAT_MAX))


# -- DRY ("don't repeat yourself", after koboldcpp's, as llama.cpp's) -----------------------------------------------
_DRY_MAX_CHARS, _DRY_MAX_TAIL = 40, 20
_BREAKER_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def dry_breakers(tokenizer, breakers: tuple[str, ...]) -> dict[int, list[tuple[int, ...]]]:
    """Sequence breakers as llama.cpp processes them: token id → the tails that, after it, complete a breaker. A
    token whose text contains a breaker has the empty tail (it breaks alone); a token whose text ends with a
    breaker's beginning has the tokens of the breaker's rest (at most 20). Breakers are cut to 40 bytes. Cached per
    tokenizer."""
    per_tok = _BREAKER_CACHE.setdefault(tokenizer, {})
    if breakers in per_tok:
        return per_tok[breakers]
    words = [tokenizer.decode_bytes([t]) for t in range(tokenizer.n_vocab)]
    out: dict[int, list[tuple[int, ...]]] = {}
    for breaker in breakers:
        brk = breaker.encode("utf-8")[:_DRY_MAX_CHARS]
        for tid, word in enumerate(words):
            if brk in word:
                out.setdefault(tid, []).append(())
                continue
            pos = word.find(brk[:1])
            while pos >= 0:
                rest = len(word) - pos
                if rest < len(brk) and word[pos:] == brk[:rest]:
                    tail = brk[rest:].decode("utf-8", "replace")
                    seq = tuple(tokenizer.encode(tail, add_bos=False, parse_special=False,
                                                 add_eos=False)[:_DRY_MAX_TAIL])
                    tails = out.setdefault(tid, [])
                    if seq not in tails:
                        tails.append(seq)
                pos = word.find(brk[:1], pos + 1)
    per_tok[breakers] = out
    return out


def dry_repeats(history: list[int], p: SamplingParams, breakers: dict[int, list[tuple[int, ...]]]) -> dict[int, int]:
    """token → the length of the longest repeat its emission would extend (only those >= dry_allowed_length), over
    the last dry_penalty_last_n tokens of `history`, a repeat not reaching back past the last sequence breaker."""
    last = list(history[-p.dry_penalty_last_n:])
    n = len(last)
    if n <= p.dry_allowed_length:
        return {}
    rev = last[::-1]  # rev[i]: i tokens from the end
    rep_limit = n
    for i, token in enumerate(rev):
        tails = breakers.get(token)
        if not tails:
            continue
        longest = max((len(t) for t in tails if len(t) <= i and all(t[j] == rev[i - j - 1] for j in range(len(t)))),
                      default=-1)
        if longest >= 0:
            rep_limit = i - longest
            break
    if rep_limit < p.dry_allowed_length:
        return {}
    z = _z_function(rev)  # z[k]: how many tokens before the one k from the end repeat the context's end
    out: dict[int, int] = {}
    for k in range(1, n):
        length = min(z[k], rep_limit)
        if length >= p.dry_allowed_length:
            token = rev[k - 1]  # the token after the repeat
            if out.get(token, -1) < length:
                out[token] = length
    return out


def apply_dry(ids, vals, history, p: SamplingParams, breakers) -> np.ndarray:
    """DRY: each candidate that would extend a repeat of length L >= dry_allowed_length loses
    dry_multiplier * dry_base^(L - dry_allowed_length) (the exponent capped so the power stays a finite float32, as
    llama.cpp does; the result clamped to finite floats), unless it is a one-token sequence breaker."""
    repeats = dry_repeats(history, p, breakers)
    if not repeats:
        return vals
    max_exp = int(88.7228391 / math.log(p.dry_base)) if p.dry_base > 1.000001 else 0
    vals = vals.copy()
    for j in np.flatnonzero(np.isin(ids, np.fromiter(repeats, dtype=ids.dtype))).tolist():
        tid = int(ids[j])
        length = repeats[tid]
        if () in breakers.get(tid, ()):
            continue
        e = length - p.dry_allowed_length
        if max_exp > 0:
            e = min(e, max_exp)
        with np.errstate(over="ignore"):
            penalty = min(p.dry_multiplier * np.power(np.float64(p.dry_base), e), _FLOAT_MAX)
        vals[j] = max(vals[j] - penalty, -_FLOAT_MAX)
    return vals


def _z_function(seq: list[int]) -> list[int]:
    """z[k]: the length of the longest common prefix of seq and seq[k:] (z[0] = 0)."""
    n = len(seq)
    z = [0] * n
    lt = rt = 0
    for k in range(1, n):
        if k < rt:
            z[k] = min(rt - k, z[k - lt])
        while k + z[k] < n and seq[z[k]] == seq[k + z[k]]:
            z[k] += 1
        if k + z[k] > rt:
            lt, rt = k, k + z[k]
    return z


def _check_logits(logits: np.ndarray) -> None:
    """-inf marks a masked token; NaN, +inf or nothing left to draw from is the model's fault."""
    if np.isfinite(logits.max()):  # one pass: the maximum is NaN if any logit is, +inf if any is, else finite
        return
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


def _log_softmax(x: np.ndarray) -> np.ndarray:
    """log softmax(x), finite wherever x is (no log of an underflowed probability)."""
    shifted = x - x.max()
    with np.errstate(under="ignore"):
        return shifted - math.log(float(np.sum(np.exp(shifted))))


def _softmax(x: np.ndarray, temp: float = 1.0) -> np.ndarray:
    """softmax(x / temp), total for any temp > 0 and finite max(x): the scaled differences are <= 0, so exp never
    overflows; where they underflow to -inf (a subnormal temp) only the largest logits keep any probability."""
    with np.errstate(over="ignore", under="ignore"):
        e = np.exp((x - x.max()) / temp)
    return e / e.sum()
