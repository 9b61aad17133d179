"""Generated tokens to text with stop strings, shared by the Python API and the server: text that could be the
start of a stop string is held back until it cannot match any more; a matched stop string ends the generation and
is not returned. Each token may carry an item (its log-probabilities): an item is released with the text that
contains the token's first character, and dropped when that character lies in the stop string or after it."""
from __future__ import annotations

from runtime.tokenizer import StreamDecoder


class StopScanner:
    def __init__(self, tokenizer, stop: list[str]):
        self.decoder = StreamDecoder(tokenizer, continuation=True)  # generated text follows its prompt
        self.stop = [s for s in stop if s]
        self.pending = ""
        self.items: list[tuple[int, object]] = []   # (the token's first character in `pending`, its item)
        self.word: str | None = None                 # the stop string matched, once one has

    def feed(self, token: int, item=None) -> tuple[str, list]:
        """The text (and items) that can be released after this token; after a match, `word` is set and the text
        before the stop string is the last released."""
        start = len(self.pending)
        self.pending += self.decoder.feed(token)
        if item is not None:
            self.items.append((start, item))
        hits = sorted((i, s) for s in self.stop if (i := self.pending.find(s)) >= 0)
        if hits:
            at, self.word = hits[0]
            return self._release(at, drop_rest=True)
        held = max((k for s in self.stop for k in range(1, len(s)) if self.pending.endswith(s[:k])), default=0)
        return self._release(len(self.pending) - held)

    def flush(self) -> tuple[str, list]:
        """The rest, at the end of the generation (not after a match)."""
        self.pending += self.decoder.flush()
        return self._release(len(self.pending), everything=True)

    def _release(self, upto: int, drop_rest: bool = False, everything: bool = False) -> tuple[str, list]:
        text = self.pending[:upto]
        out = [item for start, item in self.items if everything or start < upto]
        rest = [] if drop_rest else [(start - upto, item) for start, item in self.items
                                     if not (everything or start < upto)]
        self.pending = "" if drop_rest else self.pending[upto:]
        self.items = rest
        return text, out
