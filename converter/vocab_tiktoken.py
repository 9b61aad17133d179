"""A tiktoken vocabulary (Qwen1's `qwen.tiktoken`: base64 token, rank per line) → GGUF byte-level BPE, written as
llama.cpp's converter writes it: model `gpt2`, the ranks as token ids (each byte mapped to GPT-2's printable
characters), the merges rebuilt from the ranks (a token of rank r is the merge of the two parts that BPE over the
ranks below r leaves), the special tokens after the ranks as CONTROL, `[PAD{i}]` up to vocab_size.

The special tokens and the split regex live only in the model's `tokenization_qwen.py`; they are read from its syntax
tree (converter/pyliterals.py), never by running it. The regex must be one llama.cpp implements (it names the
pre-tokenizer); another is an error."""
from __future__ import annotations

import base64
import binascii
from pathlib import Path

from gguf import TokenType

from converter.pyliterals import assigned_values
from common.errors import UserError

# the split regexes llama.cpp implements, as tokenizer code writes them → tokenizer.ggml.pre
KNOWN_PATTERNS = {
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""":
        "qwen2",
}


def _byte_chars() -> list[str]:
    """GPT-2's byte → printable character table: printable Latin-1 bytes stand for themselves, the others for 256+n."""
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1)) | set(range(ord("®"), ord("ÿ") + 1))
    out, n = [], 0
    for b in range(256):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(256 + n))
            n += 1
    return out


BYTE_CHARS = _byte_chars()


def token_text(b: bytes) -> str:
    return "".join(BYTE_CHARS[x] for x in b)


def read_ranks(path: Path) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    try:
        for n, line in enumerate(path.read_bytes().splitlines(), 1):
            if not line.strip():
                continue
            tok, rank = line.split()
            ranks[base64.b64decode(tok, validate=True)] = int(rank)
    except (ValueError, binascii.Error):
        raise UserError(f"{path.name}: line {n} is not 'base64-token rank'") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise UserError(f"{path.name}: the ranks are not 0..{len(ranks) - 1}, each once")
    return ranks


def merge_parts(ranks: dict[bytes, int], token: bytes) -> list[bytes]:
    """BPE of `token` with the merges of rank below the token's own: the two parts it is merged from."""
    limit = ranks[token]
    parts = [bytes([b]) for b in token]
    while len(parts) > 1:
        best, best_rank = -1, limit
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < best_rank:
                best, best_rank = i, r
        if best < 0:
            break
        parts[best:best + 2] = [parts[best] + parts[best + 1]]
    return parts


def _special_tokens(code: Path, first_id: int) -> dict[str, int]:
    """The special tokens of a Qwen-style tokenizer file: `special_tokens`/`SPECIAL_TOKENS` as a tuple of names
    (numbered from the first id after the ranks) or of (id, name) pairs."""
    values = assigned_values(code)
    for name in ("SPECIAL_TOKENS", "special_tokens"):
        for v in values.get(name, []):
            if isinstance(v, tuple) and v and all(isinstance(t, str) for t in v):
                return {t: first_id + i for i, t in enumerate(v)}
            if isinstance(v, tuple) and v and all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], int)
                                                  and isinstance(p[1], str) for p in v):
                return {t: i for i, t in v}
    raise UserError(f"{code.name}: no special-token list found")


def _pattern(code: Path) -> str:
    for v in assigned_values(code).get("PAT_STR", []):
        if isinstance(v, str):
            return v
    raise UserError(f"{code.name}: no split regex (PAT_STR) found")


def tiktoken_vocab(folder: Path, vocab_size: int, bounded: bool):
    """(tokens, token types, merges, pre-tokenizer name, special token ids by text) for the folder's *.tiktoken;
    `bounded`: the padding up to vocab_size is limited (vocab.check_padding)."""
    from converter.vocab import check_padding

    files = sorted(folder.glob("*.tiktoken"))
    code = folder / "tokenization_qwen.py"
    if not code.is_file():
        raise UserError(f"{files[0].name} needs its tokenizer code (tokenization_qwen.py) for the special tokens")
    ranks = read_ranks(files[0])
    pattern = _pattern(code)
    if pattern not in KNOWN_PATTERNS:
        raise UserError(f"{code.name}: split regex {pattern!r} is not one llama.cpp implements")
    specials = _special_tokens(code, len(ranks))
    by_id: dict[int, tuple[str, int]] = {r: (token_text(b), TokenType.NORMAL) for b, r in ranks.items()}
    for text, i in specials.items():
        if i in by_id:
            raise UserError(f"{code.name}: special token {text!r} has id {i}, which a rank already uses")
        by_id[i] = (text, TokenType.CONTROL)
    if max(by_id) >= vocab_size:
        raise UserError(f"the tokenizer has {max(by_id) + 1} tokens but config.json says vocab_size {vocab_size}")
    check_padding(len(by_id), vocab_size, bounded)
    tokens, types = [], []
    for i in range(vocab_size):
        text, kind = by_id.get(i, (f"[PAD{i}]", TokenType.UNUSED))
        tokens.append(text)
        types.append(int(kind))
    merges = []
    for tok in sorted((b for b in ranks if len(b) > 1), key=ranks.__getitem__):
        parts = merge_parts(ranks, tok)
        if len(parts) != 2:
            raise UserError(f"{files[0].name}: token of rank {ranks[tok]} is not the merge of two lower-ranked tokens")
        merges.append(f"{token_text(parts[0])} {token_text(parts[1])}")
    return tokens, types, merges, KNOWN_PATTERNS[pattern], specials
