"""The importance matrix of a model over a text, as llama-imatrix computes it: the text split into chunks as
llama-perplexity splits it (runtime.perplexity), each chunk evaluated, and for every matrix of the blocks the
activations entering its products summed squared (and plain) per input column, per expert for stacked expert
tensors, with the number of rows — the native engine collects them (tk_act_stats) while the perplexity of the text is
computed, which llama-imatrix prints as it goes. The output matrix is left out, as llama-imatrix leaves it out unless
told otherwise."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import native
from runtime import perplexity as P


@dataclass
class Entry:
    """One matrix's statistics: n_expert rows (1 for a dense matrix) of one value per input column."""
    sum2: np.ndarray    # float32 [n_expert, cols]: Σ x²
    sum: np.ndarray     # float32 [n_expert, cols]: Σ x
    counts: np.ndarray  # int64 [n_expert]: activation rows


def collected_tensors(model) -> dict[str, Entry]:
    """Zeroed statistics for the matrices llama-imatrix collects: every matrix of the blocks (blk.*), stacked
    expert tensors per expert."""
    out = {}
    for name, w in model.weights.items():
        if name.startswith("blk.") and len(w.shape) >= 2:
            n_expert = w.shape[0] if len(w.shape) == 3 else 1
            out[name] = Entry(np.zeros((n_expert, w.cols), np.float32), np.zeros((n_expert, w.cols), np.float32),
                              np.zeros(n_expert, np.int64))
    return out


class Collection:
    """The statistics collected while the block is open (on the session's engine: its passes must not run
    concurrently with others)."""

    def __init__(self, session):
        self.session = session
        self.entries = collected_tensors(session.model)
        names = list(session.model.weights)
        self._arrays = [(e.sum2, e.sum, e.counts) if (e := self.entries.get(n)) is not None else None for n in names]
        self._holder = None

    def __enter__(self) -> "Collection":
        self._holder = native.engine_stats(self.session.net.engine, self._arrays)
        return self

    def __exit__(self, *exc) -> None:
        native.engine_stats(self.session.net.engine, None)
        self._holder = None


def compute(session, tokens: list[int], chunks: P.Chunks, on_chunk=None) -> tuple[dict[str, Entry], object]:
    """The statistics over the chunks of `tokens`, and the perplexity figures computed on the way (on_chunk as
    runtime.perplexity.perplexity calls it)."""
    with Collection(session) as c:
        stats = P.perplexity(session, tokens, chunks, None, on_chunk)
    return c.entries, stats
