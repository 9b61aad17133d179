"""Embeddings as llama.cpp computes them for a decoder-only model: the hidden states after the output norm
(Transformer.hidden), pooled per sequence (llama_pooling_type: none, mean, cls, last) and normalized as
common_embd_normalize does (-1 none, 0 max-abs scaled to int16, 1 taxicab, 2 Euclidean, p > 2 p-norm).

The pooling a context uses when none is asked for is the model's `<arch>.pooling_type` key, else none (llama.cpp's
hparams.pooling_type default for a causal model; llama_context takes it when the context's is unspecified)."""
from __future__ import annotations

import numpy as np
from gguf import Keys, PoolingType

from runtime.generate import Session
from common.errors import DamagedModel, UserError

# the poolings `--pooling` names (llama.cpp's, without rank: a classifier head no decoder-only model here has)
POOLINGS = {"none": PoolingType.NONE, "mean": PoolingType.MEAN, "cls": PoolingType.CLS, "last": PoolingType.LAST}
DEFAULT_NORMALIZE = 2  # common_params.embd_normalize: Euclidean
_KNOWN = ", ".join(f"{int(p)} ({name})" for name, p in POOLINGS.items())


def pooling_type(session: Session, pooling: str | int | None) -> PoolingType:
    """The pooling asked for (a name, llama.cpp's enum value, or None / -1: unspecified), else the model's key, else
    none."""
    if pooling is None or pooling == -1:
        key = Keys.LLM.POOLING_TYPE.format(arch=session.model.hp.arch)
        value = session.model.gguf.value(key)
        if value is None:
            return PoolingType.NONE
        if value not in POOLINGS.values():
            raise UserError(f"{session.model.path.name}: {key} = {value!r} is not a pooling this runtime has "
                            f"({_KNOWN})")
        return PoolingType(value)
    if isinstance(pooling, str):
        if pooling not in POOLINGS:
            raise UserError(f"unknown pooling {pooling!r}; use one of: {', '.join(POOLINGS)}")
        return POOLINGS[pooling]
    if pooling not in POOLINGS.values():
        raise UserError(f"pooling_type must be one of {_KNOWN}, got {pooling!r}")
    return PoolingType(pooling)


def pool(hidden: np.ndarray, pooling: PoolingType) -> np.ndarray:
    """A sequence's hidden states [n, n_embd] pooled: [n_embd] (mean, first token, last token), or all of them."""
    if pooling == PoolingType.NONE:
        return hidden
    if pooling == PoolingType.MEAN:
        return hidden.mean(axis=0, dtype=np.float32)
    return hidden[0] if pooling == PoolingType.CLS else hidden[-1]


def normalize(v: np.ndarray, embd_norm: int) -> np.ndarray:
    """common_embd_normalize: v times 1 / its norm (summed in double; each element scaled in double, then rounded to
    float), unchanged for -1, zeros when the norm is 0."""
    x = np.asarray(v, dtype=np.float32)
    if embd_norm == -1:
        return x
    if embd_norm == 0:
        total = float(np.abs(x).max(initial=0.0)) / 32760.0
    elif embd_norm == 2:
        total = float(np.sqrt(np.sum((x * x).astype(np.float64))))  # float squares, summed in double
    else:
        total = float(np.sum(np.abs(x.astype(np.float64)) ** embd_norm) ** (1.0 / embd_norm))
    return (x.astype(np.float64) * (1.0 / total if total > 0.0 else 0.0)).astype(np.float32)


def check_tokens(session: Session, tokens: list[int]) -> None:
    hp = session.model.hp
    if not tokens:
        raise UserError("the input is empty (no tokens)")
    bad = [t for t in tokens if not 0 <= t < hp.n_vocab]
    if bad:
        raise UserError(f"token id {bad[0]} is outside the vocabulary (0..{hp.n_vocab - 1})")
    if len(tokens) > session.n_ctx:
        raise UserError(f"the input has {len(tokens)} tokens; the context holds {session.n_ctx}")


def hidden_states(session: Session, prompts: list[list[int]]) -> list[np.ndarray]:
    """Every token's hidden state after the output norm ([n, n_embd] per prompt), each prompt evaluated on a cache of
    its own (nothing of the session's context is read or changed) through the session's batcher: prompts that fit
    in its n_batch tokens together share passes (with each other and the session's other sequences), a longer one is
    evaluated in chunks of n_batch. A cache has the session's n_ctx positions, as llama.cpp's context has (LongRoPE
    picks its factors by it); only the rows written take memory."""
    for tokens in prompts:
        check_tokens(session, tokens)
    step, out, i = max(1, session.n_batch), [], 0
    while i < len(prompts):
        group, total = [prompts[i]], len(prompts[i])  # consecutive prompts within n_batch tokens (one at least)
        while i + len(group) < len(prompts) and total + len(prompts[i + len(group)]) <= step:
            total += len(prompts[i + len(group)])
            group.append(prompts[i + len(group)])
        caches = [session.net.new_cache(session.n_ctx, session.cache_type, session.cache_type_v) for _ in group]
        parts: list[list[np.ndarray]] = [[] for _ in group]
        for start in range(0, max(len(p) for p in group), step):
            live = [j for j, p in enumerate(group) if start < len(p)]
            outs = session.batcher.forward_many([(group[j][start:start + step], caches[j], False, True) for j in live])
            for j, o in zip(live, outs):
                parts[j].append(o)
        for chunks in parts:
            hidden = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
            bad = int(np.count_nonzero(~np.isfinite(hidden)))
            if bad:
                raise DamagedModel(f"{session.model.path.name}: the model computed {bad} NaN or infinite hidden "
                                   f"state value(s) (of {hidden.size}): the model file is damaged")
            out.append(hidden)
        i += len(group)
    return out


def embeddings(session: Session, prompts: list[list[int]], pooling: PoolingType,
               embd_norm: int = -1) -> list[np.ndarray]:
    """Each input's embedding: pooled, then normalized (the pooled vector, or each token's with pooling none)."""
    out = []
    for hidden in hidden_states(session, prompts):
        pooled = pool(hidden, pooling)
        if pooled.ndim == 2:
            out.append(np.stack([normalize(row, embd_norm) for row in pooled]) if embd_norm != -1 else pooled)
        else:
            out.append(normalize(pooled, embd_norm))
    return out
