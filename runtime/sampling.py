"""Token sampling in llama.cpp's default chain order: repetition penalty → top-k → top-p → min-p → temperature →
random draw. `temp <= 0` is greedy. A seed makes the draws reproducible."""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np


@dataclass
class SamplingParams:
    temp: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int = -1  # -1: random


class Sampler:
    def __init__(self, params: SamplingParams):
        self.params = params
        seed = params.seed if params.seed is not None and params.seed >= 0 else random.SystemRandom().randrange(2**32)
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def sample(self, logits: np.ndarray, history: list[int]) -> int:
        p = self.params
        logits = np.asarray(logits, dtype=np.float64).reshape(-1).copy()
        if p.repeat_penalty != 1.0 and p.repeat_last_n != 0 and history:
            recent = history[-p.repeat_last_n:] if p.repeat_last_n > 0 else history
            ids = np.unique(np.asarray(recent, dtype=np.int64))
            vals = logits[ids]
            logits[ids] = np.where(vals > 0, vals / p.repeat_penalty, vals * p.repeat_penalty)
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
        probs = _softmax(logits / p.temp)
        return int(ids[self.rng.choice(probs.size, p=probs)])


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()
