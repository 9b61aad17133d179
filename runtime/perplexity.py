"""Perplexity and KL divergence of a model over a text, as llama.cpp's llama-perplexity computes them.

The text is tokenized whole (with BOS when the model adds one) and cut into chunks of n_ctx tokens; each chunk is
evaluated from an empty context with its first token replaced by BOS (when the model adds BOS), and only the second
half is scored: the logits at positions first = n_ctx/2 .. n_ctx-2 predict the tokens after them. The perplexity is
exp of the mean negative log-likelihood over every scored token, its uncertainty llama.cpp's
ppl * sqrt(var(nll) / (count - 1)).

For a KL divergence the base model's log-probabilities of those positions are saved in llama.cpp's file format
(read by llama-perplexity --kl-divergence, and its files by us):

    "_logits_"  int32 n_ctx  int32 n_vocab  int32 n_chunk  int32 tokens[n_chunk * n_ctx]
    then per chunk, per scored position, a row of 2*((n_vocab+1)/2) + 4 uint16:
        float32 scale, float32 min_log_prob, uint16 q[n_vocab] (+ one uint16 of padding when n_vocab is odd)
    where log p[i] = scale * q[i] + min_log_prob over the 16 nats below the most likely token (q = 0 below).

The arithmetic follows llama.cpp's: float32 where it computes in float, float64 where it accumulates in double.
Nothing here prints: the callers (the CLI) get numbers and the formatted lines."""
from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from common.errors import UserError

LOGITS_MAGIC = b"_logits_"
LOG_PROB_SPAN = np.float32(16.0)     # nats below the top log-probability kept in the compact rows
Q_LEVELS = np.float32(65535.0)
HEADER_INTS = 3                      # n_ctx, n_vocab, n_chunk after the magic
MIN_CTX = 4                          # the smallest context that scores at least one token per chunk
F32 = np.float32


# -- chunking -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Chunks:
    """n_chunk chunks of n_ctx tokens; in each, the logits at first..n_ctx-2 are scored."""
    n_ctx: int
    n_chunk: int

    @property
    def first(self) -> int:
        return self.n_ctx // 2

    @property
    def n_scored(self) -> int:
        return self.n_ctx - 1 - self.first

    def chunk(self, tokens, i: int) -> list[int]:
        return [int(t) for t in tokens[i * self.n_ctx:(i + 1) * self.n_ctx]]

    def targets(self, chunk: list[int]) -> np.ndarray:
        """The tokens the scored logits predict."""
        return np.asarray(chunk[self.first + 1:], dtype=np.int64)


def plan_chunks(n_tokens: int, n_ctx: int, max_chunks: int = -1) -> Chunks:
    """llama-perplexity's chunking: n_tokens // n_ctx chunks (at most max_chunks when that is positive), refused
    below two chunks' worth of tokens."""
    if n_ctx < MIN_CTX:
        raise UserError(f"-c must be at least {MIN_CTX} to score a token in each chunk, got {n_ctx}")
    if n_tokens < 2 * n_ctx:
        raise UserError(f"you need at least {2 * n_ctx} tokens to evaluate perplexity with a context of {n_ctx}; "
                        f"the text tokenizes to only {n_tokens} tokens")
    n_chunk = n_tokens // n_ctx
    return Chunks(n_ctx, min(max_chunks, n_chunk) if max_chunks > 0 else n_chunk)


def tokenize_text(tokenizer, text: str) -> list[int]:
    """The whole text as llama-perplexity tokenizes it: the model's BOS, special tokens read as plain text."""
    if tokenizer.add_eos:
        raise UserError("this model's tokenizer appends EOS to every text; perplexity is not defined for it here "
                        "(llama-perplexity refuses it too)")
    return tokenizer.encode(text, add_bos=None, parse_special=False)


def chunk_bos(tokenizer) -> int | None:
    """The token put first in every chunk: BOS when the model adds one, else None (the chunk is left as it is)."""
    return tokenizer.bos_id if tokenizer.add_bos else None


# -- evaluation ---------------------------------------------------------------------------------------------------

def _with_bos(chunk: list[int], bos: int | None) -> list[int]:
    ids = list(chunk)
    if bos is not None:
        ids[0] = bos
    return ids


def chunk_logits(session, chunk: list[int], bos: int | None, first: int) -> np.ndarray:
    """The logits of positions first..len(chunk)-2, the chunk evaluated from an empty context in batches of the
    session's n_batch, its first token replaced by `bos` unless that is None; as llama-perplexity, the positions
    before `first` compute no logits."""
    ids = _with_bos(chunk, bos)
    session.reset()
    return session.eval(ids, all_logits=True, skip_logits=first)[:len(ids) - 1 - first]


def chunks_per_pass(session, chunks: Chunks) -> int:
    """llama-perplexity's n_seq: as many whole chunks as the session's n_batch holds, at least one."""
    return max(1, session.n_batch // chunks.n_ctx)


def group_logits(session, slots: list, group: list[list[int]], bos: int | None, first: int) -> list[np.ndarray]:
    """chunk_logits of each chunk of the group, all in one pass (each in its own slot: the session's first) when
    there are several: the same bits."""
    if len(group) == 1:
        return [chunk_logits(slots[0], group[0], bos, first)]
    ids = [_with_bos(chunk, bos) for chunk in group]
    outs = session.eval_slots(slots[:len(group)], ids, first)
    return [out[:len(chunk) - 1 - first] for out, chunk in zip(outs, ids)]


# -- per-token arithmetic (llama.cpp's log_softmax variants) ------------------------------------------------------

def _exp_sums(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the largest logit (float32) and the sum of exp(logit - max) (float32 terms, float64 sum)."""
    top = logits.max(axis=1)
    return top, np.exp(logits - top[:, None]).sum(axis=1, dtype=np.float64)


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log softmax(logits)[target] per row (float64), as llama-perplexity scores a token."""
    top, sums = _exp_sums(logits)
    picked = logits[np.arange(len(targets)), targets]
    return -((picked - top).astype(np.float64) - np.log(sums))


def row_width(n_vocab: int) -> int:
    """uint16 values per compact row: scale and minimum (two float32) and n_vocab values padded to even."""
    return 2 * ((n_vocab + 1) // 2) + 4


def compact_log_probs(logits: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows of the base-logits file for these logits, and each row's negative log-likelihood of its target."""
    n, n_vocab = logits.shape
    top, sums = _exp_sums(logits)
    low = np.maximum(logits.min(axis=1), top - LOG_PROB_SPAN)
    log_sum = np.log(sums).astype(F32)
    min_log_prob = (low - top) - log_sum
    scale = (top - low) / Q_LEVELS
    q = np.zeros((n, n_vocab), dtype=np.uint16)
    live = scale != 0
    if live.any():
        inv = (F32(1) / scale[live])[:, None]
        shifted = logits[live] - low[live][:, None]
        q[live] = np.where(shifted > 0, np.rint(inv * shifted), 0).astype(np.uint16)
    rows = np.zeros((n, row_width(n_vocab)), dtype=np.uint16)
    rows[:, 0:2] = scale.astype(F32).view(np.uint16).reshape(n, 2)
    rows[:, 2:4] = min_log_prob.astype(F32).view(np.uint16).reshape(n, 2)
    rows[:, 4:4 + n_vocab] = q
    nll = (top + log_sum) - logits[np.arange(n), targets]
    return rows, nll.astype(np.float64)


def expand_log_probs(rows: np.ndarray, n_vocab: int) -> np.ndarray:
    """The float32 log-probabilities a block of compact rows stands for."""
    scale = np.ascontiguousarray(rows[:, 0:2]).view(F32)
    min_log_prob = np.ascontiguousarray(rows[:, 2:4]).view(F32)
    return scale * rows[:, 4:4 + n_vocab].astype(F32) + min_log_prob


@dataclass
class TokenComparison:
    """Per scored token: the model's and the base's negative log-likelihoods of the target (float32 as llama.cpp
    has them), the KL divergence of the model from the base, p - p_base of the target, and whether both rank the same
    token first."""
    nll: np.ndarray
    nll_base: np.ndarray
    kld: np.ndarray
    p_diff: np.ndarray
    same_top: np.ndarray


def compare_with_base(logits: np.ndarray, base_rows: np.ndarray, targets: np.ndarray) -> TokenComparison:
    """llama-perplexity --kl-divergence's per-token numbers: KL(base || model) summed over the tokens the base gives
    more than e^-16, the target's probabilities, the top tokens."""
    n, n_vocab = logits.shape
    top, sums = _exp_sums(logits)
    log_norm = top + np.log(sums).astype(F32)
    idx = np.arange(n)
    nll = log_norm - logits[idx, targets]
    base = expand_log_probs(base_rows, n_vocab)
    nll_base = -base[idx, targets]
    terms = np.exp(base) * ((base - logits) + log_norm[:, None])
    kld = np.where(base > -LOG_PROB_SPAN, terms, F32(0)).sum(axis=1, dtype=np.float64)
    p_diff = np.exp(-nll) - np.exp(-nll_base)
    same_top = logits.argmax(axis=1) == base.argmax(axis=1)
    return TokenComparison(nll, nll_base, kld, p_diff, same_top)


# -- statistics ---------------------------------------------------------------------------------------------------

def mean_and_uncertainty(total: float, total2: float, count: int) -> tuple[float, float]:
    """Mean and its standard error from a sum and a sum of squares (the error 0 up to 10 values), as llama.cpp."""
    if count < 1:
        return 0.0, 0.0
    mean = total / count
    var = total2 / count - mean * mean
    return mean, (math.sqrt(var / (count - 1)) if var > 0 and count > 10 else 0.0)


def covariance(total_a: float, total_b: float, total_ab: float, count: int) -> float:
    """Covariance of two means from their sums (0 under 10 values), as llama.cpp."""
    if count < 10:
        return 0.0
    return (total_ab / count - (total_a / count) * (total_b / count)) / (count - 1)


def percentile(sorted_values: np.ndarray, fraction: float) -> float:
    """llama.cpp's interpolated percentile of sorted float32 values, in its float32 arithmetic."""
    if fraction <= 0:
        return float(sorted_values[0])
    if fraction >= 1:
        return float(sorted_values[-1])
    p = F32(fraction) * F32(len(sorted_values) - 1)
    ip = int(p)
    p = F32(p - F32(ip))
    upper = sorted_values[min(ip + 1, len(sorted_values) - 1)]
    return float((F32(1) - p) * sorted_values[ip] + p * upper)


def median(sorted_values: np.ndarray) -> float:
    n = len(sorted_values)
    if n % 2:
        return float(sorted_values[n // 2])
    return float(F32(0.5) * (sorted_values[n // 2] + sorted_values[n // 2 - 1]))


@dataclass
class PerplexityStats:
    """Running sums of the scored tokens' negative log-likelihoods."""
    nll: float = 0.0
    nll2: float = 0.0
    count: int = 0

    def add(self, nll: np.ndarray) -> None:
        self.nll += float(nll.sum())
        self.nll2 += float((nll * nll).sum())
        self.count += len(nll)

    @property
    def ppl(self) -> float:
        return math.exp(self.nll / self.count)

    @property
    def uncertainty(self) -> float | None:
        """ppl's standard error, None when the variance is not positive (llama.cpp then prints an error)."""
        mean = self.nll / self.count
        var = self.nll2 / self.count - mean * mean
        if var <= 0 or self.count < 2:
            return None
        return math.sqrt(var / (self.count - 1)) * self.ppl


def chunk_estimate(index: int, stats: PerplexityStats) -> str:
    """The running estimate after chunk `index` (1-based) as llama-perplexity prints it: [3]12.3456,"""
    return f"[{index}]{stats.ppl:.4f},"


def final_estimate(stats: PerplexityStats) -> str:
    err = stats.uncertainty
    if err is None:
        return f"Final estimate: PPL = {stats.ppl:.4f} (unexpected negative standard deviation of log(prob))"
    return f"Final estimate: PPL = {stats.ppl:.4f} +/- {err:.5f}"


KLD_HEADER = ("chunk             PPL               ln(PPL(Q)/PPL(base))          KL Divergence              "
              "Δp RMS            Same top p")
MIN_KLD_SUMMARY = 100   # llama.cpp prints no summary statistics over fewer scored tokens
KLD_PERCENTILES = (0.999, 0.990, 0.950, 0.900)
KLD_LOW_PERCENTILES = (0.100, 0.050, 0.010, 0.001)
P_DIFF_PERCENTILES = (0.999, 0.990, 0.950, 0.900, 0.750)
P_DIFF_LOW_PERCENTILES = (0.250, 0.100, 0.050, 0.010, 0.001)


@dataclass
class KLDStats:
    """llama.cpp's kl_divergence_result: sums over the scored tokens, plus every token's KLD and Δp for the
    percentiles."""
    sum_nll: float = 0.0
    sum_nll2: float = 0.0
    sum_nll_base: float = 0.0
    sum_nll_base2: float = 0.0
    sum_nll_nll_base: float = 0.0
    sum_kld: float = 0.0
    sum_kld2: float = 0.0
    sum_p_diff: float = 0.0
    sum_p_diff2: float = 0.0
    sum_p_diff4: float = 0.0
    max_p_diff: float = 0.0
    n_same_top: int = 0
    count: int = 0
    kld_values: list = field(default_factory=list)
    p_diff_values: list = field(default_factory=list)

    def add(self, c: TokenComparison) -> None:
        """llama.cpp's float32 products (nll*nll, p_diff*p_diff), float64 sums."""
        self.sum_nll += float(c.nll.sum(dtype=np.float64))
        self.sum_nll2 += float((c.nll * c.nll).sum(dtype=np.float64))
        self.sum_nll_base += float(c.nll_base.sum(dtype=np.float64))
        self.sum_nll_base2 += float((c.nll_base * c.nll_base).sum(dtype=np.float64))
        self.sum_nll_nll_base += float((c.nll * c.nll_base).sum(dtype=np.float64))
        self.sum_kld += float(c.kld.sum())
        self.sum_kld2 += float((c.kld * c.kld).sum())
        p_diff2 = (c.p_diff * c.p_diff).astype(np.float64)
        self.sum_p_diff += float(c.p_diff.sum(dtype=np.float64))
        self.sum_p_diff2 += float(p_diff2.sum())
        self.sum_p_diff4 += float((p_diff2 * p_diff2).sum())
        self.max_p_diff = max(self.max_p_diff, float(np.abs(c.p_diff).max(initial=0.0)))
        self.n_same_top += int(c.same_top.sum())
        self.count += len(c.nll)
        self.kld_values.append(c.kld.astype(F32))
        self.p_diff_values.append(c.p_diff.astype(F32))

    # the quantities llama.cpp reports, each (value, uncertainty)
    def log_ppl(self) -> tuple[float, float]:
        return mean_and_uncertainty(self.sum_nll, self.sum_nll2, self.count)

    def log_ppl_base(self) -> tuple[float, float]:
        return mean_and_uncertainty(self.sum_nll_base, self.sum_nll_base2, self.count)

    def log_ppl_cov(self) -> float:
        return covariance(self.sum_nll, self.sum_nll_base, self.sum_nll_nll_base, self.count)

    def ppl(self) -> tuple[float, float]:
        mean, err = self.log_ppl()
        return math.exp(mean), math.exp(mean) * err

    def ppl_base(self) -> tuple[float, float]:
        mean, err = self.log_ppl_base()
        return math.exp(mean), math.exp(mean) * err

    def log_ppl_ratio(self) -> tuple[float, float]:
        (a, da), (b, db) = self.log_ppl(), self.log_ppl_base()
        return a - b, math.sqrt(max(0.0, da * da + db * db - 2.0 * self.log_ppl_cov()))

    def kld(self) -> tuple[float, float]:
        return mean_and_uncertainty(self.sum_kld, self.sum_kld2, self.count)

    def p_diff(self) -> tuple[float, float]:
        return mean_and_uncertainty(self.sum_p_diff, self.sum_p_diff2, self.count)

    def p_diff_rms(self) -> tuple[float, float]:
        mse, err = mean_and_uncertainty(self.sum_p_diff2, self.sum_p_diff4, self.count)
        rms = math.sqrt(mse)
        return rms, (0.5 / rms * err if rms > 0 else 0.0)

    def same_top(self) -> tuple[float, float]:
        share = self.n_same_top / self.count
        return share, (math.sqrt(share * (1 - share) / (self.count - 1)) if self.count > 1 else 0.0)

    def sorted_kld(self) -> np.ndarray:
        return np.sort(np.concatenate(self.kld_values))

    def sorted_p_diff(self) -> np.ndarray:
        return np.sort(np.concatenate(self.p_diff_values))


def kld_chunk_row(index: int, s: KLDStats) -> str:
    """One row under KLD_HEADER: the running figures after chunk `index` (1-based)."""
    (ppl, dppl), (ratio, dratio), (kld, dkld) = s.ppl(), s.log_ppl_ratio(), s.kld()
    (rms, drms), (top, dtop) = s.p_diff_rms(), s.same_top()
    return (f"{index:4d}    {ppl:9.4f} ± {dppl:9.4f}    {ratio:10.5f} ± {dratio:10.5f}    {kld:10.5f} ± {dkld:10.5f}"
            f"    {100 * rms:6.3f} ± {100 * drms:6.3f} %    {100 * top:6.3f} ± {100 * dtop:6.3f} %")


def _percent_label(fraction: float) -> str:
    return f"{100 * fraction:4.1f}%"


def kld_summary(s: KLDStats) -> list[str]:
    """llama.cpp's closing statistics (perplexities, KL divergence, token probabilities); none under 100 tokens."""
    if s.count < MIN_KLD_SUMMARY:
        return []
    (ppl, dppl), (base, dbase) = s.ppl(), s.ppl_base()
    dlp, dlb, cov = s.log_ppl()[1], s.log_ppl_base()[1], s.log_ppl_cov()
    ratio, dratio = s.log_ppl_ratio()
    cor = cov / (dlp * dlb) if dlp * dlb > 0 else 0.0
    diff_unc = math.sqrt(max(0.0, dppl * dppl + dbase * dbase - 2.0 * ppl * base * cov))
    lines = ["====== Perplexity statistics ======",
             f"Mean PPL(Q)                   : {ppl:10.6f} ± {dppl:10.6f}",
             f"Mean PPL(base)                : {base:10.6f} ± {dbase:10.6f}",
             f"Cor(ln(PPL(Q)), ln(PPL(base))): {100 * cor:6.2f}%",
             f"Mean ln(PPL(Q)/PPL(base))     : {ratio:10.6f} ± {dratio:10.6f}",
             f"Mean PPL(Q)/PPL(base)         : {math.exp(ratio):10.6f} ± {math.exp(ratio) * dratio:10.6f}",
             f"Mean PPL(Q)-PPL(base)         : {ppl - base:10.6f} ± {diff_unc:10.6f}",
             ""]
    kv = s.sorted_kld()
    kld, dkld = s.kld()
    lines += ["====== KL divergence statistics ======", f"Mean    KLD: {kld:10.6f} ± {dkld:10.6f}"]
    lines += _spread("KLD", kv, KLD_PERCENTILES, KLD_LOW_PERCENTILES, lambda x: f"{x:10.6f}") + [""]
    pv = s.sorted_p_diff()
    dp, ddp = s.p_diff()
    lines += ["====== Token probability statistics ======", f"Mean    Δp: {100 * dp:6.3f} ± {100 * ddp:5.3f} %"]
    lines += _spread("Δp", pv, P_DIFF_PERCENTILES, P_DIFF_LOW_PERCENTILES, lambda x: f"{100 * x:6.3f}%")
    (rms, drms), (top, dtop) = s.p_diff_rms(), s.same_top()
    lines += [f"RMS Δp    : {100 * rms:6.3f} ± {100 * drms:5.3f} %",
              f"Same top p: {100 * top:6.3f} ± {100 * dtop:5.3f} %"]
    return lines


def _spread(name: str, v, high, low, fmt) -> list[str]:
    """A sorted distribution's maximum, upper percentiles, median, lower percentiles and minimum, as llama-perplexity
    prints them (`fmt` formats a value)."""
    return ([f"Maximum {name}: {fmt(float(v[-1]))}"]
            + [f"{_percent_label(f)}   {name}: {fmt(percentile(v, f))}" for f in high]
            + [f"Median  {name}: {fmt(median(v))}"]
            + [f"{_percent_label(f)}   {name}: {fmt(percentile(v, f))}" for f in low]
            + [f"Minimum {name}: {fmt(float(v[0]))}"])


# -- the base-logits file -----------------------------------------------------------------------------------------

class BaseLogitsWriter:
    """Writes llama.cpp's base-logits file under a temporary name beside `path`; commit() renames it into place,
    discard() removes it. Used as a context manager it commits on success and discards on any exception."""

    def __init__(self, path, chunks: Chunks, n_vocab: int, tokens) -> None:
        self.path = Path(path)
        self.width = row_width(n_vocab)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent or ".")
        self.tmp = Path(tmp)
        self.file = os.fdopen(fd, "wb")
        self.file.write(LOGITS_MAGIC)
        self.file.write(np.array([chunks.n_ctx, n_vocab, chunks.n_chunk], dtype="<i4").tobytes())
        self.file.write(np.asarray(tokens[:chunks.n_chunk * chunks.n_ctx], dtype="<i4").tobytes())

    def write_chunk(self, rows: np.ndarray) -> None:
        assert rows.dtype == np.uint16 and rows.shape[1] == self.width
        self.file.write(rows.astype("<u2").tobytes())

    def commit(self) -> None:
        self.file.close()
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "BaseLogitsWriter":
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()


@dataclass
class BaseLogits:
    """A base-logits file, memory-mapped: its chunking, vocabulary size, tokens and compact log-probability rows."""
    path: Path
    chunks: Chunks
    n_vocab: int
    tokens: np.ndarray
    rows: np.ndarray           # [n_chunk, n_scored, row_width] uint16

    @classmethod
    def open(cls, path) -> "BaseLogits":
        path = Path(path)
        if not path.is_file():
            raise UserError(f"base logits file {path} does not exist")
        size = path.stat().st_size
        head = len(LOGITS_MAGIC) + 4 * HEADER_INTS
        with open(path, "rb") as f:
            magic = f.read(len(LOGITS_MAGIC))
            ints = np.frombuffer(f.read(4 * HEADER_INTS), dtype="<i4")
        if magic != LOGITS_MAGIC or len(ints) != HEADER_INTS:
            raise UserError(f"{path} does not look like a file of base log-probabilities (no {LOGITS_MAGIC.decode()} "
                            "header); write one with --kl-divergence-base FILE and no --kl-divergence")
        n_ctx, n_vocab, n_chunk = (int(v) for v in ints)
        if n_ctx < MIN_CTX or n_vocab < 1 or n_chunk < 1:
            raise UserError(f"{path}: damaged header (n_ctx {n_ctx}, n_vocab {n_vocab}, n_chunk {n_chunk})")
        chunks = Chunks(n_ctx, n_chunk)
        rows_at = head + 4 * n_chunk * n_ctx
        expected = rows_at + 2 * n_chunk * chunks.n_scored * row_width(n_vocab)
        if size != expected:
            raise UserError(f"{path} has {size} bytes; its header (n_ctx {n_ctx}, n_vocab {n_vocab}, "
                            f"{n_chunk} chunks) needs {expected}: the file is truncated or damaged")
        tokens = np.memmap(path, dtype="<i4", mode="r", offset=head, shape=(n_chunk * n_ctx,))
        rows = np.memmap(path, dtype="<u2", mode="r", offset=rows_at,
                         shape=(n_chunk, chunks.n_scored, row_width(n_vocab)))
        return cls(path, chunks, n_vocab, tokens, rows)


# -- the two runs -------------------------------------------------------------------------------------------------

@dataclass
class ChunkDone:
    """Reported after each chunk: its 1-based index, of how many, and the seconds its pass took (a pass evaluates
    per_pass chunks together)."""
    index: int
    n_chunk: int
    seconds: float
    per_pass: int = 1


def perplexity(session, tokens: list[int], chunks: Chunks, save_base: BaseLogitsWriter | None = None,
               on_chunk: Callable[[ChunkDone, PerplexityStats], None] | None = None) -> PerplexityStats:
    """Score every chunk of `tokens` with the session's model, as many chunks per pass as its n_batch holds (each in
    a slot of its own); with `save_base`, also write the compact log-probabilities of the scored positions (the base
    of a later KL divergence)."""
    bos = chunk_bos(session.tokenizer)
    stats = PerplexityStats()
    n_seq = min(chunks_per_pass(session, chunks), chunks.n_chunk)
    slots = [session] + [session.new_slot() for _ in range(n_seq - 1)]
    for i0 in range(0, chunks.n_chunk, n_seq):
        t0 = time.perf_counter()
        group = [chunks.chunk(tokens, i) for i in range(i0, min(i0 + n_seq, chunks.n_chunk))]
        all_logits = group_logits(session, slots, group, bos, chunks.first)
        seconds = time.perf_counter() - t0
        for i, (chunk, logits) in enumerate(zip(group, all_logits), start=i0):
            targets = chunks.targets(chunk)
            if save_base is None:
                stats.add(token_nll(logits, targets))
            else:
                rows, nll = compact_log_probs(logits, targets)
                save_base.write_chunk(rows)
                stats.add(nll)
            if on_chunk is not None:
                on_chunk(ChunkDone(i + 1, chunks.n_chunk, seconds, len(group)), stats)
    return stats


def check_base_matches(base: BaseLogits, n_vocab: int) -> None:
    """A base file fits a model when their vocabularies have the same size (llama.cpp only warns; the rows would
    be misread)."""
    if base.n_vocab != n_vocab:
        raise UserError(f"{base.path} holds log-probabilities over {base.n_vocab} tokens; this model has "
                        f"{n_vocab}: the two models do not share a vocabulary")


def kl_divergence(session, base: BaseLogits, max_chunks: int = -1,
                  on_chunk: Callable[[ChunkDone, KLDStats], None] | None = None) -> KLDStats:
    """Compare the session's model with the base file's over the file's own tokens and chunks (the first
    max_chunks when that is positive)."""
    check_base_matches(base, session.model.hp.n_vocab)
    chunks = base.chunks
    n_chunk = min(max_chunks, chunks.n_chunk) if max_chunks > 0 else chunks.n_chunk
    bos = chunk_bos(session.tokenizer)
    stats = KLDStats()
    for i in range(n_chunk):
        t0 = time.perf_counter()
        chunk = chunks.chunk(base.tokens, i)
        logits = chunk_logits(session, chunk, bos, chunks.first)
        stats.add(compare_with_base(logits, np.asarray(base.rows[i]), chunks.targets(chunk)))
        if on_chunk is not None:
            on_chunk(ChunkDone(i + 1, n_chunk, time.perf_counter() - t0), stats)
    return stats
